import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * vdisk's own native addon (native/copy.c), optional: built by
 * scripts/native.mjs at install and build time where a C compiler and
 * Node's headers are present. Everything it does has a JavaScript path too,
 * used when it is missing or when `VDISK_NATIVE=0` is set (or a caller asks
 * for it, as convert's `native: false`).
 *
 * Why it exists: copying a disk's data between files through the page cache
 * is bound by the writes, which the kernel takes one at a time per file. In
 * JavaScript every piece goes read → event loop → write, and the round trip
 * through the main thread leaves the write queue idle between pieces; on a
 * 2-core machine the bench's vhd→raw copy (512 MiB of data) took 135 ms
 * with bare fs.read/fs.write calls, 113 ms through this addon, and 107 ms
 * for the same loop as a C program (medians of 10).
 */
export interface NativeAddon {
  /**
   * Copy ranges of files into the `target` descriptor on `workers` libuv
   * threads, skipping granules (aligned to the target offset) that are all
   * zero. `plan` holds one quadruplet per range: source descriptor, source
   * offset, target offset, length (at most 64 MiB). Past the end of a
   * source file, zeros are read. `progress[0]`, if given, counts the bytes
   * of ranges finished so far (added to by the workers as they go).
   * Resolves to the bytes written; rejects with an Error carrying `code`
   * (errno name), `syscall` ('read' or 'write'), `fd` and `offset` (in
   * that file).
   */
  copyRanges(target: number, plan: Float64Array, granule: number, workers: number, progress?: BigUint64Array): Promise<number>;
  /**
   * The same copy into a target whose format places blocks (dynamic VHD,
   * VHDX; see Image.fillBlocks). `plan` holds one 6-tuple per range:
   * source descriptor, source offset, disk offset, unit, offset in the
   * unit's place, length; a range lies in one unit (a block of the disk).
   * `units` holds a pair per unit: the file offset of its place, or -1
   * when it has none yet, and flags (1: write zero granules too, for a
   * place that may hold other data; 0: skip them). A unit without a place
   * takes the next slot (`base + k * stride`, k = 0, 1, ...) on its first
   * range holding data, in plan order, so slots follow the plan whatever
   * order the threads finish in; units with no data take none. Zero
   * granules are aligned to the disk offset. On success `placed[u]` is
   * each unit's place (-1: none). Resolves to the bytes written; rejects
   * as copyRanges.
   */
  copyToBlocks(
    target: number,
    plan: Float64Array,
    units: Float64Array,
    base: number,
    stride: number,
    granule: number,
    workers: number,
    placed: Float64Array,
    progress?: BigUint64Array,
  ): Promise<number>;
  /**
   * Which ranges of files read all zeros, on `workers` libuv threads:
   * `plan` holds one triple per range (descriptor, offset, length, at most
   * 64 MiB); each range is read from its first page on, a page first and
   * then 1 MiB at a time, and no further than its first byte that is not
   * zero. `out[i]` becomes 1 when range i reads all zeros (past the end of
   * its file counts as zeros), else 0. Resolves to the number of zero
   * ranges; rejects as copyRanges. Absent from an addon built before it
   * existed.
   */
  zeroScan?(plan: Float64Array, workers: number, out: Uint8Array, progress?: BigUint64Array): Promise<number>;
  /**
   * Read into `into` at `position` from what the page cache holds, on this
   * thread, never waiting for the device (preadv2 with RWF_NOWAIT): the
   * bytes read (0 at end of file; fewer than asked when only part is in
   * memory), or minus the errno (-EAGAIN: none of it is in memory;
   * -ENOSYS, -EOPNOTSUPP, -EINVAL: this host or file cannot do it).
   */
  readNoWait(fd: number, into: Uint8Array, position: number): number;
  /**
   * Set (type 1 shared, 2 exclusive) or drop (0) an open-file-description
   * lock (F_OFD_SETLK) on one byte: 0, or minus the errno (-EAGAIN: another
   * holder conflicts; -EINVAL, -ENOSYS: no OFD locks on this host).
   */
  ofdLock(fd: number, byte: number, type: 0 | 1 | 2): number;
  /** 1 when another open file description holds a lock on the byte (F_OFD_GETLK), 0 when none does, or minus the errno. */
  ofdTest(fd: number, byte: number): number;
  /** lseek(fd, offset, whence) for whence 3 (SEEK_DATA) or 4 (SEEK_HOLE): the new offset, or minus the errno (-ENXIO: none at or after offset). */
  seek(fd: number, offset: number, whence: 3 | 4): number;
  /**
   * fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
   * length): 0, or minus the errno (-EOPNOTSUPP: the file system cannot
   * punch holes). Absent from an addon built before it existed.
   */
  punchHole?(fd: number, offset: number, length: number): number;
  /**
   * Send an NBD read reply on a non-blocking socket: `head`, then the
   * `segments` (triples: file descriptor or -1 for zeros, file offset,
   * length) with sendfile, from `skip` bytes into the reply. The bytes of
   * the reply sent so far (less than its length when the socket buffer
   * filled up), or minus the errno. Absent from an addon built before it
   * existed (io/file-reply.ts).
   */
  sendReply?(socket: number, head: Uint8Array, segments: Float64Array, skip: number): number;
  /** 1 when every page of the segments' file ranges is in the page cache, 0 when not, minus the errno when the host cannot tell (cachestat). */
  filesCached?(segments: Float64Array): number;
  /** SO_SNDBUF of a socket: 0, or minus the errno. */
  setSendBuffer?(socket: number, bytes: number): number;
}

/** The largest range copyRanges takes (each thread reads a range whole into its own buffer). */
export const NATIVE_MAX_RANGE = 64 << 20;

let addon: NativeAddon | null | undefined;
let loaded: NativeAddon | null | undefined;

/**
 * The package root: this module runs as dist/src/io/native.js (the library)
 * or inside dist/vdisk.cjs (the CLI bundle, whose import.meta.url is the
 * bundle's). Only that one place is tried.
 */
function packageRoot(): string {
  const here = fileURLToPath(import.meta.url);
  return basename(here) === 'vdisk.cjs' ? join(dirname(here), '..') : join(dirname(here), '..', '..', '..');
}

/** The built addon, or null when it is not built (or not loadable here). */
function loadAddon(): NativeAddon | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  try {
    loaded = createRequire(import.meta.url)(join(packageRoot(), 'native', 'build', 'Release', 'vdisk_native.node')) as NativeAddon;
  } catch {
    // not built (or not loadable here): the JavaScript paths are used
  }
  return loaded;
}

