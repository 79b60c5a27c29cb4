import { BlockError } from '../core/errors.js';
import { openFileStore } from '../io/file-store.js';
import type { ByteSink } from '../io/sink.js';
import { SkeletonStore } from '../io/skeleton-store.js';
import type { StoreOpener } from '../io/store.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import type { Chain } from '../chain/chain.js';
import { findFormat } from '../formats/registry.js';
import type { BlockMap, SequentialLayout, SequentialOutput } from '../formats/types.js';
import { backingAbsolute, createWith } from './create.js';
import { granuleRuns, isZero, sameChecker, zeroChecker } from './zero.js';

/**
 * Sequential writers (issue 18): an image written as one strictly ordered
 * byte stream — to stdout, a pipe, an upload — whose length is known before
 * its first byte. The target is created as usual, but into a store that
 * keeps only metadata (io/skeleton-store.ts); the format's `sequential`
 * (formats/<fmt>/sequential.ts) turns that metadata and a map of the blocks
 * to allocate into the stream's layout. This module decides the map and
 * feeds the layout the disk's bytes.
 *
 * The map comes from a first pass over the source: a block is allocated
 * when it holds a non-zero byte (or, with -B, a byte that differs from the
 * backing), so a block of zeros costs nothing in the stream, as it costs
 * nothing in a seekable convert. Data is therefore read twice (once to
 * decide, once to send); zero extents the source reports are not read at
 * all. The source must not change between the passes (a source opened
 * read-only by vdisk does not).
 */

export interface SequentialConvertRequest {
  source: string;
  sourceOptions?: ChainOpenOptions;
  targetFormat: string;
  /** `-o` creation options of the target. */
  options?: Record<string, string>;
  /** `-B`: the stream is a child of this image holding only what differs from it. */
  backing?: { path: string; format?: string };
  /**
   * The name the stream will be stored under, for what the image records
   * relative to itself (a child's parent locators). Default `-`: a name in
   * the current folder.
   */
  target?: string;
  openStore?: StoreOpener;
}

export interface SequentialPlan {
  /** Exact number of bytes write() sends (an uploader's Content-Length). */
  readonly length: number;
  /** Virtual size of the image streamed (a format may round the source's up: VHD CHS, `-o azure=on`). */
  readonly size: number;
  /** Virtual size of the source. */
  readonly sourceSize: number;
  /** Said when `-o azure=on` rounded the size up, as a seekable convert says it (CreateResult.note). */
  readonly note: string | undefined;
  /** Blocks the image allocates (undefined for raw and fixed VHD: every byte is sent). */
  readonly blocks: number | undefined;
  /**
   * Send the image to `sink`, then finish() it; on any error or abort the
   * sink is aborted and the error rethrown. Once only. Resolves to the bytes
   * of data written, counted as a seekable convert counts them
   * (ConvertResult.written): the non-zero 4 KiB granules of the disk data
   * the stream carries — not its metadata, nor the zeros inside allocated
   * blocks or a raw image (they are sent, but hold nothing).
   */
  write(sink: ByteSink, options?: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void }): Promise<number>;
  /** Close the source (and backing). Safe after write() and more than once. */
  close(): Promise<void>;
}

/** Source ranges asked for at once (bounded memory on huge sparse disks). */
const WINDOW = 1 << 30;
/** Read and write unit. */
const PIECE = 2 << 20;
const ZEROS = new Uint8Array(1 << 20);
/** The zero granule of `written`: a seekable convert's default (-S 4k) skips zero runs of it. */
const GRANULE = 4096;

/** One bit per block. */
class Bits implements BlockMap {
  private readonly bits: Uint8Array;
  count = 0;
  constructor(readonly blocks: number) {
    this.bits = new Uint8Array(Math.ceil(blocks / 8));
  }
  has(b: number): boolean {
    return (this.bits[b >>> 3] & (1 << (b & 7))) !== 0;
  }
  set(b: number): void {
    if (this.has(b)) return;
    this.bits[b >>> 3] |= 1 << (b & 7);
    this.count++;
  }
  next(from: number): number {
    for (let b = from; b < this.blocks; ) {
      if ((b & 7) === 0 && this.bits[b >>> 3] === 0) {
        b += 8;
        continue;
      }
      if (this.has(b)) return b;
      b++;
    }
    return -1;
  }
}

/**
 * Plan a sequential convert: open the source (and -B backing), make the
 * target's metadata, decide which blocks it allocates. Nothing is written
 * yet; `length` is exact.
 */
