import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { u64ToNumber } from '../../core/u64.js';

/**
 * The add-cow header (docs/formats/add-cow.md, "Header"; add-cow v4 patch,
 * docs/specs/add-cow.txt). Packed, big-endian, 2068 bytes:
 *
 *   0     8     magic "ADD_COW\xff"
 *   8     4     version (1)
 *   12    1024  backing file name, NUL-terminated ("" = no backing file)
 *   1036  1024  image file name, NUL-terminated (never empty)
 *   2060  8     virtual size in bytes (a multiple of 512)
 *   2068        the COW bitmap starts here
 */
const MAGIC = new Uint8Array([0x41, 0x44, 0x44, 0x5f, 0x43, 0x4f, 0x57, 0xff]); // "ADD_COW\xff"
const VERSION = 1;
export const NAME_FIELD = 1024;
export const SECTOR = 512;

export const HeaderStruct = defineStruct('add-cow header', 'be', 2068, [
  { name: 'magic', type: 'bytes', size: 8 },
  { name: 'version', type: 'u32' },
  { name: 'backingFile', type: 'bytes', size: NAME_FIELD },
  { name: 'imageFile', type: 'bytes', size: NAME_FIELD },
  { name: 'size', type: 'u64' },
] as const);

export const HEADER_SIZE = HeaderStruct.SIZE;
export const BACKING_FIELD_OFFSET = HeaderStruct.offsets.backingFile;
export const SIZE_FIELD_OFFSET = HeaderStruct.offsets.size;

export interface AddCowHeader {
  /** "" when the image has no backing file. */
  backingFile: string;
  imageFile: string;
  /** Virtual size in bytes. */
  size: number;
}

export function hasMagic(head: Uint8Array): boolean {
  return head.length >= MAGIC.length && MAGIC.every((b, i) => head[i] === b);
}

/** Bytes of bitmap for a virtual size: one bit per 512-byte sector, rounded up to whole bytes. */
export function bitmapBytes(size: number): number {
  return Math.ceil(size / SECTOR / 8);
}

/**
 * A name field holds UTF-8 text ended by a NUL inside the field. A field with
 * no NUL is rejected: the v4 patch read it with a string copy bounded only by
 * the field, so such a header means damage, not a 1024-byte name.
 */
function decodeName(field: Uint8Array, what: string, path: string): string {
  const end = field.indexOf(0);
  if (end < 0) throw new BlockError('corrupt', `add-cow ${what} name is not NUL-terminated within its ${NAME_FIELD} bytes`, { path });
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(field.subarray(0, end));
  } catch (e) {
    throw new BlockError('corrupt', `add-cow ${what} name is not valid UTF-8`, { path }, { cause: e });
  }
}

/** Encode a name for a header field, failing (invalid-argument) when it cannot be stored. */
function encodeName(name: string, what: string): Uint8Array {
  const bytes = new TextEncoder().encode(name);
  if (bytes.includes(0)) throw new BlockError('invalid-argument', `add-cow ${what} name contains a NUL character`);
  if (bytes.length >= NAME_FIELD) {
    throw new BlockError('invalid-argument', `add-cow ${what} name is ${bytes.length} bytes; at most ${NAME_FIELD - 1} fit`, { name });
  }
  return bytes;
}

/** Decode and validate; `maxSize` is the format limit (the bitmap is held in memory). */
export function decodeHeader(buf: Uint8Array, path: string, maxSize: number): AddCowHeader {
  if (buf.length < HEADER_SIZE) {
    throw new BlockError('corrupt', `add-cow header is truncated (${buf.length} of ${HEADER_SIZE} bytes)`, { path });
  }
  const h = HeaderStruct.decode(buf);
  if (!hasMagic(h.magic)) throw new BlockError('corrupt', 'not an add-cow file (bad magic)', { path, offset: 0 });
  if (h.version !== VERSION) {
    throw new BlockError('unsupported', `add-cow version ${h.version} is not supported (only ${VERSION})`, { path, offset: 8 });
  }
  const size = u64ToNumber(h.size, 'add-cow virtual size', { path, offset: SIZE_FIELD_OFFSET });
  if (size % SECTOR !== 0) {
    throw new BlockError('corrupt', `add-cow virtual size ${size} is not a multiple of ${SECTOR}`, { path, offset: SIZE_FIELD_OFFSET });
  }
  if (size > maxSize) {
    throw new BlockError('unsupported', `add-cow virtual size ${size} exceeds the supported ${maxSize} bytes`, { path, offset: SIZE_FIELD_OFFSET });
  }
  const backingFile = decodeName(h.backingFile, 'backing file', path);
  const imageFile = decodeName(h.imageFile, 'image file', path);
  if (!imageFile) throw new BlockError('corrupt', 'add-cow image file name is empty', { path, offset: HeaderStruct.offsets.imageFile });
  return { backingFile, imageFile, size };
}

export function encodeHeader(h: AddCowHeader): Uint8Array {
  return HeaderStruct.encode({
    magic: MAGIC,
    version: VERSION,
    backingFile: encodeName(h.backingFile, 'backing file'),
    imageFile: encodeName(h.imageFile, 'image file'),
    size: BigInt(h.size),
  });
}

/** The backing name field alone (rebase -u rewrites only this). */
export function encodeBackingField(name: string): Uint8Array {
  const field = new Uint8Array(NAME_FIELD);
  field.set(encodeName(name, 'backing file'));
  return field;
}

/** The size field alone (resize rewrites only this). */
export function encodeSizeField(size: number): Uint8Array {
  const field = new Uint8Array(8);
  new DataView(field.buffer).setBigUint64(0, BigInt(size), false);
  return field;
}
