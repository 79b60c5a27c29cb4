import { BlockError, isBlockError } from '../core/errors.js';
import { Slots } from '../core/mutex.js';
import { settleAll } from '../core/settle.js';
import { blobProperties, displayLocation, pageBlobClient } from '../io/azure-location.js';
import { openLocation } from '../io/hosts.js';
import { AzurePageBlobStore, azureError, MAX_PUT, PAGE, type PageRange } from '../io/azure-page-blob.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import type { Chain } from '../chain/chain.js';
import { fixedFooter, planVhd } from '../formats/vhd/create.js';
import { azureRoundingNote } from './create.js';
import type { StoreOpener } from '../io/store.js';
import { granuleRuns, sameChecker, zeroChecker } from './zero.js';

/**
 * `convert -O vhd -o azure=on SRC URL`: the source chain, flattened, as a
 * fixed VHD in an Azure page blob, written straight from the source (no
 * local copy).
 *
 *   page blob:  [ disk: size bytes, whole MiB ][ footer: 512 ]
 *
 * The blob is created at its final size (its pages read as zeros until
 * written), then only the source's non-zero 512-byte pages go up, as Put
 * Page requests of up to 4 MiB with eight in flight; the footer goes last.
 * A blob without its footer is not a VHD to anyone (check --azure, Azure
 * itself), so an interrupted or failed upload can never pass for a
 * complete one.
 *
 * `resume`: the blob is kept. Its written page ranges are listed once; the
 * pages the source has and the blob lacks are uploaded; where both have
 * data, the blob's bytes are read back and only the pages that differ are
 * uploaded again; where the blob has data and the source has zeros, the
 * pages are cleared. A footer already there is cleared first, so the blob
 * is not a VHD again until its data is complete.
 */

/** Extents asked of the source at once (bounded memory on huge sparse disks). */
const WINDOW = 1 << 30;
/** Pieces (each ≤ 4 MiB, one buffer) uploading at once: eight Put Page requests in flight. */
const LANES = 8;
const READS_AT_ONCE = 4;

/** What an upload reads of a ConvertRequest (ops/convert.ts hands its request over). */
export interface UploadRequest {
  source: string;
  sourceOptions?: ChainOpenOptions;
  /** The page blob's location (io/azure-location.ts). */
  target: string;
  targetFormat: string;
  options?: Record<string, string>;
  backing?: unknown;
  existing?: boolean;
  /** Replace a blob that exists. */
  overwrite?: boolean;
  /** Continue an interrupted upload into the existing blob. */
  resume?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  openStore?: StoreOpener;
}

export interface UploadResult {
  size: number;
  written: number;
  targetSize?: number;
  note?: string;
}

function isOn(v: string | undefined): boolean {
  return v !== undefined && ['on', 'true', 'yes'].includes(v);
}

export async function uploadToPageBlob(req: UploadRequest): Promise<UploadResult> {
  const path = displayLocation(req.target);
  const options = req.options ?? {};
  if (!['vhd', 'vpc'].includes(req.targetFormat) || !isOn(options.azure)) {
    throw new BlockError('invalid-argument', 'an Azure page blob is written as -O vhd -o azure=on (a fixed VHD Azure takes)', { path });
  }
  if (req.backing || req.existing) throw new BlockError('invalid-argument', 'an upload to a page blob takes no -B and no -n', { path });
  if (req.resume && req.overwrite) throw new BlockError('invalid-argument', '--resume continues an upload; --overwrite replaces the blob (choose one)', { path });
  req.signal?.throwIfAborted();
  const src = await openChain(req.source, { ...req.sourceOptions, readOnly: true, openStore: req.openStore ?? req.sourceOptions?.openStore ?? openLocation });
  try {
    const requested = Math.ceil(src.size / PAGE) * PAGE;
    let size: number;
    try {
      size = planVhd(requested, options).size;
    } catch (e) {
      throw isBlockError(e) ? e.withContext({ path: req.source }) : e;
    }
    const blobSize = size + PAGE;
    const client = await pageBlobClient(req.target);
    const props = await blobProperties(client, path);
    let have: PageRange[] = [];
    const store = new AzurePageBlobStore(client, path, false, blobSize);
    if (props && !req.overwrite) {
      if (!req.resume) {
        const other = props.length !== blobSize ? `, ${props.length} bytes where this disk needs ${blobSize}` : '';
        throw new BlockError('invalid-argument', `a blob exists here${other}: --resume continues an upload into it, --overwrite replaces it`, { path });
      }
      if (!props.pageBlob) throw new BlockError('invalid-argument', 'the blob here is not a page blob: --overwrite replaces it', { path });
      if (props.length !== blobSize) {
        try {
          await client.resize(blobSize);
        } catch (e) {
          throw azureError(e, path, 'resize the page blob');
        }
      }
      have = await store.pageRanges();
      // No footer until the data is complete (it goes back last).
      if (covers(have, size, PAGE)) await store.clear(size, PAGE);
      have = clip(have, 0, size);
    } else {
      try {
        await client.create(blobSize);
      } catch (e) {
        throw azureError(e, path, 'create the page blob');
      }
    }
    let written: number;
    try {
      written = await uploadData(src, store, have, req.signal, req.onProgress);
      req.signal?.throwIfAborted();
      await store.write(size, fixedFooter(size));
      written += PAGE;
    } catch (e) {
      if (req.signal?.aborted || !isBlockError(e)) throw e;
      throw new BlockError(e.kind, `${e.message}; the blob has no footer yet: the same command with --resume finishes the upload`, e.context, { cause: e });
    }
    const note = azureRoundingNote(options, requested, size);
    return { size: src.size, written, ...(size !== src.size ? { targetSize: size } : {}), ...(note ? { note } : {}) };
  } finally {
    await src.close();
  }
}

