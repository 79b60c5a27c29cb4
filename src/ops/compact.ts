import { BlockError, fromSystemError } from '../core/errors.js';
import { openFileStore } from '../io/file-store.js';
import { nativeStore, type StoreOpener } from '../io/store.js';
import { NATIVE_MAX_RANGE, copyWorkers, nativeAddon } from '../io/native.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import type { Chain } from '../chain/chain.js';
import type { Image } from '../formats/types.js';
import { findFreeSpace } from '../guestfs/index.js';
import { compactByPunching, isPunchable } from './compact-holes.js';
import { granuleRuns, isZero, zeroChecker } from './zero.js';

/**
 * vdisk compact: give back the file space of blocks a dynamic or
 * differencing VHD or VHDX no longer needs (and, through holes punched in
 * its image file, add-cow's: compact-holes.ts), in place (Hyper-V's
 * Optimize-VHD, on any OS). Modes, named after Optimize-VHD's:
 *
 *   trim  blocks whose metadata already says they hold nothing (VHD
 *         differencing blocks with no sector bit set; VHDX PARTIALLY_PRESENT
 *         blocks with none, and UNMAPPED/ZERO entries still naming space);
 *   zero  blocks whose data is all zeros — in a differencing layer, sector
 *         runs of zeros where the parent reads zeros too (their bits are
 *         cleared; a block with nothing else goes whole), so the disk reads
 *         the same once they read from the parent again;
 *   fs    blocks lying wholly in space the guest's file systems (ext2/3/4,
 *         NTFS, found through MBR/GPT partitions: src/guestfs/) do not use.
 *         Every sector a clean file system uses keeps its content; free
 *         space may afterwards read as zeros (or, in a differencing layer,
 *         as the parent's bytes). A file system that is not clean stops the
 *         compaction before anything is written.
 *
 * This module decides which blocks go (it reads the disk); the layer
 * releases them, moves the blocks at the end of its file into the holes and
 * cuts the file (Compactable in formats/types.ts; the crash-safe order is
 * the format's, in its compact.ts). The backing chain is opened read-only:
 * compacting a layer never writes its parents.
 */

export type CompactMode = 'zero' | 'trim' | 'fs';
const COMPACT_MODES: readonly CompactMode[] = ['zero', 'trim', 'fs'];
const DEFAULT_MODES: readonly CompactMode[] = ['zero', 'trim'];

export interface CompactRequest {
  path: string;
  /** Default: zero and trim. */
  modes?: readonly CompactMode[];
  /** Report what would be released and the size the file would reach; write nothing. */
  dryRun?: boolean;
  openOptions?: ChainOpenOptions;
  openStore?: StoreOpener;
  /** Progress over the disk's blocks, then over the blocks moved. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Cache mode, as commit's and qemu-img's `-t`: 'writeback' (default)
   * flushes wherever the crash-safe order needs it (formats/vhd/compact.ts,
   * formats/vhdx/compact.ts), so a power loss at any moment leaves the old
   * or the new disk; 'unsafe' never flushes: the writes go in the same
   * order, so a killed process still leaves a disk that opens and reads
   * the same (the kernel holds every write it took), but a power loss or
   * kernel crash before the kernel has written the file back may not. For
   * an image that can be made again, or when the caller syncs the file.
   */
  cache?: 'unsafe' | 'writeback';
}

export interface CompactResult {
  path: string;
  format: string;
  modes: CompactMode[];
  dryRun: boolean;
  /** Blocks released, per mode (a block counts once, under the first mode that released it, in trim, fs, zero order). */
  released: Record<CompactMode, number>;
  blockSize: number;
  /** Blocks moved towards the start of the file. */
  moved: number;
  /**
   * zero mode in a differencing layer: bytes of sector runs, in blocks that
   * stay, whose bits were cleared (zeros over zeros in the parent: they read
   * from the parent again). No file space by themselves.
   */
  zeroRunBytes: number;
  bytesBefore: number;
  bytesAfter: number;
  seconds: number;
  /** Set when the image has nothing compact can give back (fixed, raw), with why. */
  nothingToCompact?: string;
  notes: string[];
}

/** `--mode` values: repeatable, each a comma list; unknown names are a clear error. */
export function parseModes(values: readonly string[] | undefined): CompactMode[] {
  if (!values || values.length === 0) return [...DEFAULT_MODES];
  const out: CompactMode[] = [];
  for (const v of values.flatMap((x) => x.split(','))) {
    const m = v.trim();
    if (!(COMPACT_MODES as readonly string[]).includes(m)) {
      throw new BlockError('invalid-argument', `unknown compact mode '${m}' (modes: ${COMPACT_MODES.join(', ')})`);
    }
    if (!out.includes(m as CompactMode)) out.push(m as CompactMode);
  }
  return out;
}

