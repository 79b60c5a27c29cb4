import { BlockError, fromSystemError } from '../core/errors.js';
import { isAzureLocation } from '../io/azure-location.js';
import { folderOf, hostFor, openLocation } from '../io/hosts.js';
import { copyWorkers, nativeAddon, NATIVE_MAX_RANGE, type NativeAddon } from '../io/native.js';
import { nativeStore, type NativeStore, type Store, type StoreOpener } from '../io/store.js';
import type { FileHost } from '../io/staging.js';
import { openChain, openLayer, type ChainOpenOptions } from '../chain/open.js';
import type { Chain, ChainExtent } from '../chain/chain.js';
import type { BlockFill, Image } from '../formats/types.js';
import { backingAbsolute, createWith, ownFolders, stagingFor } from './create.js';
import { granuleRuns, isZero, sameChecker, zeroChecker } from './zero.js';
import { settleAll } from '../core/settle.js';
import { Slots } from '../core/mutex.js';
import { writeZeroBytes } from '../core/zeros.js';

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
  /**
   * `-n`: write into an existing target instead of creating one. Such a
   * write is in place, not atomic: an interrupted one leaves the target
   * partly written (as qemu-img convert -n does).
   */
  existing?: boolean;
  /** Replace an existing file at `target` (atomically, once the copy is complete); without it an existing target is refused. */
  overwrite?: boolean;
  /**
   * Target is an Azure page blob (ops/azure-upload.ts): continue an
   * interrupted upload into the blob that is there, sending only what it
   * lacks or holds differently.
   */
  resume?: boolean;
  /** Abort the copy: the new target is removed and the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /** How the new target's files are named and removed (see CreateRequest.host). */
  host?: FileHost;
  onProgress?: (done: number, total: number) => void;
  /**
   * Bytes of the source mapped at once (default 1 GiB). A stream source
   * (stdin) wants little: a map that reads sector bitmaps (VHD and VHDX
   * children) must not run further ahead of the data it describes than the
   * stream's buffer reaches back.
   */
  mapWindow?: number;
  /** Called after the copy, before the new target gets its name: a failure discards it (a stdin source checks its stream's end). */
  beforeCommit?: () => Promise<void>;
  openStore?: StoreOpener;
  /**
   * Target cache mode, as qemu-img's `-t`: 'unsafe' (default, as qemu-img
   * convert) never syncs the new target — a fresh copy can always be made
   * again from its source; 'writeback' syncs wherever the format orders its
   * writes and once at the end.
   */
  cache?: 'unsafe' | 'writeback';
  /** Copy buffer size (default 2 MiB; see LANES). */
  bufferSize?: number;
  /**
   * false: copy through JavaScript even where the native addon could copy
   * file to file (see nativeTarget). For comparisons and tests; the
   * results are the same.
   */
  native?: boolean;
}

export interface ConvertResult {
  size: number;
  /** The target's size, when the format made it larger than the source (VHD CHS rounding, `-o azure=on`). */
  targetSize?: number;
  /** Said when `-o azure=on` rounded the size up (see CreateResult.note). */
  note?: string;
  /**
   * Bytes of data written to the target (zero runs skipped are not counted).
   * A target written as one stream (S3: ops/convert-sink.ts) counts the disk
   * data the stream carries: its allocated blocks, zeros inside them too, or
   * every byte of a raw or fixed VHD object (an object has no holes).
   */
  written: number;
  /** A target written as one stream (S3): the exact bytes of the object, metadata included. */
  objectSize?: number;
}

