import { createServer, isIPv6, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Chain } from '../chain/chain.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import { BlockError, fromSystemError } from '../core/errors.js';
import { Connection, SharedBudget } from './connection.js';
import { DEFAULT_LIMITS, type ConnectionLimits } from './limits.js';
import { makeExport, type NbdExport } from './export.js';

import { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_NBD_PORT } from './port.js';

export { DEFAULT_NBD_PORT };

export interface NbdServerOptions {
  /** Serve this open chain; the caller keeps it (the server flushes it but does not close it). */
  chain?: Chain;
  /** Or open this image (and its backing chain); the server closes it when it stops. */
  path?: string;
  /** Format of `path` (default: probe). */
  format?: string;
  /** More options for opening `path` (ignoreChecksums, ignoreParentId, ...). */
  openOptions?: ChainOpenOptions;
  /** Refuse writes (NBD_FLAG_READ_ONLY); also opens `path` read-only. */
  readOnly?: boolean;
  /** Address to bind (default 127.0.0.1: only this machine). */
  host?: string;
  /** TCP port (default 10809; 0 picks a free one). */
  port?: number;
  /** Listen on this unix socket instead of TCP. */
  socketPath?: string;
  /** Export name (default "", the default export). */
  exportName?: string;
  /** Text NBD_OPT_LIST and NBD_INFO_DESCRIPTION show. */
  description?: string;
  /** Keep serving after the last client leaves (default false: stop then, like qemu-nbd). */
  persistent?: boolean;
  /** Most clients at once (default 1); more than 1 also offers multi-conn. Extra clients are refused. */
  shared?: number;
  /** Disconnect clients that have not chosen an export after this long (default 10 s). */
  handshakeTimeoutMs?: number;
  /**
   * Disconnect a client that, after the handshake, has had no request
   * running, sent nothing and taken no reply for this long, freeing its slot
   * (0: never). Default: 0 for one non-persistent client (the only client
   * there is: nobody else can ever want its slot), DEFAULT_IDLE_TIMEOUT_MS
   * otherwise. docs/nbd.md "Idle clients" says why.
   */
  idleTimeoutMs?: number;
  /** Largest READ/WRITE (default 32 MiB). */
  maxBlock?: number;
  /** Per-connection limits on work in flight. */
  limits?: Partial<Omit<ConnectionLimits, 'handshakeTimeoutMs' | 'idleTimeoutMs'>>;
  /** Read/write bytes in flight over all clients together (default 32 MiB, replies still queued on sockets included: with Node's own ~60 MiB, 16 busy clients stay well under 256 MiB). */
  maxServerInFlightBytes?: number;
  /** Where connection events and client errors are reported (default: nowhere). */
  log?: (message: string) => void;
}

export interface NbdServerStats {
  /** Bytes received from clients and held by the connections' parsers (queued chunks and write payloads being received). */
  receivedBytes: number;
  /** Bytes counted in the server-wide budget: reserved write payloads, running requests, replies queued on sockets. */
  budgetUsed: number;
  budgetMax: number;
  /** Clients whose next write payload waits for the budget (their sockets are paused). */
  waitingForBudget: number;
  /** Reads answered straight from the image files with sendfile since the server started (io/file-reply.ts). */
  readsFromFiles: number;
}

export interface NbdServer {
  /** Where clients connect: nbd://host:port/name or nbd+unix:///name?socket=path. */
  readonly address: string;
  readonly port?: number;
  readonly socketPath?: string;
  readonly export: NbdExport;
  /** Clients connected now. */
  readonly connections: number;
  /** What the server holds for its clients now (memory accounting; tests and diagnostics). */
  stats(): NbdServerStats;
  /** Stop: refuse new clients, let running requests answer, flush, close the image if the server opened it. */
  close(): Promise<void>;
  /** Settles when the server has stopped (by close(), or after the last client when not persistent). */
  readonly closed: Promise<void>;
}

/** Start an NBD server exporting one image chain (what `vdisk serve` runs). */
export async function startNbdServer(options: NbdServerOptions): Promise<NbdServer> {
  const shared = options.shared ?? 1;
  if (!Number.isInteger(shared) || shared < 1) throw new BlockError('invalid-argument', `shared must be a positive whole number (got ${shared})`);
  if (options.port !== undefined && (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535)) {
    throw new BlockError('invalid-argument', `port must be 0..65535 (got ${options.port})`);
  }
  const idle = options.idleTimeoutMs;
  if (idle !== undefined && !(Number.isFinite(idle) && idle >= 0)) {
    throw new BlockError('invalid-argument', `idleTimeoutMs must be a number of milliseconds >= 0 (got ${idle})`);
  }
  if (!options.chain && !options.path) throw new BlockError('invalid-argument', 'startNbdServer needs a chain or a path');
  const ownsChain = !options.chain;
  const chain =
    options.chain ??
    (await openChain(options.path!, { ...options.openOptions, format: options.format ?? options.openOptions?.format, readOnly: Boolean(options.readOnly) }));
  try {
    const exp = makeExport(chain, {
      name: options.exportName,
      description: options.description,
      readOnly: options.readOnly,
      multiConn: shared > 1,
      maxBlock: options.maxBlock,
    });
    const runner = new ServerRunner(exp, chain, ownsChain, shared, options);
    await runner.listen();
    return runner;
  } catch (e) {
    if (ownsChain) await chain.close().catch(() => {});
    throw e;
  }
}