const CHUNK = 4 << 20;
/** Blocks judged at once (each with its own CHUNK buffer, or two in a differencing layer). */
const SCAN_WORKERS = 4;

export async function compactImage(req: CompactRequest): Promise<CompactResult> {
  const started = process.hrtime.bigint();
  const modes = req.modes ? parseModes(req.modes) : [...DEFAULT_MODES];
  const dryRun = req.dryRun ?? false;
  if (req.openOptions?.readOnly && !dryRun) {
    throw new BlockError('read-only', 'cannot compact an image opened read-only (use --dry-run to see what compact would do)', { path: req.path });
  }
  const cache = req.cache ?? 'writeback';
  if (cache !== 'unsafe' && cache !== 'writeback') throw new BlockError('invalid-argument', `unknown cache mode '${cache}' (unsafe or writeback)`);
  const given = req.openStore ?? req.openOptions?.openStore ?? openFileStore;
  const openStore: StoreOpener = cache === 'unsafe' ? (p, o) => given(p, o.readOnly ? o : { ...o, noSync: true }) : given;
  const chain = await openChain(req.path, { ...req.openOptions, openStore, readOnly: dryRun, layerOnly: false });
  try {
    const top = chain.top;
    const before = await sizeOf(top, openStore);
    const result: CompactResult = {
      path: req.path,
      format: top.format,
      modes,
      dryRun,
      released: Object.fromEntries(modes.map((m) => [m, 0])) as Record<CompactMode, number>,
      blockSize: 0,
      moved: 0,
      zeroRunBytes: 0,
      bytesBefore: before,
      bytesAfter: before,
      seconds: 0,
      notes: [],
    };
    if (isPunchable(top)) {
      // add-cow: holes punched in its image file (compact-holes.ts); sizes are that file's allocated bytes.
      await compactByPunching(chain, top, modes, dryRun, result, req.onProgress);
      result.seconds = seconds(started);
      await chain.close();
      return result;
    }
    if (!top.compactBlocks || !top.compact) {
      if (top.format !== 'vhd' && top.format !== 'vhdx' && top.format !== 'raw') {
        throw new BlockError('unsupported', `compact works on dynamic and differencing VHD and VHDX images and add-cow, not ${top.format}`, { path: req.path });
      }
      result.nothingToCompact =
        top.format === 'raw' ? 'a raw image has no blocks to release: nothing to compact' : `a fixed ${top.format} keeps every block allocated: nothing to compact`;
      result.seconds = seconds(started);
      await chain.close();
      return result;
    }
    const { blockSize, blocks } = await top.compactBlocks();
    result.blockSize = blockSize;
    const differencing = top.backing !== null;
    let zeroMode = modes.includes('zero');
    if (zeroMode && differencing && chain.layers.length < 2) {
      zeroMode = false;
      result.notes.push('zero mode skipped: this differencing layer was opened without its parent, and a zero block may stay only where the parent reads zeros');
    }
    // fs: the free space of the guest's file systems, as the whole chain shows the disk (before anything is written).
    let fsFree: { offset: number; length: number }[] = [];
    if (modes.includes('fs')) {
      const found = await findFreeSpace((offset, into) => chain.read(offset, into), chain.size);
      fsFree = found.free;
      for (const note of found.notes) result.notes.push(`fs: ${note}`);
    }
    // Each block judged on its own (trim, fs, then zero: the first that releases it counts), SCAN_WORKERS at a time
    // with a buffer each, so that the reads of some overlap the zero checks of others; results kept in block order.
    type Verdict = { mode?: CompactMode; runs?: { offset: number; length: number }[] };
    const verdicts: Verdict[] = new Array<Verdict>(blocks.length);
    const decidedEarlier = (b: (typeof blocks)[number]): Verdict | undefined => {
      const start = b.index * blockSize;
      if (modes.includes('trim') && b.trimmed) return { mode: 'trim' };
      if (fsFree.length && whollyFree(fsFree, start, Math.min(blockSize, top.size - start))) return { mode: 'fs' };
      if (!zeroMode || b.trimmed) return {};
      return undefined;
    };
    // A layer without a parent, in a local file: the zero checks in C, file to memory only (nativeZeroBlocks).
    const zeroBlocks = zeroMode && !differencing ? await nativeZeroBlocks(top, blocks.filter((b) => !decidedEarlier(b)).map((b) => b.index), blockSize, req.onProgress) : undefined;
    const judge = async (b: (typeof blocks)[number], buf: Uint8Array, parentBuf: Uint8Array): Promise<Verdict> => {
      const early = decidedEarlier(b);
      if (early) return early;
      const known = zeroBlocks?.get(b.index);
      if (known !== undefined) return known ? { mode: 'zero' } : {};
      if (differencing) {
        // Sector runs: zeros in the layer over zeros in the parent. All of what the layer holds: the block goes;
        // else the runs' bits are cleared and the block stays.
        const z = await zeroOverZero(chain, top, b.index, blockSize, buf, parentBuf);
        return z.whole ? { mode: 'zero' } : { runs: z.runs };
      }
      return (await blockReadsZero(top, b.index, blockSize, buf)) ? { mode: 'zero' } : {};
    };
    let next = 0;
    let judged = 0;
    const worker = async (): Promise<void> => {
      const buf = new Uint8Array(zeroBlocks ? 0 : Math.min(CHUNK, blockSize));
      const parentBuf = differencing && zeroMode ? new Uint8Array(buf.length) : buf;
      while (next < blocks.length) {
        const k = next++;
        verdicts[k] = await judge(blocks[k], buf, parentBuf);
        if (!zeroBlocks) req.onProgress?.(++judged, blocks.length);
      }
    };
    await Promise.all(Array.from({ length: Math.min(SCAN_WORKERS, blocks.length) }, worker));
    const release: number[] = [];
    const clear: { offset: number; length: number }[] = [];
    blocks.forEach((b, k) => {
      const v = verdicts[k];
      if (v.mode) {
        release.push(b.index);
        result.released[v.mode]++;
      } else if (v.runs) clear.push(...v.runs);
    });
    const outcome = await top.compact(release, { dryRun, onProgress: req.onProgress, clear });
    result.zeroRunBytes = outcome.cleared;
    if (!dryRun) await top.flush();
    result.moved = outcome.moved;
    result.bytesBefore = outcome.bytesBefore;
    result.bytesAfter = outcome.bytesAfter;
    result.seconds = seconds(started);
    await chain.close();
    return result;
  } catch (e) {
    await chain.close().catch(() => {});
    throw e;
  }
}