/** Extents asked of the source at once; bounded so huge sparse disks use bounded memory. */
const WINDOW = 1 << 30;
const SECTOR = 512;
/**
 * Pieces copied at once, each with its own buffer, and how many of them may
 * be reading at once. Reads always overlap (they run ahead of the writes),
 * and so do writes into a target whose layout is fixed (raw, add-cow) or
 * that allocates in call order (VHD). On 2 cores a page-cache copy is
 * bound by the writes (the kernel takes them one at a time per file):
 * capping the reads keeps them from crowding the writes out of libuv's four
 * threads, while spare lanes hold data read ahead for the next writes.
 * Measured on the bench's vhd→raw (1 GiB, half data), in-process medians
 * of 5: 6 lanes with no read cap 160 ms, 8 lanes with 4 reads 152 ms, 10
 * with 4 no better. Pieces of 2 MiB rather than 4 (BUFFER_SIZE), medians
 * of 7: raw→raw 166 → 156 ms, raw→vhd 188 → 177, vhdx→raw 168 → 165,
 * raw→vhdx 214 → 211, vhd→raw unchanged (its pieces are its 2 MiB blocks);
 * 12 lanes of 2 MiB no better than 8. Eight buffers of 2 MiB cost 16 MiB
 * (two or three times that with -n and -B, whose lanes also read what the
 * target holds).
 */
const LANES = 8;
const READS_AT_ONCE = 4;
const BUFFER_SIZE = 2 << 20;

interface Piece {
  offset: number;
  length: number;
  zero: boolean;
  /** Where a data piece lies in a layer's own file, when reading that file there gives its bytes. */
  host?: { store: NativeStore; offset: number };
}

/** One lane's buffers: the data read, and what the target shows there (-B, -n). */
interface Lane {
  data: Uint8Array;
  theirs?: Uint8Array;
  scratch?: Uint8Array;
}

/**
 * Copy a disk (flattening its chain) into a new or existing image. Zero
 * extents reported by the source are skipped without reading; data extents
 * are read in big buffers, several at once, and their zero granules skipped
 * too, so the target stays sparse.
 */
