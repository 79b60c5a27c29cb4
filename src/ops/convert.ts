import { unlink } from 'node:fs/promises';
import { BlockError } from '../core/errors.js';
import { openFileStore } from '../io/file-store.js';
import type { StoreOpener } from '../io/store.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import type { Chain } from '../chain/chain.js';
import { createImage } from './create.js';
import { granuleRuns, isZero, sameChecker, zeroChecker } from './zero.js';

export interface ConvertRequest {
  source: string;
  /** Options for opening the source chain (format, ignoreChecksums, layerOnly...). */
  sourceOptions?: ChainOpenOptions;
  target: string;
  targetFormat: string;
  /** `-o` creation options for the target. */
  options?: Record<string, string>;
  /** `-B`: the target is created as a child of this backing and receives only what differs from it. */
  backing?: { path: string; format?: string };
  /** `-S`: zero runs of at least this many bytes (aligned) are skipped; 0 writes everything. Default 4096. */
  sparseSize?: number;
  /** `-n`: write into an existing target instead of creating one. */
  existing?: boolean;
  onProgress?: (done: number, total: number) => void;
  openStore?: StoreOpener;
  /**
   * Target cache mode, as qemu-img's `-t`: 'unsafe' (default, as qemu-img
   * convert) never syncs the new target — a fresh copy can always be made
   * again from its source; 'writeback' syncs wherever the format orders its
   * writes and once at the end.
   */
  cache?: 'unsafe' | 'writeback';
  /** Copy buffer size (default 4 MiB). */
  bufferSize?: number;
}

export interface ConvertResult {
  size: number;
  /** Bytes of data written to the target (zero runs skipped are not counted). */
  written: number;
}

/** Extents asked of the source at once; bounded so huge sparse disks use bounded memory. */
const WINDOW = 1 << 30;
/** Data pieces read ahead of the one being written. */
const READ_AHEAD = 4;

/**
 * Copy a disk (flattening its chain) into a new or existing image. Zero
 * extents reported by the source are skipped without reading; data extents
 * are read in big buffers (the next read overlaps the current write) and
 * their zero granules skipped too, so the target stays sparse.
 */
export async function convert(req: ConvertRequest): Promise<ConvertResult> {
  const openStore = req.openStore ?? openFileStore;
  const cache = req.cache ?? 'unsafe';
  if (cache !== 'unsafe' && cache !== 'writeback') throw new BlockError('invalid-argument', `unknown cache mode '${cache}' (unsafe or writeback)`);
  // Only the target's own files go without syncs; its backing (-B) is only read.
  const targetStore: StoreOpener = cache === 'unsafe' ? (p, o) => openStore(p, o.readOnly ? o : { ...o, noSync: true }) : openStore;
  const sparse = req.sparseSize ?? 4096;
  if (!Number.isSafeInteger(sparse) || sparse < 0 || (sparse > 0 && sparse % 512 !== 0)) {
    throw new BlockError('invalid-argument', `sparse size must be 0 or a multiple of 512 (got ${sparse})`);
  }
  const bufferSize = req.bufferSize ?? 4 << 20;
  const src = await openChain(req.source, { ...req.sourceOptions, readOnly: true, openStore });
  let dst: Chain | undefined;
  let created = false;
  try {
    if (!req.existing) {
      const r = await createImage({
        path: req.target,
        format: req.targetFormat,
        size: src.size,
        options: req.options,
        backing: req.backing,
        openStore: targetStore,
      });
      created = true;
      if (r.size < src.size) {
        throw new BlockError('out-of-range', `the ${req.targetFormat} target can hold only ${r.size} of the source's ${src.size} bytes`, {
          path: req.target,
        });
      }
    } else if (req.backing) {
      throw new BlockError('invalid-argument', '-B and -n cannot be combined (an existing target keeps its own backing)');
    }
    dst = await openChain(req.target, { format: req.targetFormat, openStore: targetStore });
    if (dst.size < src.size) {
      throw new BlockError('out-of-range', `target is ${dst.size} bytes, smaller than the source (${src.size})`, { path: req.target });
    }
    // A fresh target without backing already reads as zeros: nothing to write there.
    const mode: Mode = req.existing ? 'overwrite' : req.backing ? 'diff' : 'fresh';
    const written = await copy(src, dst, mode, sparse, bufferSize, req.onProgress);
    await dst.flush();
    return { size: src.size, written };
  } catch (e) {
    if (created) {
      await dst?.close().catch(() => {});
      dst = undefined;
      await unlink(req.target).catch(() => {});
    }
    throw e;
  } finally {
    await dst?.close();
    await src.close();
  }
}

type Mode = 'fresh' | 'diff' | 'overwrite';

