import { BlockError, isBlockError } from '../core/errors.js';
import { readOnlyError } from '../core/request.js';
import type { Store } from './store.js';

/**
 * A read-only Store over a remote object read by byte ranges (HTTP range
 * GETs, S3 GetObject with Range). What the remote hosts share:
 *
 * - Random reads (a format's metadata: a VHD footer, a BAT, sector
 *   bitmaps; NBD; `map`) go through CHUNK-sized pieces kept in a bounded
 *   cache (least recently used goes first), so many small reads cost one
 *   request each piece; neighbouring missing pieces are asked together, at
 *   most REQUEST bytes a request.
 * - Reads that follow one another (a copy: convert's lanes read pieces in
 *   disk order, several at once, so each starts near where the last ended)
 *   switch to a stream: the object is fetched ahead of them in requests
 *   that grow from 1 MiB to STREAM_REQUEST (slow start, so opening an
 *   image fetches little it does not need), STREAM_AHEAD of them in flight
 *   at once over several connections. Each streamed range is held only
 *   until the reads have passed it (not copied into the piece cache), and
 *   its buffer is used again for the next one, so a copy of any size holds
 *   at most STREAM_AHEAD + 2 requests' worth (BOUND below).
 * - A read of STREAM_REQUEST bytes or more (a big buffer, nothing to gain
 *   from holding it) is fetched straight into the caller's buffer, in
 *   requests of STREAM_REQUEST bytes, all at once.
 * - Transient failures (a connection reset, a body cut short, 5xx) are
 *   retried with exponential backoff; what is left after the last try is a
 *   BlockError naming the object. The source checks every answer against
 *   the object's validators (ETag / Last-Modified), so a changed object is
 *   an error, never mixed data.
 *
 * Why these sizes (profile of an S3 → local convert of a 1 GiB half-full
 * VHDX on Ceph RGW, BENCHMARKS.md "Remote images"): every request costs a
 * fixed ~3 ms of CPU in this process (the SDK's middleware stack, signing,
 * writing the request over loopback), so 4 MiB requests spent more CPU on
 * requests than on moving bytes; fresh buffers for every answer spent
 * another fifth in the garbage collector and in page faults.
 */
const CHUNK = 512 * 1024;
const REQUEST = 4 << 20;
/** Cache bound for random reads: 64 pieces of 512 KiB = 32 MiB. */
const CACHE_CHUNKS = 64;
/** A stream's largest request, and how many run ahead of the reads at once. */
export const STREAM_REQUEST = 8 << 20;
const STREAM_AHEAD = 4;
const STREAM_FIRST = 1 << 20;
/** How far from the last read's end a read still counts as the stream's next (reads run several at once, out of order). */
const NEAR = 16 << 20;
/** How far behind a stream read a span is still kept for a read a little out of order. */
const BEHIND = 2 << 20;
const TRIES = 5;
/**
 * The most this store holds (buffers of the piece cache and the stream) in
 * bytes: 32 MiB + 6 × 8 MiB = 80 MiB. Reads straight into the caller's
 * buffers hold nothing of their own.
 */
export const BOUND = CACHE_CHUNKS * CHUNK + (STREAM_AHEAD + 2) * STREAM_REQUEST;

/** What a remote host gives a ranged store. */
export interface RangeSource {
  /**
   * Fetch exactly bytes [offset, offset+into.length) of the object into
   * `into`; a changed object, a missing one or a refusal is a BlockError;
   * anything else thrown is retried.
   */
  fetch(offset: number, into: Uint8Array): Promise<void>;
  /** Release connections. */
  close?(): Promise<void>;
}

/** Whether an error is worth another try (a BlockError is final: the source already judged it). */
function transient(e: unknown): boolean {
  return !isBlockError(e) || e.context.transient === true;
}

/** A streamed range: fetched ahead, held until the reads pass it. */
interface Span {
  offset: number;
  end: number;
  buf: Uint8Array;
  done: Promise<void>;
  /** Bytes of it reads have taken (it goes when all have been). */
  taken: number;
  /** Reads copying out of it now (its buffer is not reused before they finish). */
  users: number;
  dropped: boolean;
  failed: boolean;
}

/** Counts for tests and the bench: requests sent, bytes asked, the most held at once. */
export interface RangedStats {
  requests: number;
  bytes: number;
  largest: number;
  peakHeld: number;
}

export class RangedStore implements Store {
  readonly readOnly = true;
  /** A copy that reads pieces this big has them fetched straight into its buffers, STREAM_REQUEST bytes a request. */
  readonly readSize = STREAM_REQUEST;
  private readonly cache = new Map<number, Promise<Uint8Array>>();
  /** End of the last read, and the bytes of the reads in a row near each other up to it (a stream when enough). */
  private lastEnd = -1;
  private streak = 0;
  /** Streamed spans in object order; where the stream has fetched up to, and its next request's size. */
  private spans: Span[] = [];
  private frontier = 0;
  private nextSize = STREAM_FIRST;
  /** Buffers of STREAM_REQUEST bytes of spans gone, for the next ones. */
  private readonly spare: Uint8Array[] = [];
  private held = 0;
  private closed = false;
  readonly stats: RangedStats = { requests: 0, bytes: 0, largest: 0, peakHeld: 0 };