export async function convert(req: ConvertRequest): Promise<ConvertResult> {
  // An Azure page blob target is an upload (loaded only then: it brings the SDK).
  if (isAzureLocation(req.target)) return (await import('./azure-upload.js')).uploadToPageBlob(req);
  if (req.resume) throw new BlockError('invalid-argument', '--resume continues an upload to an Azure page blob; this target is not one', { path: req.target });
  const openStore = req.openStore ?? openLocation;
  const cache = req.cache ?? 'unsafe';
  if (cache !== 'unsafe' && cache !== 'writeback') throw new BlockError('invalid-argument', `unknown cache mode '${cache}' (unsafe or writeback)`);
  // Only the target's own files go without syncs; its backing (-B) is only read.
  const targetStore: StoreOpener = cache === 'unsafe' ? (p, o) => openStore(p, o.readOnly ? o : { ...o, noSync: true }) : openStore;
  const sparse = req.sparseSize ?? 4096;
  if (!Number.isSafeInteger(sparse) || sparse < 0 || (sparse > 0 && sparse % 512 !== 0)) {
    throw new BlockError('invalid-argument', `sparse size must be 0 or a multiple of 512 (got ${sparse})`);
  }
  const askedBuffer = req.bufferSize ?? BUFFER_SIZE;
  if (!Number.isSafeInteger(askedBuffer) || askedBuffer < 512 || askedBuffer % 512 !== 0 || askedBuffer > 1 << 30) {
    throw new BlockError('invalid-argument', `buffer size must be a multiple of 512 from 512 bytes to 1 GiB (got ${askedBuffer})`);
  }
  if (req.existing && req.overwrite) throw new BlockError('invalid-argument', '-n writes into an existing target; --overwrite replaces one (choose one)');
  req.signal?.throwIfAborted();
  // A host that cannot write files in place (S3) takes the target as one ordered stream.
  const targetHost = hostFor(req.target);
  if (!targetHost.files && targetHost.createSink) return (await import('./convert-sink.js')).convertToSink(req, { ...targetHost, createSink: targetHost.createSink }, openStore);
  // A new target is written under a temporary name and renamed into place
  // once complete (io/staging.ts); with -t writeback its folder is synced
  // after the rename too. With -t unsafe nothing is synced: a host crash
  // may leave the new name on a file whose data never reached the disk, as
  // qemu-img convert's default promises nothing across a crash either; the
  // staging still keeps a failed, interrupted or full-disk copy from leaving
  // a file behind.
  const staging = req.existing ? undefined : stagingFor(req.target, req, targetStore, cache === 'writeback');
  const dstStore = staging?.opener ?? targetStore;
  const src = await openChain(req.source, { ...req.sourceOptions, readOnly: true, openStore });
  // A source whose files are read best in bigger pieces (a remote object:
  // each piece one request straight into its lane's buffer, no copy held
  // in between) gets them, into a fresh target (-n and -B give each lane
  // two more buffers).
  const fresh = !req.existing && !req.backing;
  const bufferSize = req.bufferSize ?? (fresh ? Math.max(BUFFER_SIZE, ...src.layers.map((l) => l.hostStore?.readSize ?? 0)) : BUFFER_SIZE);
  // The source's first map is asked for now, while the target is made:
  // copy() starts from it without waiting.
  const window = req.mapWindow ?? WINDOW;
  const firstMap = src.blockStatus(0, Math.min(window, src.size), { findZeroes: true });
  firstMap.catch(() => {}); // an error surfaces when copy() awaits it; until then it must not count as unhandled
  let dst: Chain | undefined;
  let note: string | undefined;
  try {
    if (!req.existing) {
      const r = await createWith(
        {
          path: req.target,
          format: req.targetFormat,
          // A source of an odd size (a raw file) gets a target of whole
          // sectors, the tail reading as zeros — as qemu-img convert does.
          size: Math.ceil(src.size / SECTOR) * SECTOR,
          options: req.options,
          backing: req.backing,
          overwrite: req.overwrite,
          signal: req.signal,
        },
        dstStore,
      );
      if (r.size < src.size) {
        throw new BlockError('out-of-range', `the ${req.targetFormat} target can hold only ${r.size} of the source's ${src.size} bytes`, {
          path: req.target,
        });
      }
      note = r.note;
    } else if (req.backing) {
      throw new BlockError('invalid-argument', '-B and -n cannot be combined (an existing target keeps its own backing)');
    }
    dst = await openChain(req.target, { format: req.targetFormat, openStore: dstStore, ...(req.existing ? {} : await ownNames(req, openStore)) });
    if (dst.size < src.size) {
      throw new BlockError('out-of-range', `target is ${dst.size} bytes, smaller than the source (${src.size})`, { path: req.target });
    }
    // A fresh target without backing already reads as zeros: nothing to write there.
    const mode: Mode = req.existing ? 'overwrite' : req.backing ? 'diff' : 'fresh';
    const direct = req.native === false || bufferSize > NATIVE_MAX_RANGE ? undefined : nativeTarget(dst, mode, sparse);
    const dstSize = dst.size;
    const written = await copy(src, dst, mode, sparse, bufferSize, firstMap, direct, req.onProgress, req.signal, window);
    await dst.flush();
    const closing = dst;
    dst = undefined;
    await closing.close();
    req.signal?.throwIfAborted();
    await req.beforeCommit?.();
    await staging?.commit();
    return { size: src.size, written, ...(dstSize !== src.size ? { targetSize: dstSize } : {}), ...(note ? { note } : {}) };
  } catch (e) {
    if (staging) {
      // Whatever was made so far (a partly created image too) goes.
      const err = staging.rename(e);
      await dst?.close().catch(() => {});
      dst = undefined;
      await staging.discard();
      throw err;
    }
    throw e;
  } finally {
    await dst?.close();
    await firstMap.catch(() => {});
    await src.close();
  }
}

type Mode = 'fresh' | 'diff' | 'overwrite';

