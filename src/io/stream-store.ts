import { BlockError } from '../core/errors.js';
import { readOnlyError } from '../core/request.js';
import type { Store } from './store.js';


/**
 * What StreamStore uses of a node:stream Readable (process.stdin), spelled
 * out so that the library's declarations need no @types/node.
 */
export interface ReadableByteStream {
  on(event: 'data', listener: (chunk: Uint8Array) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  off(event: 'data', listener: (chunk: Uint8Array) => void): unknown;
  off(event: 'end', listener: () => void): unknown;
  off(event: 'error', listener: (err: Error) => void): unknown;
  pause(): unknown;
  resume(): unknown;
  destroy(): unknown;
}
/** Bytes kept behind the furthest point read: what readers running a little out of order (convert's lanes) need. */
const DEFAULT_CAPACITY = 64 << 20;
/**
 * The length a stream of unknown length reports: past any real image
 * (2^52, a multiple of every block size). A read that reaches it — a probe
 * or an open looking at "the last bytes of the file" — gets nothing (a
 * short read: the file seems to end there), never the whole stream
 * consumed to find its end: a dynamic VHD then opens from its footer copy
 * at offset 0, and a format that must have its end (a fixed VHD) fails.
 */
const UNKNOWN_LENGTH = 2 ** 52;
const TAIL = 64 * 1024;

interface Waiter {
  offset: number;
  into: Uint8Array;
  resolve(n: number): void;
  reject(e: unknown): void;
}

/**
 * A read-only Store over a stream (stdin): reads are served at increasing
 * offsets from a bounded buffer of the bytes that went by last. A read
 * ahead of the stream waits for it (bytes skipped over are dropped once
 * they fall out of the buffer); a read of bytes that have already fallen
 * out is an error naming both offsets — such an image cannot be read from
 * a stream. With a declared `length` (raw with --size), a stream that ends
 * early or holds more bytes is an error too; of unknown length, a read the
 * stream's end cuts short is an error (a truncated image), except one from
 * offset 0 (a probe's head).
 */
export class StreamStore implements Store {
  readonly readOnly = true;
  private chunks: { start: number; data: Uint8Array }[] = [];
  /** Bytes received so far (the stream's position). */
  private pos = 0;
  /** Oldest byte still buffered. */
  private base = 0;
  private ended = false;
  private failure: BlockError | undefined;
  private waiters: Waiter[] = [];
  private closed = false;
  private drainer: { resolve(): void; reject(e: unknown): void } | undefined;
  private readonly onData = (c: Uint8Array) => this.received(new Uint8Array(c.buffer, c.byteOffset, c.length));
  private readonly onEnd = () => {
    this.ended = true;
    this.serve();
  };
  private readonly onError = (e: unknown) => {
    this.fail(new BlockError('io', `${this.name}: reading failed (${(e as Error)?.message ?? String(e)})`, { path: this.path, operation: 'read' }, { cause: e }));
  };

  constructor(
    private readonly stream: ReadableByteStream,
    readonly path: string,
    private readonly options: { length?: number; capacity?: number; name?: string } = {},
  ) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('error', this.onError);
    stream.pause();
  }

  private get name(): string {
    return this.options.name ?? this.path;
  }

  private get capacity(): number {
    return this.options.capacity ?? DEFAULT_CAPACITY;
  }

  async size(): Promise<number> {
    return this.options.length ?? UNKNOWN_LENGTH;
  }

