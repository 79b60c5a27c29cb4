import {
  CMD_WRITE,
  DEFAULT_MAX_BLOCK,
  IHAVEOPT,
  OPTION_HEADER_SIZE,
  REQUEST_MAGIC,
  REQUEST_SIZE,
} from './protocol.js';

/**
 * Incremental decoder of what an NBD client sends. Bytes arrive in chunks cut
 * anywhere (TCP gives no frame boundaries); `push` queues them and `next`
 * returns one whole frame at a time, or undefined until enough bytes are
 * there. Pulling frames one by one lets the connection switch the mode between
 * two frames (options → requests after NBD_OPT_GO) and stop pulling while it
 * is busy (backpressure), without the parser running ahead.
 *
 * Memory stays bounded: an option's data is held only up to `maxOptionData`
 * bytes and a write payload only up to `maxPayload`; longer ones are skipped
 * as they stream past and reported as too big.
 */

export type ParserMode = 'client-flags' | 'option' | 'request';

export interface ClientFlagsFrame {
  type: 'client-flags';
  flags: number;
}

export interface OptionFrame {
  type: 'option';
  option: number;
  /** The option's data; undefined when it was longer than maxOptionData and was skipped. */
  data: Buffer | undefined;
  /** The length the client declared. */
  length: number;
}

export interface RequestFrame {
  type: 'request';
  flags: number;
  command: number;
  /** The client's 64-bit cookie (handle), echoed unchanged in the reply. */
  cookieHi: number;
  cookieLo: number;
  /** Offset in bytes; not a safe integer when the client sent more than 2^53 (then out of range anyway). */
  offset: number;
  length: number;
  /** NBD_CMD_WRITE data; undefined for other commands and for writes longer than maxPayload (skipped). */
  payload: Buffer | undefined;
}

export type ClientFrame = ClientFlagsFrame | OptionFrame | RequestFrame;

/** The client broke the framing (bad magic): the connection cannot continue. */
export class NbdProtocolError extends Error {
  override readonly name = 'NbdProtocolError';
}

export interface ParserOptions {
  /** Longest option data kept (longer is skipped and reported with data undefined). Default 64 KiB. */
  maxOptionData?: number;
  /** Longest write payload kept (longer is skipped). Default 32 MiB. */
  maxPayload?: number;
  /**
   * Asked before a write payload of `length` bytes is kept: false leaves the
   * payload unread in the queue (and `next` returns undefined, with
   * `awaitingAdmission` set) until a later `next` is admitted. This is how the
   * server counts payloads against its memory budget before holding them.
   */
  admit?: (length: number) => boolean;
}

/** A queue of received chunks, consumed from the front without copying when it can. */
class ByteQueue {
  private chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private head = 0;
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** Look at byte i (i < length) without consuming. */
  peekU8(i: number): number {
    let at = this.head + i;
    for (const c of this.chunks) {
      if (at < c.length) return c[at];
      at -= c.length;
    }
    throw new RangeError('peek past the end of the queue');
  }

