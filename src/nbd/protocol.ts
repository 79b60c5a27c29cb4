/**
 * NBD protocol constants (NetworkBlockDevice/nbd doc/proto.md, fixed newstyle
 * negotiation with the INFO, STRUCTURED_REPLY, WRITE_ZEROES and BLOCK_STATUS
 * extensions). All integers on the wire are big-endian.
 */

/** "NBDMAGIC": first 8 bytes the server sends (proto.md "Newstyle negotiation"). */
export const NBDMAGIC = Buffer.from('NBDMAGIC', 'latin1');
/** "IHAVEOPT": second server magic, and the magic of every client option. */
export const IHAVEOPT = Buffer.from('IHAVEOPT', 'latin1');
/** Magic of option replies, 0x0003e889045565a9, split in two 32-bit halves. */
export const OPTION_REPLY_MAGIC_HI = 0x0003e889;
export const OPTION_REPLY_MAGIC_LO = 0x045565a9;

export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Bytes: option header, request header, simple and structured reply headers. */
export const OPTION_HEADER_SIZE = 16;
export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_REPLY_SIZE = 20;
/** Zero padding after the NBD_OPT_EXPORT_NAME reply unless the client asked for none. */
export const EXPORT_NAME_PADDING = 124;

// Handshake flags (server) and client flags.
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;
export const KNOWN_CLIENT_FLAGS = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// Transmission flags (16 bits, sent with the export size).
export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;
export const FLAG_SEND_TRIM = 1 << 5;
export const FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const FLAG_SEND_DF = 1 << 7;
export const FLAG_CAN_MULTI_CONN = 1 << 8;
export const FLAG_SEND_FAST_ZERO = 1 << 11;

// Options.
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
/** Named in logs only: vdisk does not implement it (the client gets NBD_REP_ERR_UNSUP). */
const OPT_PEEK_EXPORT = 4;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;
export const OPT_EXTENDED_HEADERS = 11;

// Option replies; errors have bit 31 set.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
export const REP_ERR = 0x80000000;
export const REP_ERR_UNSUP = REP_ERR + 1;
export const REP_ERR_INVALID = REP_ERR + 3;
export const REP_ERR_UNKNOWN = REP_ERR + 6;
export const REP_ERR_TOO_BIG = REP_ERR + 9;

// NBD_REP_INFO payload types.
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// Commands.
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;
/** Named in logs only: vdisk does not offer it (no NBD_FLAG_SEND_RESIZE). */
const CMD_RESIZE = 8;

// Command flags.
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types.
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = (1 << 15) + 1;

// Error values (proto.md "Error values"): the only ones a reply may carry.
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

// base:allocation flags.
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

export const CONTEXT_BASE_ALLOCATION = 'base:allocation';
/** qemu's extension: which layer of the chain answers (1 = top, 0 = none). */
export const CONTEXT_ALLOCATION_DEPTH = 'qemu:allocation-depth';

/**
 * Longest block a READ or WRITE may carry. proto.md "Block size constraints":
 * a client that learns nothing else assumes 32 MiB, so this is also the safe
 * default for clients that enter with NBD_OPT_EXPORT_NAME.
 */
export const DEFAULT_MAX_BLOCK = 32 << 20;
/** Strings (export names, queries) are at most 4096 bytes (proto.md "Conventions"). */
export const MAX_STRING = 4096;

export function optionName(option: number): string {
  return OPTION_NAMES[option] ?? `option ${option}`;
}

export function commandName(command: number): string {
  return COMMAND_NAMES[command] ?? `command ${command}`;
}

const OPTION_NAMES: Record<number, string> = {
  [OPT_EXPORT_NAME]: 'NBD_OPT_EXPORT_NAME',
  [OPT_ABORT]: 'NBD_OPT_ABORT',
  [OPT_LIST]: 'NBD_OPT_LIST',
  [OPT_PEEK_EXPORT]: 'NBD_OPT_PEEK_EXPORT',
  [OPT_STARTTLS]: 'NBD_OPT_STARTTLS',
  [OPT_INFO]: 'NBD_OPT_INFO',
  [OPT_GO]: 'NBD_OPT_GO',
  [OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
  [OPT_LIST_META_CONTEXT]: 'NBD_OPT_LIST_META_CONTEXT',
  [OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
  [OPT_EXTENDED_HEADERS]: 'NBD_OPT_EXTENDED_HEADERS',
};

const COMMAND_NAMES: Record<number, string> = {
  [CMD_READ]: 'NBD_CMD_READ',
  [CMD_WRITE]: 'NBD_CMD_WRITE',
  [CMD_DISC]: 'NBD_CMD_DISC',
  [CMD_FLUSH]: 'NBD_CMD_FLUSH',
  [CMD_TRIM]: 'NBD_CMD_TRIM',
  [CMD_CACHE]: 'NBD_CMD_CACHE',
  [CMD_WRITE_ZEROES]: 'NBD_CMD_WRITE_ZEROES',
  [CMD_BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
  [CMD_RESIZE]: 'NBD_CMD_RESIZE',
};