/** The addon for native I/O, or null when it is not built or is turned off (VDISK_NATIVE=0). */
export function nativeAddon(): NativeAddon | null {
  if (addon !== undefined) return addon;
  addon = process.env.VDISK_NATIVE === '0' ? null : loadAddon();
  return addon;
}

/**
 * The addon for finding a sparse file's holes (io/file-store.ts), whatever
 * VDISK_NATIVE says: not an I/O path with a JavaScript twin, a question
 * Node's fs cannot ask (without it, zeros are found by reading them).
 */
export function seekAddon(): NativeAddon | null {
  return loadAddon();
}

/**
 * The addon for image locking (io/lock.ts), whatever VDISK_NATIVE says:
 * that switch chooses between two ways of doing I/O, and locks have no
 * JavaScript way to fall back to.
 */
export function lockAddon(): NativeAddon | null {
  return loadAddon();
}

/**
 * The addon for punching holes (io/file-store.ts), whatever VDISK_NATIVE
 * says: like seek, a question Node's fs cannot ask, with no JavaScript way
 * to fall back to. Null when it is not built or has no punchHole.
 */
export function punchAddon(): NativeAddon | null {
  const a = process.platform === 'linux' ? loadAddon() : null;
  return a?.punchHole ? a : null;
}

/**
 * The addon for sending NBD read replies with sendfile (io/file-reply.ts):
 * null when it is not built, lacks sendReply, is turned off
 * (VDISK_NATIVE=0) or the host is not Linux.
 */
export function sendAddon(): NativeAddon | null {
  const a = process.platform === 'linux' ? nativeAddon() : null;
  return a?.sendReply && a.filesCached ? a : null;
}

/**
 * Threads a native copy uses. On 2 cores, 2 (3 was slower: the writes
 * queue on the target's inode lock, and a third thread only spins there);
 * more cores read ahead more, up to libuv's default pool of 4.
 */
export function copyWorkers(): number {
  return Math.max(2, Math.min(4, availableParallelism()));
}
