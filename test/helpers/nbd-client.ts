import { connect, type Socket } from 'node:net';
import {
  CMD_BLOCK_STATUS,
  CMD_DISC,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  IHAVEOPT,
  INFO_BLOCK_SIZE,
  INFO_EXPORT,
  NBDMAGIC,
  OPT_GO,
  OPT_SET_META_CONTEXT,
  OPT_STRUCTURED_REPLY,
  REP_ACK,
  REP_ERR,
  REP_INFO,
  REP_META_CONTEXT,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  REPLY_TYPE_NONE,
  REPLY_TYPE_OFFSET_DATA,
  REPLY_TYPE_OFFSET_HOLE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
} from '../../src/nbd/protocol.js';

/**
 * A small NBD client: enough to test the server (fixed newstyle, NBD_OPT_GO,
 * structured replies, metadata contexts, pipelined requests). Not a
 * general-purpose client, and not part of vdisk: only the tests use it (the
 * benchmarks drive the server with nbdcopy).
 */

/** A request the server answered with an error. */
export class NbdRequestError extends Error {
  override readonly name = 'NbdRequestError';
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

/** Reads exact byte counts from a socket. */
export class SocketReader {
  private chunks: Buffer[] = [];
  private length = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;

  constructor(socket: Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.length += c.length;
      this.wake();
    });
    const end = (e?: Error) => {
      this.ended ??= e ?? new Error('connection closed by the server');
      this.wake();
    };
    socket.on('end', () => end());
    socket.on('close', () => end());
    socket.on('error', (e) => end(e));
  }

  /** Exactly n bytes, or rejects if the connection ends first. */
  read(n: number): Promise<Buffer> {
    if (this.waiter) throw new Error('one read at a time');
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  /** Reads and drops everything until the server closes the connection; resolves true then. */
  async closed(): Promise<boolean> {
    try {
      for (;;) await this.read(1);
    } catch {
      return true;
    }
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.length >= w.n) {
      this.waiter = undefined;
      const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
      const out = all.subarray(0, w.n);
      const rest = all.subarray(w.n);
      this.chunks = rest.length ? [rest] : [];
      this.length = rest.length;
      w.resolve(out);
    } else if (this.ended) {
      this.waiter = undefined;
      w.reject(this.ended);
    }
  }
}

export interface ClientOptions {
  host?: string;
  port?: number;
  socketPath?: string;
  exportName?: string;
  /** Negotiate structured replies (default true). */
  structured?: boolean;
  /** Metadata contexts to select (default base:allocation when structured). */
  metaContexts?: string[];
}

export interface Extent {
  length: number;
  flags: number;
}

interface Pending {
  command: number;
  length: number;
  offset: number;
  data?: Buffer;
  extents?: Map<number, Extent[]>;
  error?: NbdRequestError;
  resolve: (v: Pending) => void;
  reject: (e: Error) => void;
}

export function optionFrame(option: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + data.length);
  IHAVEOPT.copy(b, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  b.set(data, 16);
  return b;
}

