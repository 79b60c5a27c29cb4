import type { Socket } from 'node:net';
import { createRequire } from 'node:module';

/**
 * Range GETs over plain HTTP/1.1 keep-alive connections, the body read
 * straight into the caller's buffer: the data path of the HTTP host
 * (io/http-host.ts) for `http:` URLs, and of S3 GetObject on an `http:`
 * endpoint (io/s3-fill.ts). Everything else — the first request
 * of an open (redirects, the validators, whether ranges work), `https:`,
 * and any answer that is not a plain `206` with a Content-Length of the
 * size asked — goes through node:http, which says what went wrong.
 *
 * Why not node:http for the data too: it costs twice the CPU of moving the
 * bytes. Its parser copies every body piece into a new Buffer, after the
 * socket has read each into another new 64 KiB one, and each piece then
 * travels through a Readable's events; at a GiB that is half a million
 * allocations and page faults and most of a core-second (perf: a 520 MiB
 * download in 8 MiB ranges, 4 at once, took 0.9 s of CPU through node:http
 * against 0.43 s here; curl 0.6 s). A socket made with `onread` reads into
 * one fixed buffer of its own instead, and the body is copied once, from
 * that buffer into the caller's.
 *
 * The answers this reads are the simplest HTTP/1.1 has: a status line,
 * headers up to an empty line, then exactly Content-Length bytes (RFC 9112
 * §6.3). A request is sent on a connection only when the previous answer
 * on it has been read whole (no pipelining), so a byte beyond the body is
 * a broken server and the connection is dropped.
 */
const READ_BUFFER = 256 * 1024;
const MAX_HEAD = 64 * 1024;

export interface RangeAnswer {
  status: number;
  /** Header names in lower case; a repeated header's values joined with ', '. */
  headers: Record<string, string>;
  /** Whether the body was read into the buffer (a 206 with Content-Length equal to its length); if not, the connection was dropped unread. */
  filled: boolean;
}

/** A failure of the connection (refused, reset, closed mid-answer, timed out): worth another try. */
export class ConnectionError extends Error {
  constructor(
    message: string,
    /** Body bytes received before the failure, when the body had started. */
    readonly got?: number,
  ) {
    super(message);
  }
}

interface Exchange {
  into: Uint8Array;
  resolve: (a: RangeAnswer) => void;
  reject: (e: Error) => void;
  head: Buffer[];
  headBytes: number;
  answer?: RangeAnswer;
  /** Body length (Content-Length), once the head has been read and the body is being taken. */
  length: number;
  got: number;
  /** The server closes the connection after this answer. */
  closes?: boolean;
}

class Connection {
  readonly socket: Socket;
  current: Exchange | undefined;
  broken = false;

  constructor(host: string, port: number, timeoutMs: number, onGone: (c: Connection) => void) {
    const net = createRequire(import.meta.url)('node:net') as typeof import('node:net');
    this.socket = net.connect({
      host,
      port,
      noDelay: true,
      onread: { buffer: Buffer.allocUnsafe(READ_BUFFER), callback: (n: number, buf: Uint8Array) => this.onRead(buf.subarray(0, n)) },
    });
    this.socket.setTimeout(timeoutMs, () => this.fail(new ConnectionError(`no answer within ${timeoutMs / 1000} s`), `sent nothing for ${timeoutMs / 1000} s`));
    this.socket.on('error', (e) => this.fail(new ConnectionError(e.message)));
    this.socket.on('close', () => {
      this.fail(new ConnectionError('the server closed the connection'));
      onGone(this);
    });
  }

  /** Send one GET; the answer comes through onRead. */
  send(request: string, ex: Exchange): void {
    this.current = ex;
    this.socket.ref();
    this.socket.write(request, 'latin1');
  }

  /** Give up the exchange in progress with `e`, or, once its body has begun, as the server having `midBody` (closed the connection, by default) part-way. */
  private fail(e: ConnectionError, midBody = 'closed the connection'): void {
    this.broken = true;
    const ex = this.current;
    this.current = undefined;
    if (!this.socket.destroyed) this.socket.destroy();
    if (ex) ex.reject(ex.answer ? new ConnectionError(`the server ${midBody} mid-body (${ex.got} of ${ex.length} bytes)`, ex.got) : e);
  }

  /** Bytes from the socket, in the connection's own buffer (valid only during this call). */
  private onRead(bytes: Uint8Array): boolean {
    const ex = this.current;
    if (!ex) {
      // Nothing asked: a server that talks out of turn.
      if (bytes.length) this.fail(new ConnectionError('the server sent bytes nobody asked for'));
      return false;
    }
    let rest = bytes;
    if (!ex.answer) {
      rest = this.takeHead(ex, bytes)!;
      if (!rest) return true; // the head goes on in the next read (or the exchange failed)
    }
    if (ex.got + rest.length > ex.length) {
      this.fail(new ConnectionError(`the server sent more than the ${ex.length} bytes of its Content-Length`));
      return false;
    }
    ex.into.set(rest, ex.got);
    ex.got += rest.length;
    if (ex.got === ex.length) this.finish(ex);
    return true;
  }