/** Upload what the blob lacks of the source's data; returns the bytes sent. */
async function uploadData(src: Chain, store: AzurePageBlobStore, have: PageRange[], signal?: AbortSignal, onProgress?: (done: number, total: number) => void): Promise<number> {
  const total = src.size;
  const lanes = Array.from({ length: LANES }, () => ({ data: new Uint8Array(MAX_PUT), theirs: have.length ? new Uint8Array(MAX_PUT) : undefined }));
  const reads = new Slots(READS_AT_ONCE);
  const running = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  let written = 0;
  let done = 0;
  const progress = (n: number) => {
    done += n;
    onProgress?.(done, total);
  };

  const piece = async (offset: number, length: number, lane: (typeof lanes)[number]): Promise<void> => {
    const data = lane.data.subarray(0, length);
    await reads.run(() => src.read(offset, data));
    // A disk of an odd size ends inside its last page: the page goes up whole, zero-padded.
    const padded = Math.ceil(length / PAGE) * PAGE;
    const buf = padded === length ? data : lane.data.subarray(0, padded).fill(0, length);
    const mine = clip(have, offset, padded);
    const writes: Promise<void>[] = [];
    const put = (from: number, to: number) => {
      writes.push(store.write(offset + from, buf.subarray(from, to)));
      written += to - from;
    };
    const nonZero: PageRange[] = [];
    for (const run of granuleRuns(buf, offset, PAGE, zeroChecker(buf))) if (!run.same) nonZero.push({ offset: offset + run.from, length: run.to - run.from });
    for (const r of subtract(nonZero, mine)) put(r.offset - offset, r.offset - offset + r.length);
    // Where the blob has data too: read it back and send only the pages that differ.
    const both = intersect(nonZero, mine);
    if (both.length) {
      const theirs = lane.theirs!;
      await Promise.all(both.map((r) => store.readPages(r.offset, theirs.subarray(r.offset - offset, r.offset - offset + r.length))));
      const same = sameChecker(buf, theirs);
      for (const r of both) {
        const a = r.offset - offset;
        for (const run of granuleRuns(buf.subarray(a, a + r.length), r.offset, PAGE, (x, y) => same(a + x, a + y))) if (!run.same) put(a + run.from, a + run.to);
      }
    }
    // Where the blob has data and the source zeros: cleared.
    for (const r of subtract(mine, nonZero)) writes.push(store.clear(r.offset, r.length));
    await settleAll(writes);
  };

  const drain = async () => {
    while (running.size) await Promise.race(running);
  };
  const start = (run: () => Promise<void>, length: number) => {
    const task: Promise<void> = run().then(
      () => progress(length),
      (e: unknown) => {
        failure ??= { error: e };
      },
    );
    const tracked = task.finally(() => running.delete(tracked));
    running.add(tracked);
  };

  for (let wOff = 0; wOff < total && !failure; wOff += WINDOW) {
    for (const e of await src.blockStatus(wOff, Math.min(WINDOW, total - wOff), { findZeroes: true })) {
      if (e.kind === 'zero') {
        // Nothing to send; on resume, pages the blob has here are cleared.
        const stale = clip(have, e.offset, e.length);
        if (stale.length) start(() => settleAll(stale.map((r) => store.clear(r.offset, r.length))), e.length);
        else progress(e.length);
        continue;
      }
      for (let o = 0; o < e.length; o += MAX_PUT) {
        while (running.size >= LANES) await Promise.race(running);
        if (signal?.aborted) failure ??= { error: signal.reason };
        if (failure) break;
        const length = Math.min(MAX_PUT, e.length - o);
        const lane = lanes.pop()!;
        start(() => piece(e.offset + o, length, lane).finally(() => lanes.push(lane)), length);
      }
      if (failure) break;
    }
  }
  await drain();
  if (failure) throw failure.error;
  return written;
}

/** Whether the ranges cover [offset, offset+length) entirely. */
function covers(ranges: PageRange[], offset: number, length: number): boolean {
  return ranges.some((r) => r.offset <= offset && r.offset + r.length >= offset + length);
}

/** The parts of sorted, disjoint `ranges` inside [offset, offset+length). */
function clip(ranges: PageRange[], offset: number, length: number): PageRange[] {
  const out: PageRange[] = [];
  for (const r of ranges) {
    const a = Math.max(offset, r.offset);
    const z = Math.min(offset + length, r.offset + r.length);
    if (z > a) out.push({ offset: a, length: z - a });
  }
  return out;
}

function intersect(a: PageRange[], b: PageRange[]): PageRange[] {
  const out: PageRange[] = [];
  for (const r of a) out.push(...clip(b, r.offset, r.length));
  return out;
}

/** The parts of `a` outside every range of `b` (both sorted, disjoint). */
function subtract(a: PageRange[], b: PageRange[]): PageRange[] {
  const out: PageRange[] = [];
  for (const r of a) {
    let at = r.offset;
    const end = r.offset + r.length;
    for (const x of b) {
      if (x.offset + x.length <= at || x.offset >= end) continue;
      if (x.offset > at) out.push({ offset: at, length: x.offset - at });
      at = Math.max(at, x.offset + x.length);
    }
    if (at < end) out.push({ offset: at, length: end - at });
  }
  return out;
}
