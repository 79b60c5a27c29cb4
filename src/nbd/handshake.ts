import {
  decodeExportRequest,
  decodeMetaContextRequest,
  decodeString,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionReply,
  encodeServerEntry,
  OptionError,
} from './codec.js';
import { transmissionFlags, type NbdExport } from './export.js';
import type { ClientFrame } from './parser.js';
import {
  CONTEXT_ALLOCATION_DEPTH,
  CONTEXT_BASE_ALLOCATION,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  INFO_DESCRIPTION,
  INFO_NAME,
  KNOWN_CLIENT_FLAGS,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_LIST_META_CONTEXT,
  OPT_SET_META_CONTEXT,
  OPT_STARTTLS,
  OPT_STRUCTURED_REPLY,
  optionName,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_META_CONTEXT,
  REP_SERVER,
} from './protocol.js';

/** Metadata contexts this server knows, with the ids NBD_OPT_SET_META_CONTEXT hands out. */
const META_CONTEXTS: readonly { id: number; name: string }[] = [
  { id: 1, name: CONTEXT_BASE_ALLOCATION },
  { id: 2, name: CONTEXT_ALLOCATION_DEPTH },
];

/** A client that sends this many options without entering transmission is only wasting the server. */
const MAX_OPTIONS = 4096;

export interface NegotiationStep {
  /** Bytes to send, in order. */
  replies: Buffer[];
  /** continue: more options; transmission: the export is chosen; close: end the connection after the replies. */
  next: 'continue' | 'transmission' | 'close';
  /** Why the connection closes (for the log). */
  reason?: string;
}

/**
 * The handshake of one connection (proto.md "Fixed newstyle negotiation"):
 * a pure state machine from client frames to replies, so it can be driven by
 * tests without a socket. Errors in one option get an error reply and the
 * negotiation goes on; only broken framing or an export the client cannot be
 * refused gracefully (NBD_OPT_EXPORT_NAME) closes the connection.
 */
export class Negotiation {
  fixedNewstyle = false;
  noZeroes = false;
  structured = false;
  /** Contexts selected by the last NBD_OPT_SET_META_CONTEXT. */
  contexts: { id: number; name: string }[] = [];
  private options = 0;
  private gotFlags = false;

  constructor(readonly exp: NbdExport) {}

