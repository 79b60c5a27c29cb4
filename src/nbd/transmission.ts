import type { ChainExtent } from '../chain/chain.js';
import { isBlockError } from '../core/errors.js';
import { encodeSimpleReply, encodeStructuredDone, encodeStructuredError, writeStructuredHeader, writeU64 } from './codec.js';
import { nbdErrno } from './errno.js';
import type { NbdExport } from './export.js';
import type { RequestFrame } from './parser.js';
import {
  CMD_BLOCK_STATUS,
  CMD_FLAG_DF,
  CMD_FLAG_FAST_ZERO,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  commandName,
  CONTEXT_BASE_ALLOCATION,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  REPLY_TYPE_OFFSET_DATA,
  SIMPLE_REPLY_SIZE,
  STATE_HOLE,
  STATE_ZERO,
  STRUCTURED_REPLY_SIZE,
} from './protocol.js';
import { replyPool } from './buffer-pool.js';

/** What a connection negotiated, as the transmission phase needs it. */
export interface TransmissionState {
  readonly exp: NbdExport;
  readonly structured: boolean;
  readonly contexts: readonly { id: number; name: string }[];
  /** Told about failures that are bugs rather than BlockErrors. */
  readonly log?: (message: string) => void;
  /**
   * Set once the client can take no more replies (it disconnected or was
   * cut off): reads and block status still to do are skipped rather than
   * run for nobody. Writes the client sent whole still land.
   */
  abandoned?: boolean;
}

/**
 * A read runs as slices of at most this many bytes, checking between them
 * whether the client is still there: a client that queues 32 MiB reads and
 * vanishes costs at most one slice per read already started, not the whole
 * read (100 such clients kept a stopping server busy for seconds).
 * Requests from NBD clients are mostly <= 2 MiB (qemu's cluster-sized
 * copies, nbdcopy's 256 KiB), so they stay one slice.
 */
const READ_SLICE = 2 << 20;

/** The reply for a request the client will never see (nothing is sent). */
class Abandoned extends Error {}

/** Most descriptors in one block status chunk (proto.md lets a server describe less than asked). */
const MAX_DESCRIPTORS = 1 << 16;

/** Flags each command accepts (proto.md "Command flags"); FUA is valid on every command. */
const ALLOWED_FLAGS: Record<number, number> = {
  [CMD_READ]: CMD_FLAG_FUA | CMD_FLAG_DF,
  [CMD_WRITE]: CMD_FLAG_FUA,
  [CMD_FLUSH]: CMD_FLAG_FUA,
  [CMD_TRIM]: CMD_FLAG_FUA,
  [CMD_WRITE_ZEROES]: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
  [CMD_BLOCK_STATUS]: CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
};

class RequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Run one request and return the whole reply as one buffer (so replies of
 * concurrent requests never interleave on the socket). Never throws: every
 * failure becomes an NBD error reply. NBD_CMD_DISC is the connection's.
 */
export async function executeRequest(st: TransmissionState, req: RequestFrame): Promise<Buffer> {
  try {
    validate(st, req);
    if (st.abandoned && (req.command === CMD_READ || req.command === CMD_BLOCK_STATUS)) throw new Abandoned();
    const chain = st.exp.chain;
    switch (req.command) {
      case CMD_READ:
        return await read(st, req);
      case CMD_WRITE:
        await chain.write(req.offset, req.payload!);
        break;
      case CMD_FLUSH:
        await chain.flush();
        break;
      case CMD_TRIM:
        await chain.trim(req.offset, req.length);
        break;
      case CMD_WRITE_ZEROES:
        await chain.writeZeroes(req.offset, req.length, { mayUnmap: (req.flags & CMD_FLAG_NO_HOLE) === 0 });
        break;
      case CMD_BLOCK_STATUS:
        return await blockStatus(st, req);
    }
    // FUA: the data is durable before the reply says it is written.
    if (req.flags & CMD_FLAG_FUA && req.command !== CMD_FLUSH && !st.exp.readOnly) await chain.flush();
    return encodeSimpleReply(req.cookieHi, req.cookieLo, 0);
  } catch (e) {
    if (e instanceof RequestError) return errorReply(st, req, e.errno, e.message);
    if (e instanceof Abandoned) return errorReply(st, req, NBD_EIO, 'the client has gone');
    if (!isBlockError(e)) st.log?.(`${commandName(req.command)} failed unexpectedly: ${(e as Error)?.stack ?? String(e)}`);
    const message = isBlockError(e) ? e.message : 'internal server error';
    return errorReply(st, req, nbdErrno(e), message);
  }
}