/** How a copy may write into a target layer (see copyHints). */
interface CopyHints {
  /** Each piece's writes wait for the previous piece's turn. */
  inDiskOrder: boolean;
  /** A piece's writes may all be issued at once and the next piece's follow before they finish. */
  manyInFlight: boolean;
  /** The native copier may write the target's file directly. */
  fileToFile: boolean;
}

/**
 * Where the target places writes is a fact of its format (Image.placement,
 * formats/types.ts); what a copy does with it is decided here. Allocating
 * targets get their writes in disk order, as qemu-img convert does without
 * -W, so the file is laid out like the disk: a VHDX target one piece at a
 * time; one that places blocks in call order (VHD) takes the next piece's
 * writes as soon as this piece's are issued, not finished, so several run
 * at once. Fixed-place targets (raw, add-cow, fixed VHD) take them in any
 * order, at once; where the disk is the file's bytes (raw, fixed VHD) the
 * native copier may write the file itself.
 */
function copyHints(target: Image): CopyHints {
  const p = target.placement;
  return { inDiskOrder: p !== 'identity' && p !== 'fixed', manyInFlight: p !== undefined, fileToFile: p === 'identity' };
}

async function copy(
  src: Chain,
  dst: Chain,
  mode: Mode,
  sparse: number,
  bufferSize: number,
  firstMap: Promise<ChainExtent[]>,
  direct: NativeTarget | undefined,
  onProgress?: (done: number, total: number) => void,
  signal?: AbortSignal,
  window = WINDOW,
): Promise<number> {
  const total = src.size;
  let written = 0;
  let done = 0;
  const granule = sparse || bufferSize;
  const zeroGranule = sparse || 4096;
  const lanes: Lane[] = Array.from({ length: LANES }, () => ({
    data: new Uint8Array(bufferSize),
    theirs: mode === 'diff' ? new Uint8Array(bufferSize) : undefined,
    scratch: mode === 'fresh' ? undefined : new Uint8Array(bufferSize),
  }));
  const hints = copyHints(dst.top);
  const ordered = hints.inDiskOrder;
  const issueAll = mode === 'fresh' && sparse !== 0 && hints.manyInFlight;
  const align = dst.logicalSectorSize;
  let writeTurn: Promise<void> = Promise.resolve();
  const running = new Set<Promise<void>>();
  const reads = new Slots(READS_AT_ONCE);
  let failure: { error: unknown } | undefined;

  const copyPiece = async (p: Piece, lane: Lane, turn: Promise<void>, issued: () => void): Promise<void> => {
    if (p.zero) {
      await turn;
      // (Not `written += await …`: that reads `written` before the wait and drops what other lanes add meanwhile.)
      if (sparse === 0) {
        const n = await writeZeroData(dst, p.offset, p.length);
        written += n;
      }
      else if (mode !== 'fresh') await zeroWhereNeeded(dst, p.offset, p.length, lane.scratch!, zeroGranule);
      return;
    }
    const data = lane.data.subarray(0, p.length);
    await reads.run(() => src.read(p.offset, data));
    await turn;
    if (issueAll) {
      const { writes, bytes } = issueNonZero(dst, p.offset, data, granule);
      issued();
      await settleAll(writes);
      written += bytes;
      return;
    }
    const n = await writeData(dst, p.offset, data, mode, sparse, granule, lane.theirs, lane.scratch);
    written += n;
  };
  const drain = async () => {
    while (running.size) await Promise.race(running);
  };

  for (let wOff = 0; wOff < total && !failure; wOff += window) {
    if (signal?.aborted) {
      failure ??= { error: signal.reason };
      break;
    }
    const map = wOff === 0 ? firstMap : src.blockStatus(wOff, Math.min(window, total - wOff), { findZeroes: true });
    let jsPieces: Piece[] = [];
    let plan: Piece[] = [];
    for (const p of pieces(await map, bufferSize, direct ? src : undefined)) {
      if (p.zero && mode === 'fresh' && sparse !== 0) {
        // A fresh target without backing already reads as zeros.
        done += p.length;
        onProgress?.(done, total);
      } else if (direct && p.host) plan.push(p);
      else jsPieces.push(p);
    }
    if (direct?.fill && plan.length) {
      if (jsPieces.length) {
        // A target that places blocks takes them in disk order: a window the
        // copier cannot take whole goes through the lanes whole.
        jsPieces = [...plan, ...jsPieces].sort((a, b) => a.offset - b.offset);
        plan = [];
      } else await drain(); // the lanes' writes before the copier takes the target's lock (they allocate too)
    }
    // The native copier takes what lies in layers' files, at the same time
    // as the lanes below copy the rest (disjoint ranges of a raw target).
    let nativeRun: Promise<void> | undefined;
    if (plan.length) {
      nativeRun = copyNative(direct!, plan, sparse, onProgress && ((n) => onProgress(done + n, total))).then(
        (bytes) => {
          written += bytes;
          for (const p of plan) done += p.length;
          onProgress?.(done, total);
        },
        (e: unknown) => {
          failure ??= { error: e };
        },
      );
    }
    for (const p of jsPieces) {
      // A piece that shares a sector with its neighbours is copied alone, so
      // no two writes in flight ever touch the same sector (Chain.write's
      // `disjoint`). Extents are sector-aligned except at an odd disk end.
      const alone = p.offset % align !== 0 || (p.offset + p.length) % align !== 0;
      if (alone) {
        // (The native copy too: this piece's write completes its sectors from what the target holds.)
        await nativeRun;
        await drain();
      }
      while (running.size >= LANES) await Promise.race(running);
      // An abort stops the copy between pieces (a native run finishes its window first).
      if (signal?.aborted) failure ??= { error: signal.reason };
      if (failure) break;
      const lane = lanes.pop()!;
      const turn = writeTurn;
      let finished!: () => void;
      const mine = new Promise<void>((r) => (finished = r));
      if (ordered) writeTurn = mine;
      const task: Promise<void> = copyPiece(p, lane, ordered ? turn : Promise.resolve(), finished)
        .then(
          () => {
            done += p.length;
            onProgress?.(done, total);
          },
          (e: unknown) => {
            failure ??= { error: e };
          },
        )
        .finally(() => {
          finished();
          lanes.push(lane);
          running.delete(task);
        });
      running.add(task);
      if (alone) await drain();
    }
    await nativeRun;
  }
  // Every write has settled before convert() returns or removes the target.
  await drain();
  if (failure) throw failure.error;
  return written;
}

