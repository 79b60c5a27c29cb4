import type { Socket } from 'node:net';
import { encodeGreeting } from './codec.js';
import type { NbdExport } from './export.js';
import { Negotiation } from './handshake.js';
import { NbdParser, NbdProtocolError, type ClientFrame, type RequestFrame } from './parser.js';
import { CMD_DISC, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES, CMD_TRIM } from './protocol.js';
import { executeRequest, readReplyHead, type TransmissionState } from './transmission.js';
import { FileReplySender } from '../io/file-reply.js';
import { mapToFiles } from './file-map.js';
import { replyPool } from './buffer-pool.js';
import type { ConnectionLimits } from './limits.js';

/**
 * Read/write bytes in flight over all connections of a server, so memory does
 * not grow with the number of clients. A connection with nothing running may
 * always take one request (no client starves); others wait until bytes free up.
 */
export class SharedBudget {
  used = 0;
  private readonly waiting = new Set<() => void>();

  constructor(readonly max: number) {}

  full(): boolean {
    return this.used >= this.max;
  }

  wait(wake: () => void): void {
    this.waiting.add(wake);
  }

  unwait(wake: () => void): void {
    this.waiting.delete(wake);
  }

  /**
   * Reserve a write payload before the parser holds any of it: whole or not
   * at all (a payload half admitted could wait forever for bytes that other
   * half-admitted payloads hold). An empty budget always admits, so the one
   * client left can always make progress, whatever the payload's size.
   */
  tryReserve(n: number): boolean {
    if (this.used > 0 && this.used + n > this.max) return false;
    this.used += n;
    return true;
  }

  release(n: number): void {
    this.used -= n;
    if (this.waiting.size === 0 || this.full()) return;
    const wake = [...this.waiting];
    this.waiting.clear();
    for (const w of wake) w();
  }
}

/**
 * One client: the handshake, then requests run concurrently (replies go out
 * in completion order, each as one buffer). Reading stops — and TCP pushes
 * back on the client — while too many requests or bytes are in flight or the
 * client is slow to take its replies, so memory per connection is bounded by
 * the limits plus one maximum-size request.
 */
export class Connection {
  private readonly parser: NbdParser;
  private readonly negotiation: Negotiation;
  private state: 'handshake' | 'transmission' | 'draining' | 'closed' = 'handshake';
  private inFlight = 0;
  private inFlightBytes = 0;
  private paused = false;
  private pumping = false;
  private timer: NodeJS.Timeout | undefined;
  /** When the client last sent bytes or took a reply, or a request finished (Date.now()). */
  private lastActivity = 0;
  private transmission: TransmissionState | undefined;
  /**
   * Sends every reply once in transmission, on a read-only export where the
   * native addon can: reads whose data the page cache holds go from the
   * image files to the socket with sendfile (io/file-reply.ts).
   */
  private direct: FileReplySender | undefined;
  /** Budget bytes reserved for the write payload the parser is receiving now (0: none). */
  private reservedPayload = 0;
  /** A read taken from the parser that waits for the server-wide budget (see run). */
  private held: RequestFrame | undefined;
  private resolveDone!: () => void;
  /** Settles once the socket is closed and every request that was running has finished. */
  readonly done: Promise<void>;
  /** Whether any request could have changed the disk (the server flushes after such a client leaves). */
  wrote = false;