/**
 * The header of a successful read's reply, for a read the connection sends
 * straight from the image files (io/file-reply.ts) rather than through
 * executeRequest: the reply is this header followed by the data. Undefined
 * when the request must go through executeRequest (not a read, empty, an
 * error to report, the client gone).
 */
export function readReplyHead(st: TransmissionState, req: RequestFrame): Buffer | undefined {
  if (req.command !== CMD_READ || req.length === 0 || st.abandoned) return undefined;
  try {
    validate(st, req);
  } catch {
    return undefined;
  }
  if (!st.structured) return encodeSimpleReply(req.cookieHi, req.cookieLo, 0, 0);
  // One OFFSET_DATA chunk with DONE, as read() sends.
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_SIZE + 8);
  writeStructuredHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, req.cookieHi, req.cookieLo, 8 + req.length);
  writeU64(b, req.offset, STRUCTURED_REPLY_SIZE);
  return b;
}

/** Reject what the protocol forbids before touching the chain (proto.md "Error values"). */
function validate(st: TransmissionState, req: RequestFrame): void {
  const exp = st.exp;
  const name = commandName(req.command);
  const allowed = ALLOWED_FLAGS[req.command];
  if (allowed === undefined) throw new RequestError(NBD_EINVAL, `${name} is not supported`);
  if (req.flags & ~allowed) throw new RequestError(NBD_EINVAL, `${name} does not take flags 0x${(req.flags & ~allowed).toString(16)}`);
  if (req.flags & CMD_FLAG_DF && !st.structured) throw new RequestError(NBD_EINVAL, 'NBD_CMD_FLAG_DF needs structured replies');
  const writes = req.command === CMD_WRITE || req.command === CMD_TRIM || req.command === CMD_WRITE_ZEROES;
  if (writes && exp.readOnly) throw new RequestError(NBD_EPERM, 'the export is read-only');
  if (req.command === CMD_FLUSH) return; // offset and length are reserved
  if (req.command === CMD_TRIM && !exp.canTrim) throw new RequestError(NBD_EINVAL, 'this image cannot trim (NBD_FLAG_SEND_TRIM was not offered)');
  if (req.flags & CMD_FLAG_FAST_ZERO && !exp.canFastZero) {
    throw new RequestError(NBD_EINVAL, 'NBD_CMD_FLAG_FAST_ZERO was not offered for this image');
  }
  if ((req.command === CMD_READ || req.command === CMD_WRITE) && (req.length > exp.maxBlock || (req.command === CMD_WRITE && !req.payload))) {
    throw new RequestError(NBD_EINVAL, `${name} of ${req.length} bytes is more than the maximum block size ${exp.maxBlock}`);
  }
  if (!Number.isSafeInteger(req.offset) || req.offset + req.length > exp.size) {
    // "SHOULD return ENOSPC if it receives a write request including one or more sectors beyond the size of the device"
    const errno = req.command === CMD_WRITE || req.command === CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    throw new RequestError(errno, `${name} of ${req.length} bytes at ${req.offset} is beyond the end of the disk (${exp.size} bytes)`);
  }
  if (req.command === CMD_BLOCK_STATUS) {
    if (st.contexts.length === 0) throw new RequestError(NBD_EINVAL, 'no metadata context was selected');
    if (req.length === 0) throw new RequestError(NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS of 0 bytes');
  }
}

/**
 * The reply buffer is allocated with room for its header and the data is read
 * straight into it: one allocation, no copy. Structured: one OFFSET_DATA
 * chunk with DONE (so NBD_CMD_FLAG_DF is always satisfied).
 */
async function read(st: TransmissionState, req: RequestFrame): Promise<Buffer> {
  const { cookieHi, cookieLo, offset, length } = req;
  if (!st.structured) {
    const b = replyPool.take(SIMPLE_REPLY_SIZE + length);
    encodeSimpleReply(cookieHi, cookieLo, 0, 0).copy(b, 0);
    await readOrRecycle(st, offset, b, SIMPLE_REPLY_SIZE);
    return b;
  }
  if (length === 0) return encodeStructuredDone(cookieHi, cookieLo);
  const head = STRUCTURED_REPLY_SIZE + 8;
  const b = replyPool.take(head + length);
  writeStructuredHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookieHi, cookieLo, 8 + length);
  writeU64(b, offset, STRUCTURED_REPLY_SIZE);
  await readOrRecycle(st, offset, b, head);
  return b;
}