export function requestFrame(command: number, flags: number, cookie: bigint, offset: number, length: number, payload?: Uint8Array): Buffer {
  const b = Buffer.alloc(28 + (payload?.length ?? 0));
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(command, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  if (payload) b.set(payload, 28);
  return b;
}

export class NbdClient {
  size = 0;
  flags = 0;
  blockSizes: { min: number; preferred: number; max: number } | undefined;
  /** Selected metadata contexts: name → id. */
  readonly contexts = new Map<string, number>();
  structured = false;
  private nextCookie = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private failure: Error | undefined;

  private constructor(
    readonly socket: Socket,
    private readonly reader: SocketReader,
  ) {}

  static async connect(o: ClientOptions): Promise<NbdClient> {
    const socket = o.socketPath ? connect(o.socketPath) : connect(o.port ?? 10809, o.host ?? '127.0.0.1');
    socket.setNoDelay(true);
    const reader = new SocketReader(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const c = new NbdClient(socket, reader);
    try {
      await c.handshake(o);
    } catch (e) {
      socket.destroy();
      throw e;
    }
    void c.readLoop();
    return c;
  }

  private async handshake(o: ClientOptions): Promise<void> {
    const r = this.reader;
    const greeting = await r.read(18);
    if (!greeting.subarray(0, 8).equals(NBDMAGIC) || !greeting.subarray(8, 16).equals(IHAVEOPT)) throw new Error('not an NBD newstyle server');
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    this.socket.write(cflags);
    const name = Buffer.from(o.exportName ?? '', 'utf8');
    if (o.structured ?? true) {
      const [ack] = await this.option(OPT_STRUCTURED_REPLY);
      this.structured = ack.type === REP_ACK;
      const wanted = o.metaContexts ?? ['base:allocation'];
      if (this.structured && wanted.length) {
        const qs = wanted.map((q) => Buffer.from(q, 'utf8'));
        const data = Buffer.alloc(4 + name.length + 4 + qs.reduce((n, q) => n + 4 + q.length, 0));
        let at = data.writeUInt32BE(name.length, 0);
        at += name.copy(data, at);
        at = data.writeUInt32BE(qs.length, at);
        for (const q of qs) {
          at = data.writeUInt32BE(q.length, at);
          at += q.copy(data, at);
        }
        for (const rep of await this.option(OPT_SET_META_CONTEXT, data)) {
          if (rep.type === REP_META_CONTEXT) this.contexts.set(rep.data.subarray(4).toString('utf8'), rep.data.readUInt32BE(0));
        }
      }
    }
    const go = Buffer.alloc(4 + name.length + 2 + 2);
    go.writeUInt32BE(name.length, 0);
    name.copy(go, 4);
    go.writeUInt16BE(1, 4 + name.length);
    go.writeUInt16BE(INFO_BLOCK_SIZE, 6 + name.length);
    for (const rep of await this.option(OPT_GO, go)) {
      if (rep.type >= REP_ERR) throw new Error(`NBD_OPT_GO failed: reply 0x${rep.type.toString(16)} ${rep.data.toString('utf8')}`);
      if (rep.type !== REP_INFO) continue;
      const t = rep.data.readUInt16BE(0);
      if (t === INFO_EXPORT) {
        this.size = Number(rep.data.readBigUInt64BE(2));
        this.flags = rep.data.readUInt16BE(10);
      } else if (t === INFO_BLOCK_SIZE) {
        this.blockSizes = { min: rep.data.readUInt32BE(2), preferred: rep.data.readUInt32BE(6), max: rep.data.readUInt32BE(10) };
      }
    }
  }

  /** Send one option; collect replies up to the final one (ACK or an error). */
  async option(option: number, data?: Uint8Array): Promise<{ type: number; data: Buffer }[]> {
    this.socket.write(optionFrame(option, data));
    const out: { type: number; data: Buffer }[] = [];
    for (;;) {
      const h = await this.reader.read(20);
      const type = h.readUInt32BE(12);
      const len = h.readUInt32BE(16);
      const body = len ? await this.reader.read(len) : Buffer.alloc(0);
      out.push({ type, data: body });
      if (type === REP_ACK || type >= REP_ERR) return out;
    }
  }

  private async readLoop(): Promise<void> {
    const r = this.reader;
    try {
      for (;;) {
        const magic = (await r.read(4)).readUInt32BE(0);
        if (magic === SIMPLE_REPLY_MAGIC) {
          const h = await r.read(12);
          const errno = h.readUInt32BE(0);
          const p = this.take(h.readBigUInt64BE(4));
          if (errno) p.error = new NbdRequestError(errno, `server error ${errno}`);
          else if (p.command === CMD_READ) p.data = await r.read(p.length);
          this.settle(p);
        } else if (magic === STRUCTURED_REPLY_MAGIC) {
          const h = await r.read(16);
          const flags = h.readUInt16BE(0);
          const type = h.readUInt16BE(2);
          const cookie = h.readBigUInt64BE(4);
          const len = h.readUInt32BE(12);
          const body = len ? await r.read(len) : Buffer.alloc(0);
          const p = this.pending.get(cookie);
          if (!p) throw new Error(`reply for unknown cookie ${cookie}`);
          this.chunk(p, type, body);
          if (flags & REPLY_FLAG_DONE) this.settle(this.take(cookie));
        } else throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      }
    } catch (e) {
      this.failure = e as Error;
      for (const p of this.pending.values()) p.reject(this.failure);
      this.pending.clear();
    }
  }

  private chunk(p: Pending, type: number, body: Buffer): void {
    if (type === REPLY_TYPE_OFFSET_DATA) {
      const off = Number(body.readBigUInt64BE(0)) - p.offset;
      p.data ??= Buffer.alloc(p.length);
      body.copy(p.data, off, 8);
    } else if (type === REPLY_TYPE_OFFSET_HOLE) {
      p.data ??= Buffer.alloc(p.length);
      const off = Number(body.readBigUInt64BE(0)) - p.offset;
      p.data.fill(0, off, off + body.readUInt32BE(8));
    } else if (type === REPLY_TYPE_BLOCK_STATUS) {
      const id = body.readUInt32BE(0);
      const list: Extent[] = [];
      for (let at = 4; at + 8 <= body.length; at += 8) list.push({ length: body.readUInt32BE(at), flags: body.readUInt32BE(at + 4) });
      (p.extents ??= new Map()).set(id, list);
    } else if (type & 0x8000) {
      const errno = body.readUInt32BE(0);
      const mlen = body.readUInt16BE(4);
      p.error = new NbdRequestError(errno, body.subarray(6, 6 + mlen).toString('utf8') || `server error ${errno}`);
    } else if (type !== REPLY_TYPE_NONE) throw new Error(`unknown structured reply type ${type}`);
  }

  private take(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw new Error(`reply for unknown cookie ${cookie}`);
    this.pending.delete(cookie);
    return p;
  }

  private settle(p: Pending): void {
    if (p.error) p.reject(p.error);
    else p.resolve(p);
  }

  /** Send any request; resolves when its reply is complete. */
  request(command: number, flags: number, offset: number, length: number, payload?: Uint8Array): Promise<Pending> {
    if (this.failure) return Promise.reject(this.failure);
    const cookie = this.nextCookie++;
    return new Promise<Pending>((resolve, reject) => {
      this.pending.set(cookie, { command, length, offset, resolve, reject });
      this.socket.write(requestFrame(command, flags, cookie, offset, length, payload));
    });
  }

  async read(offset: number, length: number, flags = 0): Promise<Buffer> {
    const p = await this.request(CMD_READ, flags, offset, length);
    return p.data ?? Buffer.alloc(length);
  }

  async write(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    await this.request(CMD_WRITE, flags, offset, data.length, data);
  }

  async flush(): Promise<void> {
    await this.request(CMD_FLUSH, 0, 0, 0);
  }

  async trim(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(CMD_TRIM, flags, offset, length);
  }

  async writeZeroes(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(CMD_WRITE_ZEROES, flags, offset, length);
  }

  /** Extents per selected context name. */
  async blockStatus(offset: number, length: number, flags = 0): Promise<Map<string, Extent[]>> {
    const p = await this.request(CMD_BLOCK_STATUS, flags, offset, length);
    const out = new Map<string, Extent[]>();
    for (const [name, id] of this.contexts) out.set(name, p.extents?.get(id) ?? []);
    return out;
  }

  /** NBD_CMD_DISC, then wait for the server to close. */
  async disconnect(): Promise<void> {
    if (!this.socket.destroyed) this.socket.write(requestFrame(CMD_DISC, 0, 0n, 0, 0));
    this.socket.end();
    await new Promise<void>((r) => (this.socket.destroyed ? r() : this.socket.once('close', () => r())));
  }
}
