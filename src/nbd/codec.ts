import {
  EXPORT_NAME_PADDING,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO_BLOCK_SIZE,
  INFO_EXPORT,
  MAX_STRING,
  NBDMAGIC,
  OPTION_REPLY_MAGIC_HI,
  OPTION_REPLY_MAGIC_LO,
  REP_ERR_INVALID,
  REPLY_FLAG_DONE,
  REPLY_TYPE_ERROR,
  REPLY_TYPE_NONE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  STRUCTURED_REPLY_SIZE,
  SIMPLE_REPLY_SIZE,
} from './protocol.js';

/**
 * Encoders for what the server sends and decoders for option data. Frames are
 * tiny and fixed, so they are written with Buffer's big-endian accessors
 * rather than defineStruct (which is for on-disk structures and decodes u64 as
 * bigint — too slow for a per-request path).
 */

/** An option the server answers with an error reply (the connection goes on). */
export class OptionError extends Error {
  override readonly name = 'OptionError';
  constructor(
    readonly reply: number,
    message: string,
  ) {
    super(message);
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at);
  buf.writeUInt32BE(value % 0x1_0000_0000, at + 4);
}

/** S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags (proto.md "Newstyle negotiation"). */
export function encodeGreeting(): Buffer {
  const b = Buffer.alloc(18);
  NBDMAGIC.copy(b, 0);
  IHAVEOPT.copy(b, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

/** S: reply magic, option, reply type, length, data (proto.md "Fixed newstyle negotiation"). */
export function encodeOptionReply(option: number, type: number, data?: Uint8Array | string): Buffer {
  const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const n = payload?.length ?? 0;
  const b = Buffer.allocUnsafe(20 + n);
  b.writeUInt32BE(OPTION_REPLY_MAGIC_HI, 0);
  b.writeUInt32BE(OPTION_REPLY_MAGIC_LO, 4);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(n, 16);
  if (payload) b.set(payload, 20);
  return b;
}

/** NBD_INFO_EXPORT: 16-bit type, 64-bit size, 16-bit transmission flags. */
export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(INFO_EXPORT, 0);
  writeU64(b, size, 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

/** NBD_INFO_BLOCK_SIZE: 16-bit type, then minimum, preferred and maximum block size (32 bits each). */
export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

/** NBD_INFO_NAME / NBD_INFO_DESCRIPTION: 16-bit type then the string. */
export function encodeInfoString(type: number, s: string): Buffer {
  const text = Buffer.from(s, 'utf8');
  const b = Buffer.allocUnsafe(2 + text.length);
  b.writeUInt16BE(type, 0);
  text.copy(b, 2);
  return b;
}

/** A 32-bit number followed by UTF-8 texts: the shape of NBD_REP_SERVER and NBD_REP_META_CONTEXT data. */
function u32ThenText(value: number, ...texts: string[]): Buffer {
  const parts = texts.map((t) => Buffer.from(t, 'utf8'));
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(value, 0);
  return Buffer.concat([head, ...parts]);
}

/** NBD_REP_SERVER data: 32-bit name length, name, then a description for humans. */
export function encodeServerEntry(name: string, description: string): Buffer {
  return u32ThenText(Buffer.byteLength(name, 'utf8'), name, description);
}

/** NBD_REP_META_CONTEXT data: 32-bit context id, then the context name. */
export function encodeMetaContext(id: number, name: string): Buffer {
  return u32ThenText(id, name);
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zeros unless the client asked for none. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING));
  writeU64(b, size, 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

/**
 * A simple reply header (magic, error, cookie) at the start of a buffer with
 * room for `dataLength` more bytes, so a read lands straight after it and the
 * whole reply goes out in one write.
 */
export function encodeSimpleReply(cookieHi: number, cookieLo: number, error: number, dataLength = 0): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE + dataLength);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeUInt32BE(cookieHi, 8);
  b.writeUInt32BE(cookieLo, 12);
  return b;
}

/** Structured reply chunk header: magic, flags, type, cookie, payload length. */
export function writeStructuredHeader(
  b: Buffer,
  at: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  length: number,
): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  b.writeUInt32BE(cookieHi, at + 8);
  b.writeUInt32BE(cookieLo, at + 12);
  b.writeUInt32BE(length, at + 16);
}