/** Read the disk into the reply after its header; a failed read gives the buffer straight back. */
async function readOrRecycle(st: TransmissionState, offset: number, b: Buffer, head: number): Promise<void> {
  try {
    for (let at = head; at < b.length; at += READ_SLICE) {
      if (st.abandoned) throw new Abandoned();
      const end = Math.min(b.length, at + READ_SLICE);
      await st.exp.chain.read(offset + at - head, b.subarray(at, end));
    }
  } catch (e) {
    replyPool.give(b);
    throw e;
  }
}

/** Status flags of one chain extent in a metadata context. */
function contextFlags(context: string, e: ChainExtent, layers: number): number {
  if (context === CONTEXT_BASE_ALLOCATION) {
    // Only data is allocated: zero extents (a layer's zero block, a sparse
    // hole, or no layer at all) are holes that read as zero — as qemu-nbd reports.
    return e.kind === 'data' ? 0 : STATE_HOLE | STATE_ZERO;
  }
  // qemu:allocation-depth: 1 = top layer, n = n-th layer, 0 = no layer has it.
  return e.depth < layers ? e.depth + 1 : 0;
}

async function blockStatus(st: TransmissionState, req: RequestFrame): Promise<Buffer> {
  const chain = st.exp.chain;
  const extents = await chain.blockStatus(req.offset, req.length);
  const one = (req.flags & CMD_FLAG_REQ_ONE) !== 0;
  const chunks: Buffer[] = [];
  st.contexts.forEach((ctx, i) => {
    const lengths: number[] = [];
    const flags: number[] = [];
    for (const e of extents) {
      const f = contextFlags(ctx.name, e, chain.layers.length);
      const last = flags.length - 1;
      if (last >= 0 && flags[last] === f) lengths[last] += e.length;
      else {
        if (flags.length === (one ? 1 : MAX_DESCRIPTORS)) break;
        lengths.push(e.length);
        flags.push(f);
      }
    }
    const n = flags.length;
    const b = Buffer.allocUnsafe(STRUCTURED_REPLY_SIZE + 4 + 8 * n);
    const done = i === st.contexts.length - 1 ? REPLY_FLAG_DONE : 0;
    writeStructuredHeader(b, 0, done, REPLY_TYPE_BLOCK_STATUS, req.cookieHi, req.cookieLo, 4 + 8 * n);
    b.writeUInt32BE(ctx.id, STRUCTURED_REPLY_SIZE);
    for (let k = 0; k < n; k++) {
      b.writeUInt32BE(lengths[k], STRUCTURED_REPLY_SIZE + 4 + 8 * k);
      b.writeUInt32BE(flags[k] >>> 0, STRUCTURED_REPLY_SIZE + 8 + 8 * k);
    }
    chunks.push(b);
  });
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
}

function errorReply(st: TransmissionState, req: RequestFrame, errno: number, message: string): Buffer {
  // With structured replies, errors carry a message for humans (proto.md prefers it).
  if (st.structured) return encodeStructuredError(req.cookieHi, req.cookieLo, errno, message);
  return encodeSimpleReply(req.cookieHi, req.cookieLo, errno);
}