  constructor(
    private readonly socket: Socket,
    private readonly exp: NbdExport,
    private readonly limits: ConnectionLimits,
    private readonly budget: SharedBudget,
    private readonly log: (message: string) => void,
    readonly id: string,
    /** Server-wide counts (NbdServer.stats). */
    private readonly counts: { readsFromFiles: number } = { readsFromFiles: 0 },
  ) {
    this.done = new Promise((r) => (this.resolveDone = r));
    // A write's payload is counted in the server-wide budget before the parser
    // keeps a byte of it; while the budget is short the socket stays paused
    // (TCP pushes back on the client) instead of the payload piling up here.
    this.parser = new NbdParser({ maxPayload: exp.maxBlock, admit: (n) => this.admitPayload(n) });
    this.negotiation = new Negotiation(exp);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      // After NBD_CMD_DISC or a refused handshake nothing more is read: a client flooding then cannot fill memory.
      if (this.state !== 'handshake' && this.state !== 'transmission') return;
      this.lastActivity = Date.now();
      this.parser.push(chunk);
      this.pump();
    });
    socket.on('drain', () => this.pump());
    socket.on('error', (e) => this.log(`${id}: ${e.message}`));
    socket.on('close', () => this.onClose());
    socket.on('end', () => {
      // The client will send nothing more, and (the server is not half-open)
      // no reply can reach it either: drop the reads it left, let accepted
      // writes finish, then close.
      this.abandon();
      if (this.state === 'handshake') socket.destroy();
      else this.drain();
    });
    this.timer = setTimeout(() => {
      this.log(`${id}: handshake not finished after ${limits.handshakeTimeoutMs} ms, disconnecting`);
      socket.destroy();
    }, limits.handshakeTimeoutMs);
    this.timer.unref?.();
    this.send(encodeGreeting());
  }

  /** Stop taking requests, let the running ones answer, then close (server shutdown). */
  shutdown(): void {
    if (this.state === 'handshake') this.socket.destroy();
    else this.drain();
  }

  /** Queue a reply; `sent` runs once the socket has handed it to the kernel (or could not). */
  private send(b: Buffer, sent?: () => void): void {
    if (this.direct) {
      this.direct.send(b, undefined, () => {
        this.lastActivity = Date.now();
        replyPool.give(b);
        sent?.();
        // Its bytes no longer count as queued (canTakeMore): take more requests if reading had stopped.
        if (this.state === 'transmission') this.pump();
      });
    } else if (!this.socket.destroyed && this.socket.writable) {
      // Once the socket has sent a pooled read reply, its buffer is reused.
      this.socket.write(b, () => {
        this.lastActivity = Date.now();
        replyPool.give(b);
        sent?.();
      });
    } else sent?.();
  }

  private canTakeMore(): boolean {
    if (this.socket.writableLength + (this.direct?.queuedBytes ?? 0) > this.limits.maxQueuedReplyBytes) return false;
    if (this.inFlight === 0) return true;
    if (this.budget.full()) {
      this.budget.wait(this.wake);
      return false;
    }
    return this.inFlight < this.limits.maxInFlight && this.inFlightBytes < this.limits.maxInFlightBytes;
  }

  private readonly wake = () => this.pump();

  private admitPayload(n: number): boolean {
    if (this.state !== 'transmission') return false;
    if (!this.budget.tryReserve(n)) {
      this.budget.wait(this.wake);
      return false;
    }
    this.reservedPayload = n;
    return true;
  }

  /** The payload being received will never become a request (client gone, draining): give its reservation back. */
  private dropReservation(): void {
    this.budget.unwait(this.wake);
    const n = this.reservedPayload;
    this.reservedPayload = 0;
    if (n > 0) this.budget.release(n);
  }

  /** Bytes received from the client and held by the parser (queued chunks and a partial payload). */
  get bufferedBytes(): number {
    return this.parser.buffered;
  }

  /** Whether this client's next write payload, or a read, waits (socket paused) for the server-wide budget. */
  get waitingForBudget(): boolean {
    return (this.parser.awaitingAdmission || this.held !== undefined) && this.state === 'transmission';
  }

  /** Take frames from the parser while there is room; pause the socket when there is not. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.state === 'handshake' || this.state === 'transmission') {
        if (!this.canTakeMore()) {
          if (!this.paused) {
            this.paused = true;
            this.socket.pause();
          }
          return;
        }
        const frame = this.held ?? this.parser.next();
        this.held = undefined;
        if (!frame) {
          if (this.parser.awaitingAdmission) {
            // Backpressure, not buffering: read nothing more until the budget has room (wake).
            if (!this.paused) {
              this.paused = true;
              this.socket.pause();
            }
            return;
          }
          break;
        }
        if (!this.handle(frame)) {
          // A read waiting for the server-wide budget: kept here, and nothing more is read until it runs (wake).
          this.held = frame as RequestFrame;
          if (!this.paused) {
            this.paused = true;
            this.socket.pause();
          }
          return;
        }
      }
      if (this.paused && this.state !== 'closed') {
        this.paused = false;
        this.socket.resume();
      }
    } catch (e) {
      this.log(`${this.id}: ${e instanceof NbdProtocolError ? 'protocol error' : 'internal error'}: ${(e as Error).message}`);
      this.socket.destroy();
    } finally {
      this.pumping = false;
    }
  }

  /** False when the request could not start yet (a read waiting for the budget: pump keeps it). */
  private handle(frame: ClientFrame): boolean {
    if (this.state === 'handshake') {
      const step = this.negotiation.handle(frame);
      for (const r of step.replies) this.send(r);
      if (step.next === 'close') {
        this.log(`${this.id}: closing during the handshake: ${step.reason}`);
        this.state = 'draining';
        this.closeSocket();
      } else if (step.next === 'transmission') {
        clearTimeout(this.timer);
        this.state = 'transmission';
        this.parser.mode = 'request';
        this.transmission = {
          exp: this.exp,
          structured: this.negotiation.structured,
          contexts: this.negotiation.contexts,
          log: (m) => this.log(`${this.id}: ${m}`),
          abandoned: false,
        };
        // Read-only only: on a writable export a write could change a file's
        // pages while a reply still refers to them in the socket buffer.
        if (this.exp.readOnly) this.direct = FileReplySender.open(this.socket);
        this.lastActivity = Date.now();
        this.armIdleTimer(this.limits.idleTimeoutMs);
      } else if (frame.type === 'client-flags') this.parser.mode = 'option';
      return true;
    }
    const req = frame as RequestFrame;
    if (frame.type !== 'request') throw new NbdProtocolError('unexpected frame');
    if (req.command === CMD_DISC) {
      this.drain();
      return true;
    }
    return this.run(req);
  }

  private run(req: RequestFrame): boolean {
    if (this.direct && req.command === CMD_READ && this.runFromFiles(req)) return true;
    // A read's reply buffer is reserved in the server-wide budget before it
    // is allocated, like a write's payload: whole or not at all, an empty
    // budget admitting any size. Otherwise every client with nothing running
    // could hold one read of up to the maximum block size, however many
    // clients there are (a client that never collects its replies keeps it).
    if (req.command === CMD_READ && !this.budget.tryReserve(req.length)) {
      this.budget.wait(this.wake);
      return false;
    }
    const bytes = req.command === CMD_READ || req.command === CMD_WRITE ? req.length : 0;
    if (req.command === CMD_WRITE || req.command === CMD_WRITE_ZEROES || req.command === CMD_TRIM) this.wrote = true;
    this.inFlight++;
    this.inFlightBytes += bytes;
    // A write's payload took its budget when the parser admitted it (now
    // handed to the request); a write too big to keep holds nothing.
    let budgeted = 0;
    if (req.command === CMD_READ) {
      budgeted = bytes; // reserved above
    } else if (req.command === CMD_WRITE && req.payload && req.payload.length > 0) {
      budgeted = this.reservedPayload;
      this.reservedPayload = 0;
    }
    void executeRequest(this.transmission!, req).then((reply) => {
      this.lastActivity = Date.now();
      this.inFlight--;
      this.inFlightBytes -= bytes;
      // The server-wide budget covers replies still queued on the socket too:
      // with many slow readers, queued read data is what memory is made of.
      this.send(reply, () => this.budget.release(budgeted));
      if (this.state === 'transmission') this.pump();
      else this.finishIfIdle();
    });
    return true;
  }

  /**
   * A read whose data lies in image files the page cache holds: its reply
   * is sent from the files (no buffer, no thread pool). False when the
   * read must run the usual way (executeRequest).
   */
  private runFromFiles(req: RequestFrame): boolean {
    const direct = this.direct!;
    const head = readReplyHead(this.transmission!, req);
    const segments = head && mapToFiles(this.exp.chain, req.offset, req.length);
    if (!segments || !direct.cached(segments)) return false;
    // In flight until the kernel has the whole reply (closing waits for it);
    // it holds no buffer, so nothing is taken from the server-wide budget.
    this.inFlight++;
    this.counts.readsFromFiles++;
    direct.send(head!, segments, () => {
      this.lastActivity = Date.now();
      this.inFlight--;
      if (this.state === 'transmission') this.pump();
      else this.finishIfIdle();
    });
    return true;
  }

  /**
   * One timer per connection, re-armed for the time left rather than reset
   * on every chunk (that would cost a timer operation per request). Idle
   * means nothing running, nothing received and no reply taken: a client
   * waiting on a slow read, or reading a long reply, is not idle; one that
   * stopped reading its replies is (its socket is paused, nothing moves).
   */
  private armIdleTimer(ms: number): void {
    const limit = this.limits.idleTimeoutMs;
    if (!(limit > 0)) return;
    this.timer = setTimeout(() => {
      if (this.state !== 'transmission') return;
      const quiet = Date.now() - this.lastActivity;
      if (this.inFlight > 0) this.armIdleTimer(limit);
      else if (quiet < limit) this.armIdleTimer(limit - quiet);
      else {
        this.log(`${this.id}: idle for ${quiet} ms (idle timeout ${limit} ms), disconnecting`);
        this.abandon();
        this.socket.destroy();
      }
    }, ms);
    this.timer.unref?.();
  }

  /** The client will take no more replies: reads and block status not yet done are skipped (writes it sent whole still land). */
  private abandon(): void {
    if (this.transmission) this.transmission.abandoned = true;
  }

  /** NBD_CMD_DISC, end of input or shutdown: no new requests; close once the running ones have answered. */
  private drain(): void {
    if (this.state === 'closed' || this.state === 'draining') return;
    this.state = 'draining';
    this.dropReservation();
    this.finishIfIdle();
  }

  private finishIfIdle(): void {
    if (this.inFlight > 0) return;
    if (this.state === 'closed') this.resolveDone();
    else this.closeSocket();
  }

  /** Send what is queued, then close (a client that never closes its side is cut off). */
  private closeSocket(): void {
    if (this.direct && !this.direct.idle && !this.socket.destroyed) {
      this.direct.onIdle = () => this.closeSocket();
      return;
    }
    if (!this.socket.destroyed) this.socket.end(() => this.socket.destroy());
  }

  private onClose(): void {
    clearTimeout(this.timer);
    this.abandon();
    this.dropReservation();
    if (this.state === 'closed') return;
    if (this.inFlight > 0) this.log(`${this.id}: gone with ${this.inFlight} request(s) running: reads stop, replies are dropped`);
    this.state = 'closed';
    // Replies not yet sent go nowhere; their requests are done (finishIfIdle below).
    this.direct?.clear();
    // Requests still running finish (an accepted write lands whole); their replies go nowhere.
    this.finishIfIdle();
  }
}