  constructor(
    readonly path: string,
    private readonly total: number,
    private readonly source: RangeSource,
    /** Backoff base for retries (ms); tests make it small. */
    private readonly backoff = 100,
  ) {}

  async size(): Promise<number> {
    return this.total;
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    if (this.closed) throw new BlockError('invalid-argument', 'store is closed', { path: this.path });
    if (offset >= this.total || into.length === 0) return 0;
    const length = Math.min(into.length, this.total - offset);
    const end = offset + length;
    const near = this.lastEnd >= 0 && Math.abs(offset - this.lastEnd) <= NEAR;
    const before = near ? this.streak : 0;
    this.streak = before + length;
    this.lastEnd = near ? Math.max(end, this.lastEnd) : end;
    if (!near) this.nextSize = STREAM_FIRST;
    const out = into.subarray(0, length);
    if (length >= STREAM_REQUEST) await this.direct(offset, out);
    // Reads near each other of STREAM_FIRST bytes together make a stream
    // for the reads after them: a copy's pieces soon do, an image's open (a
    // few small structures) not.
    else if (before >= STREAM_FIRST) await this.streamed(offset, out);
    else await this.pieces(offset, out);
    return length;
  }

  /** A big read: straight into the caller's buffer, in requests of STREAM_REQUEST bytes at once. */
  private async direct(offset: number, into: Uint8Array): Promise<void> {
    const parts: Promise<void>[] = [];
    for (let o = 0; o < into.length; o += STREAM_REQUEST) parts.push(this.fetchWithRetry(offset + o, into.subarray(o, Math.min(into.length, o + STREAM_REQUEST))));
    const results = await Promise.allSettled(parts);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  /** Through the stream's spans (started as needed, STREAM_AHEAD ahead of this read); bytes of spans already gone through the pieces. */
  private async streamed(offset: number, into: Uint8Array): Promise<void> {
    const end = offset + into.length;
    // A read behind the stream's first span or beyond its frontier starts the stream again there.
    if (offset > this.frontier || (this.spans.length > 0 && end <= this.spans[0].offset) || (this.spans.length === 0 && offset < this.frontier - NEAR)) {
      this.restart(offset);
    }
    // Spans wholly behind this read are read no more: a stream's reads are
    // asked in order (several run at once, but each takes its spans when
    // asked), so only a read a little out of order (BEHIND) could want one.
    while (this.spans.length && this.spans[0].end + BEHIND <= offset) this.drop(this.spans[0]);
    this.startSpans(end);
    const mine = this.spans.filter((s) => s.offset < end && s.end > offset);
    for (const s of mine) s.users++;
    try {
      let covered = 0;
      for (const s of mine) {
        await s.done;
        const from = Math.max(offset, s.offset);
        const to = Math.min(end, s.end);
        into.set(s.buf.subarray(from - s.offset, to - s.offset), from - offset);
        covered += to - from;
        s.taken += to - from;
      }
      // What no span holds (dropped before this late read came, or before the stream started here).
      if (covered < into.length) await this.fill(offset, into, mine);
    } finally {
      for (const s of mine) {
        s.users--;
        if (s.taken >= s.end - s.offset || s.failed) this.drop(s);
        else this.recycle(s);
      }
    }
  }

  /** The parts of [offset, offset+into.length) that `spans` (sorted) do not cover, read through the pieces. */
  private async fill(offset: number, into: Uint8Array, spans: Span[]): Promise<void> {
    let at = offset;
    const end = offset + into.length;
    const gaps: Promise<void>[] = [];
    for (const s of [...spans, { offset: end, end }]) {
      if (s.offset > at) gaps.push(this.pieces(at, into.subarray(at - offset, Math.min(end, s.offset) - offset)));
      at = Math.max(at, s.end);
    }
    await Promise.all(gaps);
  }

  /** The stream goes on from `offset` (its requests keep their size: the reads are still a stream, only elsewhere in the object). */
  private restart(offset: number): void {
    for (const s of [...this.spans]) this.drop(s);
    this.frontier = offset;
  }

  /** Start spans until the frontier is STREAM_AHEAD requests past `end` (at most that many in flight beyond it). */
  private startSpans(end: number): void {
    while (this.frontier < this.total && (this.frontier < end || this.spans.filter((s) => s.end > end).length < STREAM_AHEAD)) {
      const offset = this.frontier;
      const length = Math.min(this.nextSize, this.total - offset);
      const reuse = length === STREAM_REQUEST && this.spare.length > 0;
      const buf = reuse ? this.spare.pop()! : new Uint8Array(length);
      const span: Span = { offset, end: offset + length, buf, done: Promise.resolve(), taken: 0, users: 0, dropped: false, failed: false };
      span.done = this.fetchWithRetry(offset, buf);
      span.done.catch(() => (span.failed = true));
      this.spans.push(span);
      this.hold(reuse ? 0 : length);
      this.frontier += length;
      this.nextSize = Math.min(STREAM_REQUEST, this.nextSize * 2);
    }
  }

  /** A span is no longer read: out of the list, its buffer kept for the next span once no read copies from it and its request has settled. */
  private drop(s: Span): void {
    if (!s.dropped) {
      s.dropped = true;
      this.spans = this.spans.filter((x) => x !== s);
    }
    this.recycle(s);
  }

  private recycle(s: Span): void {
    if (!s.dropped || s.users > 0 || s.buf.length === 0) return;
    const buf = s.buf;
    s.buf = new Uint8Array(0);
    // Its request may still be writing into the buffer: reused only once it has settled.
    void s.done
      .catch(() => {})
      .then(() => {
        this.held -= buf.length;
        if (buf.length === STREAM_REQUEST && this.spare.length < STREAM_AHEAD + 2 && !this.closed) {
          this.spare.push(buf);
          this.held += buf.length;
        }
      });
  }

  /** Count `n` more bytes of buffers (spare ones are counted: a reused one moves from spare to a span). */
  private hold(n: number): void {
    this.held += n;
    this.stats.peakHeld = Math.max(this.stats.peakHeld, this.held + this.cache.size * CHUNK);
  }

  /** Random reads: through the piece cache. */
  private async pieces(offset: number, into: Uint8Array): Promise<void> {
    const end = offset + into.length;
    const first = Math.floor(offset / CHUNK);
    const last = Math.floor((end - 1) / CHUNK);
    this.fetchChunks(first, last);
    for (let c = first; c <= last; c++) {
      const data = await this.chunk(c);
      const from = Math.max(offset, c * CHUNK);
      const to = Math.min(end, c * CHUNK + data.length);
      into.set(data.subarray(from - c * CHUNK, to - c * CHUNK), from - offset);
    }
  }

  /** A cached piece (fetching it if it was evicted meanwhile), marked as just used. */
  private chunk(c: number): Promise<Uint8Array> {
    let p = this.cache.get(c);
    if (!p) {
      this.fetchChunks(c, c);
      p = this.cache.get(c)!;
    } else {
      this.cache.delete(c);
      this.cache.set(c, p);
    }
    return p;
  }

  /** Start fetching the missing pieces in [first, last], neighbours together, REQUEST bytes a request at most. */
  private fetchChunks(first: number, last: number): void {
    let c = first;
    while (c <= last) {
      if (this.cache.has(c)) {
        c++;
        continue;
      }
      let n = 1;
      while (c + n <= last && n * CHUNK < REQUEST && !this.cache.has(c + n)) n++;
      const offset = c * CHUNK;
      const length = Math.min(n * CHUNK, this.total - offset);
      const buf = new Uint8Array(length);
      const whole = this.fetchWithRetry(offset, buf);
      whole.catch(() => {}); // surfaces through the pieces' promises when read
      for (let i = 0; i < n; i++) {
        const piece = whole.then(() => buf.subarray(i * CHUNK, Math.min(buf.length, (i + 1) * CHUNK)));
        piece.catch(() => {});
        this.cache.set(c + i, piece);
        // A failed piece is not kept: the next read asks again.
        piece.catch(() => {
          if (this.cache.get(c + i) === piece) this.cache.delete(c + i);
        });
      }
      c += n;
    }
    while (this.cache.size > CACHE_CHUNKS) this.cache.delete(this.cache.keys().next().value!);
    this.hold(0);
  }

  private async fetchWithRetry(offset: number, into: Uint8Array): Promise<void> {
    const length = into.length;
    this.stats.requests++;
    this.stats.bytes += length;
    this.stats.largest = Math.max(this.stats.largest, length);
    let lastError: unknown;
    for (let attempt = 0; attempt < TRIES; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, this.backoff * 2 ** (attempt - 1)));
      if (this.closed) break;
      try {
        await this.source.fetch(offset, into);
        return;
      } catch (e) {
        lastError = e;
        if (!transient(e)) throw isBlockError(e) ? e.withContext({ path: this.path }) : e;
      }
    }
    if (this.closed && lastError === undefined) throw new BlockError('invalid-argument', 'store is closed', { path: this.path });
    if (isBlockError(lastError)) throw lastError.withContext({ path: this.path, offset, length });
    const why = lastError instanceof Error ? lastError.message : String(lastError);
    throw new BlockError('io', `reading bytes ${offset}-${offset + length - 1} failed after ${TRIES} tries: ${why}`, { path: this.path, offset, length, operation: 'read' }, { cause: lastError });
  }

  async write(offset: number): Promise<void> {
    throw readOnlyError({ path: this.path, offset, operation: 'write' });
  }

  async truncate(): Promise<void> {
    throw readOnlyError({ path: this.path, operation: 'truncate' });
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cache.clear();
    this.spans = [];
    this.spare.length = 0;
    await this.source.close?.();
  }
}