async function copy(
  src: Chain,
  dst: Chain,
  mode: Mode,
  sparse: number,
  bufferSize: number,
  onProgress?: (done: number, total: number) => void,
): Promise<number> {
  const total = src.size;
  let written = 0;
  let done = 0;
  const granule = sparse || bufferSize;
  // Reads run up to READ_AHEAD data pieces ahead of the write in progress, so
  // the source and the target are busy at the same time. READ_AHEAD+1 buffers
  // serve them round-robin: the pieces in flight are always the most recent
  // ones handed out, so the next buffer is never one still in use.
  const pool = Array.from({ length: READ_AHEAD + 1 }, () => new Uint8Array(bufferSize));
  let slot = 0;
  const theirs = mode === 'diff' ? new Uint8Array(bufferSize) : undefined;
  // What the target shows where the source is zero (-B, -n), read to find what needs zeroing.
  const scratch = mode === 'fresh' ? undefined : new Uint8Array(bufferSize);
  const zeroGranule = sparse || 4096;
  let zeroBuf: Uint8Array | undefined;

  for (let wOff = 0; wOff < total; wOff += WINDOW) {
    const extents = await src.blockStatus(wOff, Math.min(WINDOW, total - wOff));
    // Split data extents into buffer-sized pieces; zero extents stay whole.
    const pieces: { offset: number; length: number; zero: boolean }[] = [];
    for (const e of extents) {
      if (e.kind === 'zero') pieces.push({ offset: e.offset, length: e.length, zero: true });
      else for (let o = 0; o < e.length; o += bufferSize) pieces.push({ offset: e.offset + o, length: Math.min(bufferSize, e.length - o), zero: false });
    }
    const inflight = new Map<number, Promise<Uint8Array>>();
    let issued = 0;
    for (let i = 0; i < pieces.length; i++) {
      while (issued < pieces.length && inflight.size < READ_AHEAD) {
        const p = pieces[issued];
        if (!p.zero) {
          const buf = pool[slot++ % pool.length].subarray(0, p.length);
          const pending = src.read(p.offset, buf).then(() => buf);
          pending.catch(() => {}); // awaited below; never an unhandled rejection
          inflight.set(issued, pending);
        }
        issued++;
      }
      const p = pieces[i];
      if (p.zero) {
        if (sparse === 0) written += await writeZeroData(dst, p.offset, p.length, (zeroBuf ??= new Uint8Array(bufferSize)));
        else if (mode !== 'fresh') await zeroWhereNeeded(dst, p.offset, p.length, scratch!, zeroGranule);
      } else {
        const data = await inflight.get(i)!;
        written += await writeData(dst, p.offset, data, mode, sparse, granule, theirs, scratch);
        inflight.delete(i);
      }
      done += p.length;
      onProgress?.(done, total);
    }
  }
  return written;
}

/** `-S 0`: fully allocate, writing real zero bytes (a zero buffer, one write per buffer). */
async function writeZeroData(dst: Chain, offset: number, length: number, zeros: Uint8Array): Promise<number> {
  const scratch = zeros;
  for (let o = 0; o < length; o += scratch.length) await dst.write(offset + o, scratch.subarray(0, Math.min(scratch.length, length - o)));
  return length;
}

/**
 * Make [offset, offset+length) of the target read as zero, touching only
 * ranges that do not already: data extents are read and only their non-zero
 * granules zeroed, so -B leaves out ranges where the backing holds zeros.
 */
async function zeroWhereNeeded(dst: Chain, offset: number, length: number, scratch: Uint8Array, granule: number): Promise<void> {
  for (const e of await dst.blockStatus(offset, length)) {
    if (e.kind !== 'data') continue;
    for (let o = 0; o < e.length; o += scratch.length) {
      const at = e.offset + o;
      const part = scratch.subarray(0, Math.min(scratch.length, e.length - o));
      await dst.read(at, part);
      for (const run of granuleRuns(part, at, granule, zeroChecker(part))) {
        if (!run.same) await dst.writeZeroes(at + run.from, run.to - run.from);
      }
    }
  }
}

async function writeData(
  dst: Chain,
  offset: number,
  data: Uint8Array,
  mode: Mode,
  sparse: number,
  granule: number,
  theirs: Uint8Array | undefined,
  scratch: Uint8Array | undefined,
): Promise<number> {
  let written = 0;
  if (mode === 'diff') {
    // -B: only what differs from what the target already shows (its backing).
    const old = theirs!.subarray(0, data.length);
    await dst.read(offset, old);
    for (const run of granuleRuns(data, offset, granule, sameChecker(data, old))) {
      if (run.same) continue;
      await dst.write(offset + run.from, data.subarray(run.from, run.to));
      written += run.to - run.from;
    }
    return written;
  }
  if (sparse === 0) {
    await dst.write(offset, data);
    return data.length;
  }
  if (isZero(data)) {
    if (mode === 'overwrite') await zeroWhereNeeded(dst, offset, data.length, scratch!, granule);
    return 0;
  }
  for (const run of granuleRuns(data, offset, granule, zeroChecker(data))) {
    if (run.same) {
      if (mode === 'overwrite') await dst.writeZeroes(offset + run.from, run.to - run.from);
      continue;
    }
    await dst.write(offset + run.from, data.subarray(run.from, run.to));
    written += run.to - run.from;
  }
  return written;
}