/**
 * Data extents split into buffer-sized pieces; zero extents stay whole.
 * With `src` (a native copy is possible), each data piece that lies as-is
 * in its layer's own file says where (`host`).
 */
function* pieces(extents: ChainExtent[], bufferSize: number, src: Chain | undefined): Generator<Piece> {
  for (const e of extents) {
    if (e.kind === 'zero') {
      yield { offset: e.offset, length: e.length, zero: true };
      continue;
    }
    const store = e.hostOffset === undefined ? undefined : src?.layers[e.depth]?.hostStore;
    const file = nativeStore(store);
    for (let o = 0; o < e.length; o += bufferSize) {
      const length = Math.min(bufferSize, e.length - o);
      yield { offset: e.offset + o, length, zero: false, host: file && { store: file, offset: e.hostOffset! + o } };
    }
  }
}

interface NativeTarget {
  addon: NativeAddon;
  store: NativeStore;
  /** A target whose format places blocks (Image.fillBlocks): the copier writes into the places it gives. */
  fill?: Image['fillBlocks'];
}

/**
 * The native copier and the target's file, when data can go from the
 * source's files straight into it (io/native.ts says why that is faster):
 * a fresh target of one layer (no backing, so nothing to compare with),
 * zero granules skipped (-S other than 0), whose disk is its file's bytes
 * (copyHints' fileToFile: raw, fixed VHD) or whose format places new
 * blocks for the copier (fillBlocks: dynamic VHD, VHDX without a parent).
 * Otherwise undefined and every piece goes through the lanes.
 */
