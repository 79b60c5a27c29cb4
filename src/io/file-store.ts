import { open, type FileHandle } from 'node:fs/promises';
import { constants, type Stats, read as fsRead, write as fsWrite, writev as fsWritev } from 'node:fs';
import { BlockError, fromSystemError, isBlockError } from '../core/errors.js';
import { readOnlyError } from '../core/request.js';
import type { HostRange, OpenStoreOptions, Store } from './store.js';
import { constants as osConstants } from 'node:os';
import { dirname } from 'node:path';
import { nativeAddon, punchAddon, seekAddon } from './native.js';
import { lockImage } from './lock.js';

// lseek(2) whence values for sparse files (Linux): SEEK_DATA finds the next
// data at or after an offset, SEEK_HOLE the next hole. Node's fs has no lseek,
// so vdisk's native addon (native/seek.c) provides it; without the addon,
// sparse raw files are still handled correctly, by zero detection instead.
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
type SeekFn = (fd: number, offset: number, whence: 3 | 4) => number;
function lseek(): SeekFn | null {
  const addon = process.platform === 'linux' ? seekAddon() : null;
  if (!addon?.seek) return null;
  return (fd, offset, whence) => {
    const r = addon.seek(fd, offset, whence);
    if (r >= 0) return r;
    throw Object.assign(new Error(`lseek: errno ${-r}`), { code: r === -osConstants.errno.ENXIO ? 'ENXIO' : 'EINVAL' });
  };
}