  /** Gather the head; once whole, parse it and return what follows it (the body's first bytes); undefined while incomplete or after a failure. */
  private takeHead(ex: Exchange, bytes: Uint8Array): Uint8Array | undefined {
    // Copied: the socket's buffer is read into again.
    ex.head.push(Buffer.from(bytes));
    ex.headBytes += bytes.length;
    const all = ex.head.length === 1 ? ex.head[0] : Buffer.concat(ex.head);
    ex.head = [all];
    const end = all.indexOf('\r\n\r\n', Math.max(0, all.length - bytes.length - 3), 'latin1');
    if (end < 0) {
      if (ex.headBytes > MAX_HEAD) this.fail(new ConnectionError(`the answer's head is longer than ${MAX_HEAD} bytes`));
      return undefined;
    }
    const lines = all.toString('latin1', 0, end).split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
    if (!status) {
      this.fail(new ConnectionError(`not an HTTP/1.1 answer: '${lines[0].slice(0, 80)}'`));
      return undefined;
    }
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    const answer: RangeAnswer = { status: Number(status[1]), headers, filled: false };
    // HTTP/1.0 closes after each answer unless it says keep-alive (RFC 9112 §9.3).
    ex.closes = /\bclose\b/i.test(headers.connection ?? '') || (lines[0].startsWith('HTTP/1.0') && !/\bkeep-alive\b/i.test(headers.connection ?? ''));
    const length = /^\d+$/.test(headers['content-length'] ?? '') ? Number(headers['content-length']) : -1;
    if (answer.status !== 206 || length !== ex.into.length || headers['transfer-encoding'] !== undefined) {
      // Not the plain answer this reads: the caller asks again through node:http.
      this.current = undefined;
      this.broken = true;
      this.socket.destroy();
      ex.resolve(answer);
      return undefined;
    }
    ex.answer = answer;
    ex.length = length;
    const body = all.subarray(end + 4);
    if (body.length === 0 && length > 0) return undefined;
    if (length === 0) {
      this.finish(ex);
      return undefined;
    }
    return body;
  }

  private finish(ex: Exchange): void {
    this.current = undefined;
    ex.answer!.filled = true;
    if (ex.closes) {
      this.broken = true;
      this.socket.destroy();
    } else this.socket.unref(); // an idle connection keeps no process alive
    ex.resolve(ex.answer!);
  }
}

/** Up to `maxSockets` keep-alive connections to one server (`http:` only), for range GETs. */
export class RangeClient {
  private readonly idle: Connection[] = [];
  private readonly all = new Set<Connection>();
  private readonly waiting: (() => void)[] = [];
  private closed = false;

  constructor(
    private readonly hostname: string,
    private readonly port: number,
    private readonly maxSockets: number,
    private readonly timeoutMs: number,
  ) {}

  /**
   * GET `target` (a path and query, already encoded) with `headers`, which
   * include `host` (names and values already checked: no line breaks); a
   * 206 of exactly into.length bytes is read into `into`. Rejects with a
   * ConnectionError when the connection fails.
   */
  async get(target: string, headers: Record<string, string>, into: Uint8Array): Promise<RangeAnswer> {
    const conn = await this.connection();
    const lines = [`GET ${target} HTTP/1.1`];
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    const request = `${lines.join('\r\n')}\r\n\r\n`;
    try {
      return await new Promise<RangeAnswer>((resolve, reject) => conn.send(request, { into, resolve, reject, head: [], headBytes: 0, length: 0, got: 0 }));
    } finally {
      this.release(conn);
    }
  }

  private async connection(): Promise<Connection> {
    for (;;) {
      if (this.closed) throw new ConnectionError('the store is closed');
      const c = this.idle.pop();
      if (c && !c.broken) return c;
      if (c) continue;
      if (this.all.size < this.maxSockets) {
        const made = new Connection(this.hostname.replace(/^\[|\]$/g, ''), this.port, this.timeoutMs, (gone) => this.all.delete(gone));
        this.all.add(made);
        return made;
      }
      await new Promise<void>((r) => this.waiting.push(r));
    }
  }

  private release(c: Connection): void {
    if (c.broken || this.closed) {
      this.all.delete(c);
      if (!c.socket.destroyed) c.socket.destroy();
    } else this.idle.push(c);
    this.waiting.shift()?.();
  }

  close(): void {
    this.closed = true;
    for (const c of this.all) c.socket.destroy();
    this.all.clear();
    this.idle.length = 0;
    for (const w of this.waiting.splice(0)) w();
  }
}
