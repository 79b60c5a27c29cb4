import type { Socket } from 'node:net';
import { readSync } from 'node:fs';
import { sendAddon, type NativeAddon } from './native.js';

/**
 * Replies sent on a socket straight from files (the native addon's
 * sendReply: native/send.c), in the order they are queued.
 *
 * Why: a read reply made with pread and sent with send costs the server two
 * copies of every byte (file -> buffer -> socket) and, per request, a round
 * trip through libuv's thread pool; `nbdcopy` through `vdisk serve` spent
 * 40% of the server's time in those copies and 15% in the hand-offs
 * (BENCHMARKS.md, session 8). sendfile hands the page cache's pages to the
 * socket instead: no copy in the server, no thread. It can wait for the
 * disk, though, on the main thread; so a reply is sent this way only when
 * every page it needs is in the page cache (`cached`, Linux cachestat), and
 * otherwise goes the old way (its pool read also brings the data in).
 *
 * The socket stays Node's: it reads requests, and its own writer is used
 * when the socket buffer is full — the next few bytes of the reply are
 * copied and written through it, and its callback, which comes once the
 * socket took them (libuv waited for it to be writable), sends the rest.
 * The descriptor is written directly only while Node's writer has nothing
 * queued, so the bytes on the wire stay in order.
 */
export class FileReplySender {
  private readonly queue: Item[] = [];
  /** socket.write calls not yet done: while any is, the descriptor is not written directly. */
  private writing = 0;
  private usable = true;
  /** Bytes of queued replies not yet handed to the kernel. */
  queuedBytes = 0;
  /** Runs once when nothing is queued or being written (set by a caller waiting to close). */
  onIdle: (() => void) | undefined;

  private constructor(
    private readonly addon: NativeAddon,
    private readonly socket: Socket,
    private readonly fd: number,
  ) {
    // Replies written by Node before this sender took over must reach the
    // kernel before anything is written directly: an empty write is done
    // only once those are.
    if (socket.writableLength > 0) this.writeThrough(EMPTY_BYTES);
  }

  /** A sender for this socket, or undefined where replies cannot be sent this way (no addon, not Linux, no descriptor). */
  static open(socket: Socket): FileReplySender | undefined {
    const addon = sendAddon();
    const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    if (!addon || typeof fd !== 'number' || fd < 0) return undefined;
    // A unix socket's send buffer is ~208 KiB by default (net.core.wmem_default):
    // less than one nbdcopy request. With 1 MiB, a reply rarely stops half way
    // (each stop costs a copied page and a trip through Node's writer; measured:
    // a sixth less server CPU for nbdcopy). Kernel memory, capped by
    // net.core.wmem_max; mostly references to the page cache. TCP's buffer
    // is left to the kernel's autotuning, which setting it would turn off.
    if (isUnixSocket(socket)) addon.setSendBuffer?.(fd, SEND_BUFFER);
    return new FileReplySender(addon, socket, fd);
  }

  /**
   * Whether the file bytes of `segments` (triples: descriptor or -1 for
   * zeros, file offset, length) are all in the page cache, so sending them
   * does not wait for the disk. False from then on where the host cannot
   * tell (no cachestat before Linux 6.5).
   */
  cached(segments: Float64Array): boolean {
    if (!this.usable) return false;
    const r = this.addon.filesCached!(segments);
    if (r < 0) this.usable = false;
    return r === 1;
  }

  /** Queue a reply: `head`, then the segments' bytes; `done` runs once the kernel has all of it, or it is dropped. */
  send(head: Uint8Array, segments: Float64Array | undefined, done?: () => void): void {
    let total = head.length;
    if (segments) for (let i = 2; i < segments.length; i += 3) total += segments[i];
    this.queue.push({ head, segments: segments ?? NO_SEGMENTS, total, sent: 0, done });
    this.queuedBytes += total;
    if (this.queue.length === 1) this.pump();
  }

  /** Nothing queued and nothing being written. */
  get idle(): boolean {
    return this.queue.length === 0 && this.writing === 0;
  }

  /** The socket is gone: drop what is queued (each `done` still runs). */
  clear(): void {
    const items = this.queue.splice(0);
    this.queuedBytes = 0;
    for (const it of items) it.done?.();
    this.checkIdle();
  }

  private pump(): void {
    while (this.queue.length > 0 && this.writing === 0) {
      if (this.socket.destroyed) {
        this.clear();
        return;
      }
      const it = this.queue[0];
      const r = this.addon.sendReply!(this.fd, it.head, it.segments, it.sent);
      if (r < 0) {
        // EPIPE, ECONNRESET...: the client is gone. Closing the socket drops the queue (the connection's close handler).
        this.socket.destroy(Object.assign(new Error(`send: errno ${-r}`), { errno: -r }));
        this.clear();
        return;
      }
      this.queuedBytes -= r - it.sent;
      it.sent = r;
      if (r === it.total) {
        this.queue.shift();
        it.done?.();
        continue;
      }
      // The socket buffer is full: Node's writer takes the next bytes and calls back once the socket is writable.
      const chunk = this.nextBytes(it, NUDGE);
      it.sent += chunk.length;
      this.queuedBytes -= chunk.length;
      this.writeThrough(chunk);
      return;
    }
    this.checkIdle();
  }

  private writeThrough(chunk: Uint8Array): void {
    this.writing++;
    this.socket.write(chunk, () => {
      this.writing--;
      this.pump();
    });
  }

  private checkIdle(): void {
    if (!this.idle || !this.onIdle) return;
    const f = this.onIdle;
    this.onIdle = undefined;
    f();
  }

  /** A copy of up to `max` bytes of the reply from where it stopped (in its head, a zero run or a file). */
  private nextBytes(it: Item, max: number): Uint8Array {
    if (it.sent < it.head.length) return it.head.subarray(it.sent, Math.min(it.head.length, it.sent + max));
    const s = it.segments;
    let pos = it.head.length;
    for (let i = 0; i < s.length; i += 3) {
      const len = s[i + 2];
      if (it.sent < pos + len) {
        const into = it.sent - pos;
        const n = Math.min(max, len - into);
        const b = Buffer.alloc(n);
        if (s[i] >= 0) readFile(this.addon, s[i], b, s[i + 1] + into);
        return b;
      }
      pos += len;
    }
    return EMPTY_BYTES; // not reached: the reply is not complete, so some segment holds its next byte
  }
}

interface Item {
  head: Uint8Array;
  segments: Float64Array;
  total: number;
  sent: number;
  done?: () => void;
}

/** SO_SNDBUF asked for a unix socket's replies (see open). */
const SEND_BUFFER = 1 << 20;

function isUnixSocket(socket: Socket): boolean {
  return (socket as unknown as { _handle?: object })._handle?.constructor.name === 'Pipe';
}

/** Bytes copied through Node's writer when the socket buffer is full (one page: the rest still goes by sendfile). */
const NUDGE = 4096;
const NO_SEGMENTS = new Float64Array(0);
const EMPTY_BYTES = new Uint8Array(0);

/**
 * Fill `into` from the file at `position` (zeros past its end), on this
 * thread: the page cache held these bytes a moment ago, so this is a copy,
 * not a wait for the disk (readSync only in the rare case it no longer does).
 */
function readFile(addon: NativeAddon, fd: number, into: Buffer, position: number): void {
  let done = addon.readNoWait(fd, into, position);
  if (done < 0) done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) break; // end of file: the rest stays zero
    done += n;
  }
}