  read(offset: number, into: Uint8Array): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    const limit = this.options.length ?? UNKNOWN_LENGTH;
    const n = Math.max(0, Math.min(into.length, limit - offset));
    if (this.options.length === undefined && offset + into.length > UNKNOWN_LENGTH - TAIL) return Promise.resolve(0);
    if (n === 0) return Promise.resolve(0);
    if (offset < this.base) {
      return Promise.reject(
        new BlockError(
          'unsupported',
          `${this.name}: bytes at offset ${offset} were needed after offset ${this.base} had passed (a stream keeps only its last ${this.capacity >> 20} MiB); a stream must hold its blocks in file order`,
          { path: this.path, offset, operation: 'read' },
        ),
      );
    }
    return new Promise<number>((resolve, reject) => {
      this.waiters.push({ offset, into: into.subarray(0, n), resolve, reject });
      this.serve();
    });
  }

  private received(data: Uint8Array): void {
    // The chunk belongs to the stream, which may reuse it: keep a copy.
    this.chunks.push({ start: this.pos, data: data.slice() });
    this.pos += data.length;
    const declared = this.options.length;
    if (declared !== undefined && this.pos > declared) {
      this.fail(new BlockError('invalid-argument', `${this.name}: the stream holds more than the ${declared} bytes --size gives`, { path: this.path }));
      return;
    }
    this.serve();
  }

  private fail(e: BlockError): void {
    if (this.failure) return;
    this.failure = e;
    for (const w of this.waiters) w.reject(e);
    this.waiters = [];
    this.drainer?.reject(e);
    this.drainer = undefined;
    this.stream.pause();
  }

  /** Answer every read the buffer can, drop what no one can ask for any more, and pull or pause the stream. */
  private serve(): void {
    if (this.failure) return;
    const declared = this.options.length;
    this.waiters = this.waiters.filter((w) => {
      const end = w.offset + w.into.length;
      // With a declared length, the read reaching it waits for the stream's end: trailing bytes are an error, not silently dropped.
      const complete = this.pos >= end && !(declared !== undefined && end === declared && !this.ended);
      if (!complete && !this.ended) return true;
      if (w.offset < this.base) {
        w.reject(new BlockError('unsupported', `${this.name}: bytes at offset ${w.offset} fell out of the stream's buffer before they were read`, { path: this.path, offset: w.offset }));
        return false;
      }
      const got = Math.max(0, Math.min(end, this.pos) - w.offset);
      this.copy(w.offset, w.into.subarray(0, got));
      if (got < w.into.length && declared !== undefined) {
        w.reject(new BlockError('invalid-argument', `${this.name}: the stream ended after ${this.pos} bytes, but --size gives ${declared}`, { path: this.path, offset: this.pos }));
        return false;
      }
      // Of unknown length, only a read from the start may be cut by the end (a probe reads "up to" its head);
      // anything else the image needs past the end means the stream was cut short.
      if (got < w.into.length && w.offset > 0) {
        w.reject(new BlockError('corrupt', `${this.name}: the stream ended after ${this.pos} bytes, but the image needs bytes up to offset ${end} (the stream is truncated)`, { path: this.path, offset: this.pos }));
        return false;
      }
      w.resolve(got);
      return false;
    });
    // Keep `capacity` bytes behind the furthest point reached, and anything a waiting read still needs.
    const keepFrom = Math.min(this.pos - this.capacity, ...this.waiters.map((w) => w.offset));
    while (this.chunks.length && this.chunks[0].start + this.chunks[0].data.length <= keepFrom) this.chunks.shift();
    this.base = this.chunks.length ? this.chunks[0].start : this.pos;
    if (this.drainer && this.ended && !this.waiters.length) {
      this.drainer.resolve();
      this.drainer = undefined;
    }
    if ((this.waiters.length || this.drainer) && !this.ended) this.stream.resume();
    else this.stream.pause();
  }

  private copy(offset: number, into: Uint8Array): void {
    const end = offset + into.length;
    for (const c of this.chunks) {
      const a = Math.max(offset, c.start);
      const b = Math.min(end, c.start + c.data.length);
      if (a < b) into.set(c.data.subarray(a - c.start, b - c.start), a - offset);
    }
  }

  /**
   * Read the stream to its end, nothing kept but the buffer: its length and
   * its last `keep` bytes (fewer if it is shorter), for a check of how an
   * image ends (a VHD's footer) once everything before was read.
   */
  async drain(keep: number): Promise<{ length: number; tail: Uint8Array }> {
    if (this.failure) throw this.failure;
    if (!this.ended) {
      await new Promise<void>((resolve, reject) => {
        this.drainer = { resolve, reject };
        this.serve();
      });
    }
    const from = Math.max(this.base, this.pos - keep);
    const tail = new Uint8Array(this.pos - from);
    this.copy(from, tail);
    return { length: this.pos, tail };
  }

  async write(): Promise<void> {
    throw readOnlyError({ path: this.path, operation: 'write' });
  }
  async truncate(): Promise<void> {
    throw readOnlyError({ path: this.path, operation: 'truncate' });
  }
  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('error', this.onError);
    this.stream.pause();
    // Stdin left open would keep the process alive; nothing else reads it.
    this.stream.destroy();
  }
}