function nativeTarget(dst: Chain, mode: Mode, sparse: number): NativeTarget | undefined {
  if (mode !== 'fresh' || sparse === 0 || dst.layers.length !== 1) return undefined;
  const fileToFile = copyHints(dst.top).fileToFile;
  if (!fileToFile && !dst.top.fillBlocks) return undefined;
  const store = dst.top.hostStore;
  const addon = nativeAddon();
  const native = nativeStore(store);
  if (!addon || !native || native.readOnly) return undefined;
  return fileToFile ? { addon, store: native } : { addon, store: native, fill: dst.top.fillBlocks };
}

/** How often a running native copy reports progress. */
const PROGRESS_MS = 100;

/**
 * Copy pieces that lie in layers' files into the target's file, in one
 * native call (fileToFile: the file offset is the disk offset). Resolves to the bytes
 * written; an error names the file and offset it happened at.
 */
async function copyNative(target: NativeTarget, plan: Piece[], granule: number, onProgress?: (finished: number) => void): Promise<number> {
  if (target.fill) return copyIntoBlocks(target.addon, target.fill, plan.map((p) => ({ store: p.host!.store, from: p.host!.offset, offset: p.offset, length: p.length })), granule, false, onProgress);
  const ranges = new Float64Array(plan.length * 4);
  const byFd = new Map<number, Store>([[target.store.nativeFd(), target.store]]);
  plan.forEach((p, i) => {
    const fd = p.host!.store.nativeFd();
    byFd.set(fd, p.host!.store);
    ranges.set([fd, p.host!.offset, p.offset, p.length], i * 4);
  });
  return runNative(byFd, onProgress, (progress) => target.addon.copyRanges(target.store.nativeFd(), ranges, granule, copyWorkers(), progress));
}

/**
 * Run one native copy call: progress polled from the counter it updates,
 * and its error (which carries the fd and offset it happened at) turned
 * into a BlockError naming that file.
 */
async function runNative(byFd: Map<number, Store>, onProgress: ((finished: number) => void) | undefined, call: (progress: BigUint64Array) => Promise<number>): Promise<number> {
  const progress = new BigUint64Array(1);
  const timer = onProgress && setInterval(() => onProgress(Number(progress[0])), PROGRESS_MS);
  timer?.unref();
  try {
    return await call(progress);
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { fd?: number; offset?: number };
    const store = err.fd === undefined ? undefined : byFd.get(err.fd);
    throw fromSystemError(e, { path: store?.path, offset: err.offset, operation: err.syscall === 'read' ? 'read' : 'write' });
  } finally {
    clearInterval(timer);
  }
}

/** A range of data in a layer's file, to be copied to the same disk offset of a target. */
export interface HostCopy {
  store: NativeStore;
  /** Offset in `store`. */
  from: number;
  /** Disk offset. */
  offset: number;
  length: number;
}

/**
 * Copy ranges (in disk order, disjoint) into a layer that places its blocks
 * (Image.fillBlocks), in one native call under the layer's lock: the layer
 * says where allocated blocks are and where new ones go, the addon writes
 * the data there (new blocks take slots in disk order as their first data
 * comes, blocks of zeros none: the layout the JavaScript path makes), and
 * the layer then records the new blocks. `inPlaceWritesAll`: zero granules
 * of ranges into allocated blocks are written too (commit: the place holds
 * older data); convert's fresh targets skip them. Resolves to the bytes
 * written; an error names the file and offset it happened at.
 */