export async function planSequentialConvert(req: SequentialConvertRequest): Promise<SequentialPlan> {
  const format = findFormat(req.targetFormat);
  if (!format.sequential) {
    throw new BlockError('unsupported', `format ${format.name} cannot be written as a stream (raw, vhd and vhdx can)`);
  }
  const openStore = req.openStore ?? openFileStore;
  const name = req.target ?? '-';
  const src = await openChain(req.source, { ...req.sourceOptions, readOnly: true, openStore });
  let backing: Chain | undefined;
  try {
    const skeleton = new SkeletonStore(name);
    const opener: StoreOpener = async (p, o) => (p === name ? (o.create ? skeleton : skeleton.readOnlyView()) : openStore(p, o));
    const created = await createWith(
      { path: name, format: format.name, size: Math.ceil(src.size / 512) * 512, options: req.options, backing: req.backing },
      opener,
    );
    if (created.size < src.size) {
      throw new BlockError('out-of-range', `the ${format.name} target can hold only ${created.size} of the source's ${src.size} bytes`, { path: name });
    }
    if (req.backing) backing = await openChain(backingAbsolute(name, req.backing.path), { format: req.backing.format, readOnly: true, openStore });
    const layout = await format.sequential({ skeleton: skeleton.readOnlyView(), size: created.size, differencing: backing !== undefined });
    const data = new DiskData(src, backing, created.size, layout.sectorSize);
    const map = layout.blockSize === undefined ? undefined : await data.scan(layout.blockSize);
    const length = layout.length(map);
    return new Plan(layout, map, data, length, created.size, src.size, created.note, async () => {
      await backing?.close();
      await src.close();
    });
  } catch (e) {
    await backing?.close();
    await src.close();
    throw e;
  }
}

/** Plan, stream into `sink`, close: the whole sequential convert. */
export async function convertToSink(
  req: SequentialConvertRequest & { sink: ByteSink; signal?: AbortSignal; onProgress?: (done: number, total: number) => void },
): Promise<{ size: number; length: number; written: number; note?: string }> {
  let plan: SequentialPlan;
  try {
    plan = await planSequentialConvert(req);
  } catch (e) {
    await req.sink.abort(e);
    throw e;
  }
  try {
    const written = await plan.write(req.sink, { signal: req.signal, onProgress: req.onProgress });
    return { size: plan.size, length: plan.length, written, ...(plan.note ? { note: plan.note } : {}) };
  } finally {
    await plan.close();
  }
}

class Plan implements SequentialPlan {
  private used = false;
  private closed = false;
  readonly blocks: number | undefined;
  constructor(
    private readonly layout: SequentialLayout,
    private readonly map: BlockMap | undefined,
    private readonly data: DiskData,
    readonly length: number,
    readonly size: number,
    readonly sourceSize: number,
    readonly note: string | undefined,
    private readonly closer: () => Promise<void>,
  ) {
    this.blocks = map?.count;
  }

  async write(sink: ByteSink, options: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {}): Promise<number> {
    if (this.used) throw new BlockError('invalid-argument', 'a sequential plan is written once');
    this.used = true;
    const { signal, onProgress } = options;
    let sent = 0;
    const send = async (bytes: Uint8Array) => {
      signal?.throwIfAborted();
      if (sent + bytes.length > this.length) throw new BlockError('corrupt', `the ${sink.location} stream would run past its planned ${this.length} bytes`, { path: sink.location });
      await sink.write(bytes);
      sent += bytes.length;
      onProgress?.(sent, this.length);
    };
    const out: SequentialOutput = {
      bytes: send,
      zeros: async (n) => {
        for (let o = 0; o < n; o += ZEROS.length) await send(ZEROS.subarray(0, Math.min(ZEROS.length, n - o)));
      },
      disk: (offset, length) => this.data.send(offset, length, send),
      present: (offset, length) => this.data.present(offset, length),
    };
    try {
      await this.layout.write(this.map, out);
      if (sent !== this.length) {
        throw new BlockError('corrupt', `the ${sink.location} stream came to ${sent} bytes, not the ${this.length} planned`, { path: sink.location });
      }
      await sink.finish();
      return this.data.written;
    } catch (e) {
      await sink.abort(e).catch(() => {});
      throw e;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.closer();
  }
}

/** The disk as the stream shows it: the source, zeros past its end; with a backing, what differs from it. */
class DiskData {
  private readonly a = new Uint8Array(PIECE);
  private readonly b = new Uint8Array(PIECE);
  private readonly pieces = [new Uint8Array(PIECE), new Uint8Array(PIECE)];
  /** Non-zero bytes sent, by granules of GRANULE (ops/convert.ts's default -S 4k). */
  written = 0;

  constructor(
    private readonly src: Chain,
    private readonly backing: Chain | undefined,
    /** The target's size (a format may round the source's up). */
    private readonly size: number,
    private readonly sector: number,
  ) {}

  /** Read the disk's [offset, offset+into.length): the source, zeros past its end. */
  private async read(offset: number, into: Uint8Array): Promise<void> {
    const inside = Math.max(0, Math.min(into.length, this.src.size - offset));
    if (inside > 0) await this.src.read(offset, into.subarray(0, inside));
    into.fill(0, inside);
  }