// Positional I/O through the callback API on the FileHandle's descriptor:
// per call it costs markedly less than FileHandle.read/write (no FileHandle
// bookkeeping or promise plumbing in Node's fs/promises), which shows on
// small requests (4 KiB reads, NBD).
function preadOnce(fd: number, buf: Uint8Array, at: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fsRead(fd, buf, at, len, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

function pwriteOnce(fd: number, buf: Uint8Array, at: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fsWrite(fd, buf, at, len, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

function pwritevOnce(fd: number, bufs: Uint8Array[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => fsWritev(fd, bufs, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

/**
 * Reads up to this size are first tried on the main thread without waiting
 * (the native addon's readNoWait: preadv2 with RWF_NOWAIT), and go to the
 * thread pool only for what the page cache does not hold. A read from
 * memory then costs one copy on the main thread instead of a round trip to
 * a pool thread (~40 µs here). Where the bound lies: copying 64 KiB takes
 * the main thread ~6 µs, less than its own share of sending a read to the
 * pool, so small reads gain at any queue depth (bench: raw 4 KiB reads at
 * qd1 25x faster, at qd16 7x); bigger ones are better spread over the
 * pool's threads when many run at once — with a bound of 256 KiB, nbdcopy
 * (256 KiB requests, many in flight) through `vdisk serve` got 20% slower.
 */
const NOWAIT_MAX = 64 * 1024;
const { EINVAL, ENOSYS, EOPNOTSUPP } = osConstants.errno;

/** A host file, through one FileHandle with positional reads and writes. */
export class FileStore implements Store {
  private closed = false;
  /** Whether reads try readNoWait first; off once the host says it cannot (no RWF_NOWAIT there). */
  private noWait = true;
  /** Whether the file had no holes when first asked (see allocation); asked again after truncate. */
  private holeless: Promise<boolean> | undefined;
  /** Store.punchHole: present only where the native addon can punch (native/punch.c, Linux). */
  readonly punchHole?: (offset: number, length: number) => Promise<void>;
  private constructor(
    readonly path: string,
    readonly readOnly: boolean,
    private readonly fh: FileHandle,
    private readonly noSync: boolean,
    /** The size seen at open, for the first size() unless this store wrote or truncated before it. */
    private knownSize: number | undefined,
  ) {
    // Present on read-only opens too (a dry run asks whether a real run could punch); punching there is refused.
    const addon = punchAddon();
    if (addon) this.punchHole = (offset, length) => this.punch(addon, offset, length);
  }

  static async open(path: string, options: OpenStoreOptions = {}): Promise<FileStore> {
    const readOnly = options.readOnly ?? false;
    if (options.forceShare && (!readOnly || options.create)) {
      // As qemu-img: sharing an image with other writers is for reading only.
      throw new BlockError('invalid-argument', 'force-share (-U) can only be used with read-only images', { path });
    }
    let flags: number;
    if (options.create) {
      // Not O_TRUNC: the file is emptied only once it is locked (below), never under a VM that has it open.
      flags = constants.O_RDWR | constants.O_CREAT | (options.truncate ? 0 : constants.O_EXCL);
    } else {
      flags = readOnly ? constants.O_RDONLY : constants.O_RDWR;
    }
    // O_NONBLOCK: opening a FIFO without it waits for the other end forever
    // (and holds a thread of libuv's pool all that time); with it, the open
    // returns and the check below refuses the FIFO. On regular files the flag
    // has no effect (open(2): "O_NONBLOCK ... has no effect for regular
    // files and block devices"), so it stays set.
    flags |= constants.O_NONBLOCK;
    const isDirectory = () => new BlockError('invalid-argument', 'is a directory, not an image file', { path });
    let fh: FileHandle | undefined;
    try {
      fh = await open(path, flags, 0o644);
      // Only regular files are images (docs/security.md): a name recorded in
      // an image must not make vdisk read a device (/dev/zero never ends, a
      // tape rewinds), a FIFO or a socket. Asked of the open descriptor, not
      // the name, so a file swapped after a stat cannot slip through. A
      // create with O_EXCL made a new regular file: no question to ask. Every
      // format asks the size first: this stat answers it, one round trip to
      // the thread pool instead of two.
      const st = options.create && !options.truncate ? undefined : await fh.stat();
      if (st?.isDirectory()) throw isDirectory();
      if (st && !st.isFile()) {
        throw new BlockError('invalid-argument', `is ${fileKind(st)}, not a regular file; only regular files are opened as images`, { path });
      }
      // Locked on every open, QEMU's way (io/lock.ts); closing the descriptor releases the locks.
      lockImage(fh.fd, path, { readOnly: readOnly && !options.create, forceShare: options.forceShare });
      if (options.create && options.truncate) await fh.truncate(0);
      return new FileStore(path, readOnly && !options.create, fh, options.noSync ?? false, options.create ? 0 : st?.size ?? 0);
    } catch (e) {
      await fh?.close().catch(() => {});
      if (isBlockError(e)) throw e;
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EISDIR') throw isDirectory();
      // A FIFO opened for writing with O_NONBLOCK and no reader (O_TRUNC of an existing FIFO).
      if (code === 'ENXIO') throw new BlockError('invalid-argument', 'is not a regular file; only regular files are opened as images', { path }, { cause: e });
      if (code === 'EEXIST') {
        throw new BlockError('invalid-argument', 'file already exists', { path, operation: 'create' }, { cause: e });
      }
      // O_CREAT fails with ENOENT only when a folder on the way is missing: say that, not "no such file" of the file being made.
      if (code === 'ENOENT' && options.create) {
        throw new BlockError('not-found', `folder ${dirname(path)} does not exist (make it first)`, { path, operation: 'create' }, { cause: e });
      }
      throw fromSystemError(e, { path, operation: options.create ? 'create' : 'open' });
    }
  }

  /** The open descriptor, for vdisk's native I/O (io/native.ts); valid until close(). */
  get fd(): number {
    if (this.closed) throw new BlockError('invalid-argument', 'store is closed', { path: this.path });
    return this.fh.fd;
  }

  nativeFd(): number {
    return this.fd;
  }

  async size(): Promise<number> {
    const known = this.knownSize;
    if (known !== undefined) {
      // Once only: later calls ask the file, which another process may have changed.
      this.knownSize = undefined;
      return known;
    }
    try {
      return (await this.fh.stat()).size;
    } catch (e) {
      throw fromSystemError(e, { path: this.path, operation: 'stat' });
    }
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    let done = 0;
    if (this.noWait && into.length <= NOWAIT_MAX && into.length > 0) {
      const n = this.readFromMemory(offset, into);
      if (n === into.length || n === 0) return n; // all of it, or the end of the file
      if (n > 0) done = n; // the rest through the pool (it may also be the end of the file)
    }
    try {
      while (done < into.length) {
        const n = await preadOnce(this.fh.fd, into, done, into.length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      throw fromSystemError(e, { path: this.path, offset, length: into.length, operation: 'read' });
    }
    return done;
  }

  /** What readNoWait gives at once: bytes read (0 at end of file), or -1 when the pool must do it. */
  private readFromMemory(offset: number, into: Uint8Array): number {
    const readNoWait = nativeAddon()?.readNoWait;
    if (!readNoWait) {
      this.noWait = false;
      return -1;
    }
    const n = readNoWait(this.fh.fd, into, offset);
    if (n >= 0) return n;
    if (n === -ENOSYS || n === -EOPNOTSUPP || n === -EINVAL) this.noWait = false;
    // -EAGAIN (not all in memory), or an error the pool's read reports properly.
    return -1;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw readOnlyError({ path: this.path, offset, operation: 'write' });
    this.knownSize = undefined;
    let done = 0;
    try {
      while (done < data.length) {
        const n = await pwriteOnce(this.fh.fd, data, done, data.length - done, offset + done);
        if (n === 0) throw this.noProgress(offset + done);
        done += n;
      }
    } catch (e) {
      if (isBlockError(e)) throw e;
      throw fromSystemError(e, { path: this.path, offset, length: data.length, operation: 'write' });
    }
  }

  async writev(offset: number, parts: readonly Uint8Array[]): Promise<void> {
    if (this.readOnly) throw readOnlyError({ path: this.path, offset, operation: 'write' });
    this.knownSize = undefined;
    let rest = parts.filter((p) => p.length > 0);
    const length = rest.reduce((n, p) => n + p.length, 0);
    let at = offset;
    try {
      while (rest.length > 0) {
        let n = await pwritevOnce(this.fh.fd, rest, at);
        if (n === 0) throw this.noProgress(at);
        at += n;
        // A short write (rare: a signal, a full disk on the way to ENOSPC) goes on from where it stopped.
        while (rest.length > 0 && n >= rest[0].length) n -= rest.shift()!.length;
        if (n > 0) rest[0] = rest[0].subarray(n);
      }
    } catch (e) {
      if (isBlockError(e)) throw e;
      throw fromSystemError(e, { path: this.path, offset, length, operation: 'write' });
    }
  }

  /** A write the host took none of: an error, not a loop that never ends. */
  private noProgress(at: number): BlockError {
    return new BlockError('io', 'the host accepted none of a write', { path: this.path, offset: at, operation: 'write' });
  }

  async truncate(size: number): Promise<void> {
    if (this.readOnly) throw readOnlyError({ path: this.path, operation: 'truncate' });
    this.knownSize = undefined;
    this.holeless = undefined;
    try {
      await this.fh.truncate(size);
    } catch (e) {
      throw fromSystemError(e, { path: this.path, operation: 'truncate' });
    }
  }

  /**
   * fallocate PUNCH_HOLE | KEEP_SIZE on the open descriptor. Synchronous in
   * the addon: a metadata change of the file system, short next to the
   * reads that decide what to punch. Durable at the next flush (fdatasync).
   */
  private async punch(addon: NonNullable<ReturnType<typeof punchAddon>>, offset: number, length: number): Promise<void> {
    if (this.readOnly) throw readOnlyError({ path: this.path, offset, operation: 'punch hole' });
    if (length <= 0) return;
    this.holeless = undefined; // the file has holes now (see allocation)
    const r = addon.punchHole!(this.fd, offset, length);
    if (r === 0) return;
    if (r === -EOPNOTSUPP || r === -ENOSYS) {
      throw new BlockError('unsupported', `the file system under this file cannot punch holes (fallocate PUNCH_HOLE: ${r === -ENOSYS ? 'ENOSYS' : 'EOPNOTSUPP'}): no space can be given back here`, {
        path: this.path,
        offset,
        length,
        operation: 'punch hole',
      });
    }
    const code = Object.entries(osConstants.errno).find(([, v]) => v === -r)?.[0] ?? `errno ${-r}`;
    throw fromSystemError(Object.assign(new Error(`fallocate: ${code}`), { code }), { path: this.path, offset, length, operation: 'punch hole' });
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.noSync) return;
    try {
      await this.fh.datasync();
    } catch (e) {
      throw fromSystemError(e, { path: this.path, operation: 'flush' });
    }
  }

  async allocation(offset: number, length: number): Promise<HostRange[] | undefined> {
    // A file whose allocated blocks cover its size has no holes (most image
    // files: qemu-img and vdisk write every block they allocate): one fstat
    // instead of two lseeks per extent, and no addon to load. Calling a hole
    // data is always safe (the caller reads zeros there), so the verdict may
    // be wrong that way: blocks can over-count (preallocation past the end,
    // extent-tree blocks), and a write past the end leaves a hole behind it
    // while the verdict stands. It is asked again after a truncate.
    this.holeless ??= this.fh.stat().then(
      (st) => st.blocks * 512 >= st.size,
      () => false,
    );
    if (await this.holeless) return [{ offset, length, data: true }];
    const seek = lseek();
    if (!seek) return undefined;
    const fd = this.fh.fd;
    const end = offset + length;
    const out: HostRange[] = [];
    let pos = offset;
    try {
      while (pos < end) {
        let dataAt: number;
        try {
          dataAt = seek(fd, pos, SEEK_DATA);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENXIO') throw e;
          dataAt = end; // no data after pos
        }
        if (dataAt > pos) out.push({ offset: pos, length: Math.min(dataAt, end) - pos, data: false });
        if (dataAt >= end) break;
        const holeAt = seek(fd, dataAt, SEEK_HOLE);
        out.push({ offset: dataAt, length: Math.min(holeAt, end) - dataAt, data: true });
        pos = holeAt;
      }
    } catch {
      return undefined; // the file system cannot tell: treat everything as data
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.fh.close();
    } catch (e) {
      throw fromSystemError(e, { path: this.path, operation: 'close' });
    }
  }
}

function fileKind(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'a special file';
}

export const openFileStore = (path: string, options: OpenStoreOptions): Promise<Store> => FileStore.open(path, options);