export async function copyIntoBlocks(
  addon: NativeAddon,
  fillBlocks: NonNullable<Image['fillBlocks']>,
  copies: HostCopy[],
  granule: number,
  inPlaceWritesAll: boolean,
  onProgress?: (finished: number) => void,
): Promise<number> {
  let written = 0;
  await fillBlocks(async (where: BlockFill) => {
    const target = nativeStore(where.store);
    if (!target) throw new BlockError('unsupported', 'the native copier writes only local files', { path: where.store.path });
    const bs = where.blockSize;
    // Ranges cut at block boundaries (a range lies in one unit); units are the blocks, in disk order.
    const plan: number[] = [];
    const units: number[] = [];
    const blockOf: number[] = [];
    const byFd = new Map<number, Store>([[target.nativeFd(), target]]);
    for (const c of copies) {
      byFd.set(c.store.nativeFd(), c.store);
      for (let o = 0; o < c.length; ) {
        const at = c.offset + o;
        const block = Math.floor(at / bs);
        const n = Math.min(c.length - o, (block + 1) * bs - at);
        if (blockOf[blockOf.length - 1] !== block) {
          const place = where.placeOf(block);
          blockOf.push(block);
          units.push(place ?? -1, place !== undefined && inPlaceWritesAll ? 1 : 0);
        }
        plan.push(c.store.nativeFd(), c.from + o, at, blockOf.length - 1, at - block * bs, n);
        o += n;
      }
    }
    const placed = new Float64Array(blockOf.length);
    written = await runNative(byFd, onProgress, (progress) =>
      addon.copyToBlocks(target.nativeFd(), new Float64Array(plan), new Float64Array(units), where.base, where.stride, granule, copyWorkers(), placed, progress),
    );
    // The blocks that took slots, in slot order (which is disk order: the addon hands slots out along the plan).
    const taken: number[] = [];
    for (let u = 0; u < blockOf.length; u++) if (units[2 * u] === -1 && placed[u] >= 0) taken.push(blockOf[u]);
    return taken;
  });
  return written;
}

/**
 * The writes of a fresh target's piece, all issued before returning (one per
 * run of non-zero granules; they are disjoint), and the bytes they carry.
 */
function issueNonZero(dst: Chain, offset: number, data: Uint8Array, granule: number): { writes: Promise<void>[]; bytes: number } {
  const writes: Promise<void>[] = [];
  let bytes = 0;
  // No whole-buffer zero test first: the gallop in granuleRuns costs a few
  // compares on an all-zero buffer, and a buffer that starts with zeros
  // would have them read twice.
  for (const run of granuleRuns(data, offset, granule, zeroChecker(data))) {
    if (run.same) continue;
    writes.push(dst.write(offset + run.from, data.subarray(run.from, run.to), { disjoint: true }));
    bytes += run.to - run.from;
  }
  return { writes, bytes };
}

/** `-S 0`: fully allocate, writing real zero bytes. */
async function writeZeroData(dst: Chain, offset: number, length: number): Promise<number> {
  await writeZeroBytes((o, d) => dst.write(o, d, { disjoint: true }), offset, length);
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
      await dst.write(offset + run.from, data.subarray(run.from, run.to), { disjoint: true });
      written += run.to - run.from;
    }
    return written;
  }
  if (sparse === 0) {
    await dst.write(offset, data, { disjoint: true });
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
    await dst.write(offset + run.from, data.subarray(run.from, run.to), { disjoint: true });
    written += run.to - run.from;
  }
  return written;
}

/**
 * A target convert has just made records only names the user gave (-B, -F,
 * -o image_file): reopening it follows them where they lead, and a raw -B
 * is raw because the user named it as the backing (docs/security.md).
 */
async function ownNames(req: ConvertRequest, openStore: StoreOpener): Promise<Pick<ChainOpenOptions, 'allowPaths' | 'backingFormats'>> {
  const allowPaths = ownFolders(req.target, req.options);
  if (!req.backing) return { allowPaths };
  const backing = backingAbsolute(req.target, req.backing.path);
  allowPaths.push(folderOf(backing));
  let format = req.backing.format;
  if (!format) {
    const img = await openLayer(backing, { readOnly: true, openStore });
    format = img.format;
    await img.close();
  }
  return { allowPaths, backingFormats: [format] };
}