class ServerRunner implements NbdServer {
  address = '';
  port?: number;
  socketPath?: string;
  readonly closed: Promise<void>;
  private readonly server: Server;
  private readonly live = new Set<Connection>();
  private readonly limits: ConnectionLimits;
  private readonly budget: SharedBudget;
  private readonly log: (message: string) => void;
  private closing: Promise<void> | undefined;
  private settle!: { resolve: () => void; reject: (e: unknown) => void };
  private count = 0;
  private readonly counts = { readsFromFiles: 0 };

  constructor(
    readonly exp: NbdExport,
    private readonly chain: Chain,
    private readonly ownsChain: boolean,
    private readonly shared: number,
    private readonly options: NbdServerOptions,
  ) {
    this.log = options.log ?? (() => {});
    this.limits = {
      ...DEFAULT_LIMITS,
      ...options.limits,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? DEFAULT_LIMITS.handshakeTimeoutMs,
      idleTimeoutMs: options.idleTimeoutMs ?? (shared > 1 || options.persistent ? DEFAULT_IDLE_TIMEOUT_MS : 0),
    };
    this.budget = new SharedBudget(options.maxServerInFlightBytes ?? 32 << 20);
    this.closed = new Promise<void>((resolve, reject) => (this.settle = { resolve, reject }));
    this.closed.catch(() => {}); // callers that never look at it do not get an unhandled rejection
    this.server = createServer({ noDelay: true }, (socket) => this.accept(socket));
  }

  get export(): NbdExport {
    return this.exp;
  }

  get connections(): number {
    return this.live.size;
  }

  stats(): NbdServerStats {
    let receivedBytes = 0;
    let waitingForBudget = 0;
    for (const c of this.live) {
      receivedBytes += c.bufferedBytes;
      if (c.waitingForBudget) waitingForBudget++;
    }
    return { receivedBytes, budgetUsed: this.budget.used, budgetMax: this.budget.max, waitingForBudget, readsFromFiles: this.counts.readsFromFiles };
  }

  async listen(): Promise<void> {
    const o = this.options;
    await new Promise<void>((resolve, reject) => {
      const onError = (e: Error) => reject(fromSystemError(e, { path: o.socketPath, operation: 'listen' }));
      this.server.once('error', onError);
      const done = () => {
        this.server.off('error', onError);
        this.server.on('error', (e) => this.log(`server: ${e.message}`));
        resolve();
      };
      if (o.socketPath) this.server.listen(o.socketPath, done);
      else this.server.listen(o.port ?? DEFAULT_NBD_PORT, o.host ?? '127.0.0.1', done);
    });
    const name = encodeURIComponent(this.exp.name);
    if (o.socketPath) {
      this.socketPath = o.socketPath;
      this.address = `nbd+unix:///${name}?socket=${o.socketPath}`;
    } else {
      const a = this.server.address() as AddressInfo;
      this.port = a.port;
      this.address = `nbd://${isIPv6(a.address) ? `[${a.address}]` : a.address}:${a.port}/${name}`;
    }
  }

  private accept(socket: Socket): void {
    const id = `client ${++this.count}`;
    if (this.closing) {
      socket.destroy();
      return;
    }
    if (this.live.size >= this.shared) {
      this.log(`${id}: refused, already serving ${this.live.size} client(s) (--shared ${this.shared})`);
      socket.destroy();
      return;
    }
    const conn = new Connection(socket, this.exp, this.limits, this.budget, this.log, id, this.counts);
    this.live.add(conn);
    this.log(`${id}: connected`);
    void conn.done.then(async () => {
      this.live.delete(conn);
      this.log(`${id}: disconnected`);
      // What a client wrote is made durable when it leaves, whether or not it flushed.
      if (conn.wrote && !this.exp.readOnly) await this.chain.flush().catch((e) => this.log(`flush failed: ${(e as Error).message}`));
      if (!this.options.persistent && this.live.size === 0) void this.close().catch(() => {});
    });
  }

  close(): Promise<void> {
    this.closing ??= this.stop().then(this.settle.resolve, (e) => {
      this.settle.reject(e);
      throw e;
    });
    return this.closing;
  }

  private async stop(): Promise<void> {
    const listening = new Promise<void>((r) => this.server.close(() => r()));
    for (const c of this.live) c.shutdown();
    await Promise.all([...this.live].map((c) => c.done));
    await listening;
    try {
      if (!this.exp.readOnly) await this.chain.flush();
    } finally {
      if (this.ownsChain) await this.chain.close();
    }
  }
}