  /** Consume exactly n bytes (n <= length): a view of the chunk when they lie in one, else one copy. */
  take(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** Copy up to n bytes into target[pos..]; returns the count copied. */
  copyInto(target: Buffer, pos: number, n: number): number {
    let done = 0;
    while (done < n && this.chunks.length > 0) {
      const c = this.chunks[0];
      const k = Math.min(n - done, c.length - this.head);
      c.copy(target, pos + done, this.head, this.head + k);
      done += k;
      this.advance(k);
    }
    return done;
  }

  /** Drop up to n bytes; returns the count dropped. */
  skip(n: number): number {
    let done = 0;
    while (done < n && this.chunks.length > 0) {
      const k = Math.min(n - done, this.chunks[0].length - this.head);
      done += k;
      this.advance(k);
    }
    return done;
  }

  private advance(k: number): void {
    this.head += k;
    this.length -= k;
    if (this.head === this.chunks[0].length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}

export class NbdParser {
  mode: ParserMode = 'client-flags';
  private readonly queue = new ByteQueue();
  private readonly maxOptionData: number;
  private readonly maxPayload: number;
  /** A frame whose header is decoded while its data is still streaming in (or being skipped). */
  private partial: { frame: OptionFrame | RequestFrame; buffer?: Buffer; filled: number; skip: number; admitted: boolean } | undefined;
  private readonly admit: (length: number) => boolean;

  constructor(options: ParserOptions = {}) {
    this.maxOptionData = options.maxOptionData ?? 64 * 1024;
    this.maxPayload = options.maxPayload ?? DEFAULT_MAX_BLOCK;
    this.admit = options.admit ?? (() => true);
  }

  /** A write's header is decoded and its payload waits for `admit` to say yes. */
  get awaitingAdmission(): boolean {
    return this.partial !== undefined && !this.partial.admitted;
  }

  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  /** Bytes received and not yet returned as frames (including a partial frame's data). */
  get buffered(): number {
    return this.queue.length + (this.partial?.filled ?? 0);
  }

  /** The next whole frame, or undefined when more bytes are needed. Throws NbdProtocolError on broken framing. */
  next(): ClientFrame | undefined {
    if (this.partial) return this.continuePartial();
    const q = this.queue;
    switch (this.mode) {
      case 'client-flags': {
        if (q.length < 4) return undefined;
        return { type: 'client-flags', flags: q.take(4).readUInt32BE(0) };
      }
      case 'option': {
        if (q.length < OPTION_HEADER_SIZE) return undefined;
        // Check the magic as soon as its bytes are here, not only once the whole header is.
        for (let i = 0; i < 8; i++) {
          if (q.peekU8(i) !== IHAVEOPT[i]) throw new NbdProtocolError('option does not start with IHAVEOPT');
        }
        const h = q.take(OPTION_HEADER_SIZE);
        const option = h.readUInt32BE(8);
        const length = h.readUInt32BE(12);
        const frame: OptionFrame = { type: 'option', option, data: undefined, length };
        if (length > this.maxOptionData) this.partial = { frame, filled: 0, skip: length, admitted: true };
        else this.partial = { frame, filled: 0, skip: 0, admitted: true };
        return this.continuePartial();
      }
      case 'request': {
        if (q.length < REQUEST_SIZE) return undefined;
        const h = q.take(REQUEST_SIZE);
        if (h.readUInt32BE(0) !== REQUEST_MAGIC) throw new NbdProtocolError(`bad request magic 0x${h.readUInt32BE(0).toString(16)}`);
        const frame: RequestFrame = {
          type: 'request',
          flags: h.readUInt16BE(4),
          command: h.readUInt16BE(6),
          cookieHi: h.readUInt32BE(8),
          cookieLo: h.readUInt32BE(12),
          offset: h.readUInt32BE(16) * 0x1_0000_0000 + h.readUInt32BE(20),
          length: h.readUInt32BE(24),
          payload: undefined,
        };
        // Only NBD_CMD_WRITE carries data (proto.md "Request message").
        if (frame.command !== CMD_WRITE || frame.length === 0) {
          if (frame.command === CMD_WRITE) frame.payload = Buffer.alloc(0);
          return frame;
        }
        if (frame.length > this.maxPayload) this.partial = { frame, filled: 0, skip: frame.length, admitted: true };
        else this.partial = { frame, filled: 0, skip: 0, admitted: false };
        return this.continuePartial();
      }
    }
  }

  private continuePartial(): ClientFrame | undefined {
    const p = this.partial!;
    const q = this.queue;
    if (!p.admitted) {
      if (!this.admit(p.frame.length)) return undefined;
      p.admitted = true;
    }
    if (p.skip > 0) {
      p.skip -= q.skip(p.skip);
      if (p.skip > 0) return undefined;
      this.partial = undefined;
      return p.frame;
    }
    const length = p.frame.length;
    if (!p.buffer) {
      // Whole data already here: hand out a view of the received chunk, no copy.
      if (q.length >= length) {
        this.partial = undefined;
        return this.complete(p.frame, q.take(length));
      }
      if (q.length === 0) return undefined;
      p.buffer = Buffer.allocUnsafe(length);
    }
    p.filled += q.copyInto(p.buffer, p.filled, length - p.filled);
    if (p.filled < length) return undefined;
    this.partial = undefined;
    return this.complete(p.frame, p.buffer);
  }

  private complete(frame: OptionFrame | RequestFrame, data: Buffer): ClientFrame {
    if (frame.type === 'option') frame.data = data;
    else frame.payload = data;
    return frame;
  }
}