/** Whether [offset, offset+length) lies inside one of `free` (sorted, non-overlapping, adjacent ranges merged or not). */
function whollyFree(free: readonly { offset: number; length: number }[], offset: number, length: number): boolean {
  let lo = 0;
  let hi = free.length - 1;
  // The last range starting at or before offset.
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (free[mid].offset <= offset) lo = mid;
    else hi = mid - 1;
  }
  let at = offset;
  for (let k = lo; k < free.length && at < offset + length; k++) {
    const r = free[k];
    if (r.offset > at) return false;
    at = Math.max(at, r.offset + r.length);
  }
  return at >= offset + length;
}

function seconds(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}

async function sizeOf(top: Image, openStore: StoreOpener): Promise<number> {
  if (top.hostStore) return top.hostStore.size();
  const s = await openStore(top.path, { readOnly: true, forceShare: true });
  try {
    return await s.size();
  } finally {
    await s.close();
  }
}

/**
 * zero mode's check of a layer without a parent, for `indexes`, in one call
 * to the native addon (native/copy.c zeroScan): the data extents of each
 * block, minus the file's holes, read straight from the layer's file on
 * libuv's threads, each no further than its first byte that is not zero.
 * The same verdicts as blockReadsZero, which it stands in for (the bench's
 * 4 GiB VHD, 2 GiB of zero blocks: 0.74 s through JavaScript, 0.13 s
 * here). Undefined where it cannot run (no addon, or a layer not in a
 * local file, or whose extents do not name their place in it): then the
 * JavaScript checks run. A block without data extents reads zero.
 */
async function nativeZeroBlocks(top: Image, indexes: readonly number[], blockSize: number, onProgress?: (done: number, total: number) => void): Promise<Map<number, boolean> | undefined> {
  const addon = nativeAddon();
  const store = nativeStore(top.hostStore);
  if (!addon?.zeroScan || !store || !top.readHost || indexes.length === 0) return undefined;
  const fd = store.nativeFd();
  const plan: number[] = [];
  const owner: number[] = [];
  let total = 0;
  for (const index of indexes) {
    const start = index * blockSize;
    for (const e of await top.blockStatus(start, Math.min(blockSize, top.size - start))) {
      if (e.kind !== 'data') continue;
      if (e.hostOffset === undefined) return undefined;
      const ranges = (await top.hostAllocation?.(e.hostOffset, e.length)) ?? [{ offset: e.hostOffset, length: e.length, data: true }];
      for (const r of ranges) {
        if (!r.data) continue;
        for (let at = 0; at < r.length; at += NATIVE_MAX_RANGE) {
          const n = Math.min(NATIVE_MAX_RANGE, r.length - at);
          plan.push(fd, r.offset + at, n);
          owner.push(index);
          total += n;
        }
      }
    }
  }
  const out = new Uint8Array(owner.length);
  const progress = new BigUint64Array(1);
  const tick = onProgress && setInterval(() => onProgress(Number(progress[0]), total), 200);
  try {
    await addon.zeroScan(new Float64Array(plan), copyWorkers(), out, progress);
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { offset?: number };
    throw fromSystemError(e, { path: store.path, offset: err.offset, operation: 'read' });
  } finally {
    if (tick) clearInterval(tick);
  }
  const zero = new Map<number, boolean>(indexes.map((i) => [i, true]));
  owner.forEach((index, k) => {
    if (!out[k]) zero.set(index, false);
  });
  return zero;
}