  /** Send [offset, offset+length) through `send`, the next piece read while the last one is written. */
  async send(offset: number, length: number, send: (b: Uint8Array) => Promise<void>): Promise<void> {
    // The same two buffers for every call (one per block of a VHD/VHDX): new
    // ones per block cost a memset each and most of the garbage collection of
    // an upload (node --cpu-prof, 1 GiB raw → VHD object: 1.5 s of 3 s).
    const bufs = this.pieces;
    let pending: Promise<void> = Promise.resolve();
    try {
      for (let o = 0, i = 0; o < length; o += PIECE, i ^= 1) {
        const piece = bufs[i].subarray(0, Math.min(PIECE, length - o));
        await this.read(offset + o, piece);
        for (const r of granuleRuns(piece, offset + o, GRANULE, zeroChecker(piece))) if (!r.same) this.written += r.to - r.from;
        await pending;
        pending = send(piece);
        // Observed at once: it may fail while the next piece is being read (seen again by the await above).
        pending.catch(() => {});
      }
    } finally {
      // A read failure must not leave a write running unobserved.
      await pending.catch(() => {});
    }
    await pending;
  }

  /** Runs of [offset, offset+length) (relative) the new layer holds: see SequentialOutput.present. */
  async present(offset: number, length: number): Promise<Array<[number, number]>> {
    if (!this.backing) {
      const inside = Math.max(0, Math.min(length, this.size - offset));
      return inside > 0 ? [[0, inside]] : [];
    }
    // Past the source's end the target shows its backing, as a seekable convert leaves it.
    const end = Math.min(length, this.src.size - offset, this.backing.size - offset);
    const runs: Array<[number, number]> = [];
    for (let o = 0; o < end; o += PIECE) {
      const n = Math.min(PIECE, end - o);
      const mine = this.a.subarray(0, n);
      const theirs = this.b.subarray(0, n);
      await this.src.read(offset + o, mine);
      await this.backing.read(offset + o, theirs);
      for (const r of granuleRuns(mine, offset + o, this.sector, sameChecker(mine, theirs))) {
        if (r.same) continue;
        const from = o + r.from;
        // A partial sector at the source's odd end counts whole (the bitmap has bits for whole sectors).
        const to = Math.min(length, Math.ceil((o + r.to) / this.sector) * this.sector);
        const last = runs[runs.length - 1];
        if (last && last[1] === from) last[1] = to;
        else runs.push([from, to]);
      }
    }
    return runs;
  }

  /** Which blocks of `blockSize` the stream must allocate (the first pass). */
  async scan(blockSize: number): Promise<BlockMap> {
    const map = new Bits(Math.ceil(this.size / blockSize));
    const candidates = this.backing ? new Bits(map.blocks) : undefined;
    const limit = this.backing ? Math.min(this.src.size, this.backing.size) : this.src.size;
    for (let w = 0; w < limit; w += WINDOW) {
      const len = Math.min(WINDOW, limit - w);
      const layers = this.backing ? [this.src, this.backing] : [this.src];
      for (const chain of layers) {
        for (const e of await chain.blockStatus(w, len, { findZeroes: true })) {
          if (e.kind !== 'data') continue;
          for (let blk = Math.floor(e.offset / blockSize); blk * blockSize < e.offset + e.length; blk++) {
            if (candidates) candidates.set(blk);
            else if (!map.has(blk) && (await this.nonZero(Math.max(e.offset, blk * blockSize), Math.min(e.offset + e.length, (blk + 1) * blockSize)))) map.set(blk);
          }
        }
      }
    }
    if (candidates) {
      // With a backing, a block is the child's when any of it differs (zeros over the backing's data too).
      for (let blk = candidates.next(0); blk >= 0; blk = candidates.next(blk + 1)) {
        if ((await this.present(blk * blockSize, blockSize)).length) map.set(blk);
      }
    }
    return map;
  }

  /**
   * Whether [from, to) holds a non-zero byte. Reads grow from 4 KiB to a
   * PIECE: a block of data nearly always shows a non-zero byte in its first
   * KiBs, so the first pass reads a few KiB of each block instead of all of
   * it, and the upload (which waits for the map: the BAT goes first) starts
   * that much sooner. Measured on a 1 GiB half-full raw source with 2 MiB
   * blocks: the pass read 512 MiB before, 1 MiB now.
   */
  private async nonZero(from: number, to: number): Promise<boolean> {
    for (let o = from, n = 4096; o < to; o += n, n = Math.min(PIECE, n * 16)) {
      const piece = this.a.subarray(0, Math.min(n, to - o));
      await this.src.read(o, piece);
      if (!isZero(piece)) return true;
    }
    return false;
  }
}
