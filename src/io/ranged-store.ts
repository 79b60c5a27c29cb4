import { BlockError, isBlockError } from '../core/errors.js';
import { readOnlyError } from '../core/request.js';
import type { Store } from './store.js';

/**
 * A read-only Store over a remote object read by byte ranges (HTTP range
 * GETs, S3 GetObject with Range). What the remote hosts share:
 *
 * - the object is cut into CHUNK-sized pieces, kept in a bounded cache
 *   (least recently used goes first), so the many small reads of a format's
 *   metadata (a VHD footer, a BAT, sector bitmaps) cost one request each
 *   piece, not one each read;
 * - neighbouring missing pieces are asked in one request of at most
 *   REQUEST bytes, and requests run at once over several connections (the
 *   host's agent bounds how many), so a big read is spread over them;
 * - read-ahead sized to the pattern: a read that starts near where the
 *   previous ones ended grows the window ahead (doubling up to AHEAD_MAX),
 *   a read elsewhere resets it — random access (NBD, `map`) fetches only
 *   what it asks, a copy streams;
 * - transient failures (a connection reset, a body cut short, 5xx) are
 *   retried with exponential backoff; what is left after the last try is a
 *   BlockError naming the object.
 */
const CHUNK = 512 * 1024;
const REQUEST = 4 << 20;
const AHEAD_MAX = 32 << 20;
/** Cache bound: 96 pieces of 512 KiB = 48 MiB (with read-ahead in flight, the most this store holds). */
const CACHE_CHUNKS = 96;
const TRIES = 5;

/** What a remote host gives a ranged store. */
export interface RangeSource {
  /** Fetch exactly bytes [offset, offset+length) of the object; a changed object, a missing one or a refusal is a BlockError; anything else thrown is retried. */
  fetch(offset: number, length: number): Promise<Uint8Array>;
  /** Release connections. */
  close?(): Promise<void>;
}

/** Whether an error is worth another try (a BlockError is final: the source already judged it). */
function transient(e: unknown): boolean {
  return !isBlockError(e) || e.context.transient === true;
}

export class RangedStore implements Store {
  readonly readOnly = true;
  private readonly cache = new Map<number, Promise<Uint8Array>>();
  /** End of the last read and how far ahead the next sequential read fetches. */
  private lastEnd = -1;
  private ahead = 0;
  private closed = false;

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
    // Near where the last reads ended (a copy's reads run several at once, so not exactly there): a stream.
    const near = this.lastEnd >= 0 && Math.abs(offset - this.lastEnd) <= REQUEST * 4;
    this.ahead = near ? Math.min(AHEAD_MAX, Math.max(this.ahead * 2, CHUNK * 2)) : 0;
    this.lastEnd = near ? Math.max(end, this.lastEnd) : end;
    const first = Math.floor(offset / CHUNK);
    const last = Math.floor((end - 1) / CHUNK);
    const lastAhead = Math.min(Math.floor((this.total - 1) / CHUNK), Math.floor((end - 1 + this.ahead) / CHUNK));
    this.fetchChunks(first, lastAhead);
    for (let c = first; c <= last; c++) {
      const data = await this.chunk(c);
      const from = Math.max(offset, c * CHUNK);
      const to = Math.min(end, c * CHUNK + data.length);
      into.set(data.subarray(from - c * CHUNK, to - c * CHUNK), from - offset);
    }
    return length;
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
      const whole = this.fetchWithRetry(offset, length);
      whole.catch(() => {}); // surfaces through the pieces' promises when read
      for (let i = 0; i < n; i++) {
        const piece = whole.then((b) => b.subarray(i * CHUNK, Math.min(b.length, (i + 1) * CHUNK)));
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
  }

  private async fetchWithRetry(offset: number, length: number): Promise<Uint8Array> {
    let lastError: unknown;
    for (let attempt = 0; attempt < TRIES; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, this.backoff * 2 ** (attempt - 1)));
      if (this.closed) break;
      try {
        const data = await this.source.fetch(offset, length);
        if (data.length !== length) throw new Error(`got ${data.length} of ${length} bytes`);
        return data;
      } catch (e) {
        lastError = e;
        if (!transient(e)) throw isBlockError(e) ? e.withContext({ path: this.path }) : e;
      }
    }
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
    await this.source.close?.();
  }
}