/**
 * Whether releasing block `index` of a layer without a parent keeps the
 * disk's content: every part the layer answers for (data, or zeros it
 * records) reads zeros. Host holes (SEEK_HOLE) are zeros without reading.
 */
async function blockReadsZero(top: Image, index: number, blockSize: number, buf: Uint8Array): Promise<boolean> {
  const start = index * blockSize;
  const length = Math.min(blockSize, top.size - start);
  for (const e of await top.blockStatus(start, length)) {
    if (e.kind === 'data' && !(await layerZero(top, e.offset, e.length, e.hostOffset, buf))) return false;
  }
  return true;
}

/**
 * zero mode in a differencing layer, for block `index`: the runs of whole
 * logical sectors the layer holds as zeros where the parent reads zeros too
 * (clearing their bits keeps the disk's content: they then read the
 * parent's zeros), and whether those runs and the parts the layer leaves to
 * the parent make up the whole block (then the block itself goes). A zero
 * run over parent data stays. Zeros the layer records without data (a
 * VHDX ZERO block) count only for the whole block, where the parent reads
 * zeros too. Runs are found a granule at a time (ops/zero.ts granuleRuns),
 * not a sector at a time; the parent is read only under the layer's zeros.
 */
async function zeroOverZero(chain: Chain, top: Image, index: number, blockSize: number, buf: Uint8Array, parentBuf: Uint8Array): Promise<{ whole: boolean; runs: { offset: number; length: number }[] }> {
  const start = index * blockSize;
  const length = Math.min(blockSize, top.size - start);
  const sector = top.logicalSectorSize;
  const runs: { offset: number; length: number }[] = [];
  const add = (offset: number, len: number): void => {
    const last = runs[runs.length - 1];
    if (last && last.offset + last.length === offset) last.length += len;
    else runs.push({ offset, length: len });
  };
  const parent = (o: number, into: Uint8Array): Promise<void> => chain.readFrom(1, o, into);
  let whole = true;
  for (const e of await top.blockStatus(start, length)) {
    if (e.kind === 'unallocated') continue;
    if (e.kind !== 'data') {
      if (whole && !(await rangeZero(parent, e.offset, e.length, parentBuf))) whole = false;
      continue;
    }
    for (let at = e.offset; at < e.offset + e.length; at += buf.length) {
      const part = buf.subarray(0, Math.min(buf.length, e.offset + e.length - at));
      await top.read(at, part);
      for (const r of granuleRuns(part, at, sector, zeroChecker(part))) {
        if (!r.same) {
          whole = false;
          continue;
        }
        const under = parentBuf.subarray(0, r.to - r.from);
        await parent(at + r.from, under);
        for (const q of granuleRuns(under, at + r.from, sector, zeroChecker(under))) {
          if (q.same) add(at + r.from + q.from, q.to - q.from);
          else whole = false;
        }
      }
    }
  }
  return { whole, runs: whole ? [] : runs };
}

async function layerZero(top: Image, offset: number, length: number, host: number | undefined, buf: Uint8Array): Promise<boolean> {
  if (host === undefined || !top.readHost) return rangeZero((o, into) => top.read(o, into), offset, length, buf);
  const ranges = (await top.hostAllocation?.(host, length)) ?? [{ offset: host, length, data: true }];
  for (const r of ranges) if (r.data && !(await rangeZero((o, into) => top.readHost!(o, into), r.offset, r.length, buf))) return false;
  return true;
}

/** Bytes read first: a block of data almost always shows it in its first sectors, and then the rest is never read. */
const PROBE = 4096;

async function rangeZero(read: (offset: number, into: Uint8Array) => Promise<void>, offset: number, length: number, buf: Uint8Array): Promise<boolean> {
  for (let at = offset, first = true; at < offset + length; first = false) {
    const part = buf.subarray(0, Math.min(first ? PROBE : buf.length, offset + length - at));
    await read(at, part);
    if (!isZero(part)) return false;
    at += part.length;
  }
  return true;
}
