import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { isPowerOfTwo, u64ToNumber } from '../../core/u64.js';
import { decodeUtf16, encodeUtf16 } from '../../core/utf16.js';
import { vhdChecksum } from './footer.js';
import { LOCATOR_COUNT, ParentLocatorEntry } from './parent-locator.js';

/**
 * The dynamic disk header (VHD spec 2006, "Dynamic Disk Header Format"):
 * 1024 bytes, big-endian, at the footer's data offset (usually 512). Present
 * in dynamic and differencing disks. The last 256 bytes are reserved.
 *
 *     0 cookie "cxsparse"        8 data offset (unused, all ones)
 *    16 table (BAT) offset      24 header version    28 max table entries
 *    32 block size              36 checksum          40 parent UUID (16)
 *    56 parent timestamp        60 reserved          64 parent unicode name (512, UTF-16BE)
 *   576 parent locators (8 x 24)                    768 reserved (256)
 */
export const DynamicHeader = defineStruct('VHD dynamic header', 'be', 1024, [
  { name: 'cookie', type: 'bytes', size: 8 },
  { name: 'dataOffset', type: 'u64' },
  { name: 'tableOffset', type: 'u64' },
  { name: 'headerVersion', type: 'u32' },
  { name: 'maxTableEntries', type: 'u32' },
  { name: 'blockSize', type: 'u32' },
  { name: 'checksum', type: 'u32' },
  { name: 'parentUniqueId', type: 'bytes', size: 16 },
  { name: 'parentTimestamp', type: 'u32' },
  { name: 'reserved1', type: 'u32' },
  { name: 'parentUnicodeName', type: 'bytes', size: 512 },
  { name: 'parentLocators', type: 'bytes', size: LOCATOR_COUNT * ParentLocatorEntry.SIZE },
]);

export const DYNAMIC_HEADER_SIZE = DynamicHeader.SIZE;
const DYNAMIC_HEADER_COOKIE = 'cxsparse';
export const HEADER_VERSION = 0x00010000;
/** Largest block size accepted. The spec's default is 2 MiB; anything above 256 MiB is taken as forged. */
export const MAX_BLOCK_SIZE = 256 << 20;

export interface VhdDynamicHeader {
  tableOffset: number;
  headerVersion: number;
  maxTableEntries: number;
  blockSize: number;
  parentUniqueId: Uint8Array;
  parentTimestamp: number;
  parentUnicodeName: string;
  /** The raw 192-byte locator table (decoded by parent-locator.ts). */
  parentLocators: Uint8Array;
}

export function decodeDynamicHeader(buf: Uint8Array, where: { path?: string; offset: number }): { header: VhdDynamicHeader; checksumOk: boolean } {
  const raw = DynamicHeader.decode(buf);
  if (new TextDecoder('latin1').decode(raw.cookie) !== DYNAMIC_HEADER_COOKIE) {
    throw new BlockError('corrupt', `no VHD dynamic header (cookie 'cxsparse') at offset ${where.offset}`, { ...where });
  }
  const checksumOk = vhdChecksum(buf.subarray(0, DYNAMIC_HEADER_SIZE), DynamicHeader.offsets.checksum) === raw.checksum;
  if (raw.headerVersion >>> 16 !== 1) {
    throw new BlockError('unsupported', `VHD dynamic header version ${raw.headerVersion.toString(16)} is not 1.x`, { ...where });
  }
  // Blocks are whole sectors and the bitmap addresses them bit by bit: a power of two from one sector up.
  if (!isPowerOfTwo(raw.blockSize) || raw.blockSize < 512 || raw.blockSize > MAX_BLOCK_SIZE) {
    throw new BlockError('corrupt', `VHD block size ${raw.blockSize} is not a power of two between 512 bytes and 256 MiB`, { ...where });
  }
  return {
    checksumOk,
    header: {
      tableOffset: u64ToNumber(raw.tableOffset, 'VHD BAT offset', { ...where }),
      headerVersion: raw.headerVersion,
      maxTableEntries: raw.maxTableEntries,
      blockSize: raw.blockSize,
      parentUniqueId: raw.parentUniqueId,
      parentTimestamp: raw.parentTimestamp,
      parentUnicodeName: decodeUtf16(raw.parentUnicodeName, 'be'),
      parentLocators: raw.parentLocators,
    },
  };
}

export function encodeDynamicHeader(h: VhdDynamicHeader): Uint8Array {
  const name = encodeUtf16(h.parentUnicodeName, 'be');
  if (name.length > 512) throw new BlockError('invalid-argument', `parent name is longer than the 255 characters a VHD can record: ${h.parentUnicodeName}`);
  const buf = DynamicHeader.encode({
    cookie: new TextEncoder().encode(DYNAMIC_HEADER_COOKIE),
    dataOffset: 0xffffffffffffffffn,
    tableOffset: BigInt(h.tableOffset),
    headerVersion: h.headerVersion,
    maxTableEntries: h.maxTableEntries,
    blockSize: h.blockSize,
    checksum: 0,
    parentUniqueId: h.parentUniqueId,
    parentTimestamp: h.parentTimestamp,
    reserved1: 0,
    parentUnicodeName: name,
    parentLocators: h.parentLocators,
  });
  new DataView(buf.buffer).setUint32(DynamicHeader.offsets.checksum, vhdChecksum(buf, DynamicHeader.offsets.checksum));
  return buf;
}