/** NBD_REPLY_TYPE_NONE with DONE: success of a structured reply with no payload. */
export function encodeStructuredDone(cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_SIZE);
  writeStructuredHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookieHi, cookieLo, 0);
  return b;
}

/** NBD_REPLY_TYPE_ERROR with DONE: 32-bit error, 16-bit message length, message. */
export function encodeStructuredError(cookieHi: number, cookieLo: number, error: number, message: string): Buffer {
  let m = Buffer.from(message, 'utf8');
  if (m.length > MAX_STRING) m = m.subarray(0, MAX_STRING);
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_SIZE + 6 + m.length);
  writeStructuredHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookieHi, cookieLo, 6 + m.length);
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(m.length, 24);
  m.copy(b, 26);
  return b;
}

/** Reads option data front to back; every overrun is NBD_REP_ERR_INVALID. */
class OptionReader {
  private pos = 0;
  constructor(
    private readonly data: Buffer,
    private readonly what: string,
  ) {}

  get remaining(): number {
    return this.data.length - this.pos;
  }

  u16(): number {
    this.need(2, '16-bit field');
    const v = this.data.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(): number {
    this.need(4, '32-bit field');
    const v = this.data.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** A string whose 32-bit length comes first. */
  string(field: string): string {
    const n = this.u32();
    if (n > MAX_STRING) throw new OptionError(REP_ERR_INVALID, `${this.what}: ${field} is ${n} bytes, longer than 4096`);
    this.need(n, field);
    const bytes = this.data.subarray(this.pos, this.pos + n);
    this.pos += n;
    return decodeString(bytes, `${this.what}: ${field}`);
  }

  end(): void {
    if (this.remaining !== 0) throw new OptionError(REP_ERR_INVALID, `${this.what}: ${this.remaining} unexpected bytes at the end`);
  }

  private need(n: number, field: string): void {
    if (this.remaining < n) {
      throw new OptionError(REP_ERR_INVALID, `${this.what}: ${field} runs past the option's length (${this.data.length} bytes)`);
    }
  }
}

/** Strings are UTF-8 without NUL (proto.md "Conventions"). */
export function decodeString(bytes: Uint8Array, what: string): string {
  let s: string;
  try {
    s = utf8.decode(bytes);
  } catch {
    throw new OptionError(REP_ERR_INVALID, `${what} is not valid UTF-8`);
  }
  if (s.includes('\0')) throw new OptionError(REP_ERR_INVALID, `${what} contains a NUL character`);
  return s;
}

/** NBD_OPT_INFO / NBD_OPT_GO data: 32-bit name length, name, 16-bit count, that many 16-bit info types. */
export function decodeExportRequest(data: Buffer, what: string): { name: string; infos: number[] } {
  const r = new OptionReader(data, what);
  const name = r.string('export name');
  const count = r.u16();
  if (r.remaining !== count * 2) {
    throw new OptionError(REP_ERR_INVALID, `${what}: ${count} information requests need ${count * 2} bytes, ${r.remaining} remain`);
  }
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(r.u16());
  return { name, infos };
}

/** NBD_OPT_LIST/SET_META_CONTEXT data: export name, 32-bit query count, queries (each length-prefixed). */
export function decodeMetaContextRequest(data: Buffer, what: string): { name: string; queries: string[] } {
  const r = new OptionReader(data, what);
  const name = r.string('export name');
  const count = r.u32();
  // Each query takes at least its 4-byte length: a count beyond that is a lie, caught before looping.
  if (count > r.remaining / 4) throw new OptionError(REP_ERR_INVALID, `${what}: ${count} queries cannot fit in ${r.remaining} bytes`);
  const queries: string[] = [];
  for (let i = 0; i < count; i++) queries.push(r.string('query'));
  r.end();
  return { name, queries };
}