  handle(frame: ClientFrame): NegotiationStep {
    if (frame.type === 'client-flags') {
      this.gotFlags = true;
      // "the server MUST drop the TCP connection if the client sets an unknown flag"
      if (frame.flags & ~KNOWN_CLIENT_FLAGS) return close(`unknown client flags 0x${frame.flags.toString(16)}`);
      this.fixedNewstyle = (frame.flags & FLAG_C_FIXED_NEWSTYLE) !== 0;
      this.noZeroes = (frame.flags & FLAG_C_NO_ZEROES) !== 0;
      return { replies: [], next: 'continue' };
    }
    if (frame.type !== 'option' || !this.gotFlags) return close('unexpected frame during the handshake');
    if (++this.options > MAX_OPTIONS) return close(`more than ${MAX_OPTIONS} options`);
    const { option, data } = frame;
    if (option === OPT_EXPORT_NAME) return this.exportName(data);
    if (data === undefined) {
      return reply(option, REP_ERR_TOO_BIG, `${optionName(option)} data of ${frame.length} bytes is too long`);
    }
    try {
      switch (option) {
        case OPT_ABORT:
          return { replies: [encodeOptionReply(option, REP_ACK)], next: 'close', reason: 'client aborted' };
        case OPT_LIST:
          if (data.length !== 0) throw new OptionError(REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
          return {
            replies: [encodeOptionReply(option, REP_SERVER, encodeServerEntry(this.exp.name, this.exp.description)), encodeOptionReply(option, REP_ACK)],
            next: 'continue',
          };
        case OPT_STARTTLS:
          return reply(option, REP_ERR_UNSUP, 'TLS is not supported by this server');
        case OPT_INFO:
        case OPT_GO:
          return this.infoOrGo(option, data);
        case OPT_STRUCTURED_REPLY:
          if (data.length !== 0) throw new OptionError(REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          this.structured = true;
          return reply(option, REP_ACK);
        case OPT_LIST_META_CONTEXT:
        case OPT_SET_META_CONTEXT:
          return this.metaContext(option, data);
        default:
          // Includes NBD_OPT_EXTENDED_HEADERS: clients fall back to compact headers.
          return reply(option, REP_ERR_UNSUP, `${optionName(option)} is not supported`);
      }
    } catch (e) {
      if (e instanceof OptionError) return reply(option, e.reply, e.message);
      throw e;
    }
  }

  private knows(name: string): boolean {
    // The empty name is the default export (proto.md NBD_OPT_EXPORT_NAME).
    return name === this.exp.name || name === '';
  }

  /** NBD_OPT_EXPORT_NAME cannot carry an error: an unknown export ends the session. */
  private exportName(data: Buffer | undefined): NegotiationStep {
    if (data === undefined) return close('NBD_OPT_EXPORT_NAME name too long');
    let name: string;
    try {
      name = decodeString(data, 'export name');
    } catch {
      return close('NBD_OPT_EXPORT_NAME name is not valid UTF-8');
    }
    if (!this.knows(name)) return close(`no export named '${name}'`);
    // Contexts were negotiated for this export or none; they stay.
    const flags = transmissionFlags(this.exp, this.structured);
    return { replies: [encodeExportNameReply(this.exp.size, flags, this.noZeroes)], next: 'transmission' };
  }

  private infoOrGo(option: number, data: Buffer): NegotiationStep {
    const what = optionName(option);
    const { name, infos } = decodeExportRequest(data, what);
    if (!this.knows(name)) return reply(option, REP_ERR_UNKNOWN, `no export named '${name}'`);
    const exp = this.exp;
    const replies = [encodeOptionReply(option, REP_INFO, encodeInfoExport(exp.size, transmissionFlags(exp, this.structured)))];
    if (infos.includes(INFO_NAME)) replies.push(encodeOptionReply(option, REP_INFO, encodeInfoString(INFO_NAME, exp.name)));
    if (infos.includes(INFO_DESCRIPTION)) replies.push(encodeOptionReply(option, REP_INFO, encodeInfoString(INFO_DESCRIPTION, exp.description)));
    // Block sizes are sent even when not asked for: proto.md lets the server, and they are only limits we keep anyway.
    replies.push(encodeOptionReply(option, REP_INFO, encodeInfoBlockSize(exp.minBlock, exp.preferredBlock, exp.maxBlock)));
    replies.push(encodeOptionReply(option, REP_ACK));
    return { replies, next: option === OPT_GO ? 'transmission' : 'continue' };
  }

  private metaContext(option: number, data: Buffer): NegotiationStep {
    const what = optionName(option);
    // Block status replies are structured, so contexts need structured replies first.
    if (!this.structured) throw new OptionError(REP_ERR_INVALID, `${what} needs NBD_OPT_STRUCTURED_REPLY first`);
    const { name, queries } = decodeMetaContextRequest(data, what);
    if (!this.knows(name)) return reply(option, REP_ERR_UNKNOWN, `no export named '${name}'`);
    const list = option === OPT_LIST_META_CONTEXT;
    let matched: { id: number; name: string }[];
    if (queries.length === 0) matched = list ? [...META_CONTEXTS] : [];
    else {
      const set = new Set<{ id: number; name: string }>();
      for (const q of queries) {
        for (const c of META_CONTEXTS) {
          // "base:" alone names every context of the namespace.
          const ns = c.name.slice(0, c.name.indexOf(':') + 1);
          if (q === c.name || q === ns) set.add(c);
        }
      }
      matched = META_CONTEXTS.filter((c) => set.has(c));
    }
    if (!list) this.contexts = matched;
    // For LIST the ids are reserved and sent as zero.
    const replies = matched.map((c) => encodeOptionReply(option, REP_META_CONTEXT, encodeMetaContext(list ? 0 : c.id, c.name)));
    replies.push(encodeOptionReply(option, REP_ACK));
    return { replies, next: 'continue' };
  }
}

function reply(option: number, type: number, message?: string): NegotiationStep {
  return { replies: [encodeOptionReply(option, type, message)], next: 'continue' };
}

function close(reason: string): NegotiationStep {
  return { replies: [], next: 'close', reason };
}
