import { crc32c } from '../../core/crc32c.js';
import { guidFromString, guidToString } from '../../core/guid.js';

/**
 * Fixed facts of the VHDX layout (VHDX spec 1.00, section 2 "File Layout"),
 * shared by the structure modules and the rest of the folder: where the
 * header section's structures sit, the size limits, the GUIDs, and the
 * CRC-32C checksum every structure uses. No structure of its own lives here.
 *
 *   0        64K       128K      192K       256K       320K          1M
 *   | file id | header 1 | header 2 | region 1 | region 2 | reserved |  log, BAT, metadata, blocks ...
 *
 * Everything after the first MiB is placed by the region table and the
 * headers' log fields, always at 1 MiB multiples.
 */
const KiB = 1024;
export const MiB = 1024 * 1024;
const TiB = MiB * MiB;

export const HEADER_OFFSETS = [64 * KiB, 128 * KiB] as const;
export const REGION_TABLE_OFFSETS = [192 * KiB, 256 * KiB] as const;
/** The header section: nothing located by a field may start inside it (2.1). */
export const HEADER_SECTION_SIZE = 1 * MiB;

/** Largest virtual disk the specification allows (2.6.2.2: 64 TiB). */
export const MAX_SIZE = 64 * TiB;
/** Block sizes File Parameters may name (2.6.2.1): a power of two from 1 MiB to 256 MiB. */
export const MIN_BLOCK_SIZE = 1 * MiB;
export const MAX_BLOCK_SIZE = 256 * MiB;
/** Sector bitmap blocks are always 1 MiB (2.5.1), one bit per logical sector. */
export const SECTOR_BITMAP_BLOCK_SIZE = 1 * MiB;
/** Log entries are made of 4 KiB sectors (2.3). */
export const LOG_SECTOR = 4 * KiB;

/** GUIDs as they appear in the specification's text form (stored mixed-endian, core/guid.ts). */
export const GUIDS = {
  batRegion: '2dc27766-f623-4200-9d64-115e9bfd4a08',
  metadataRegion: '8b7ca206-4790-4b9a-b8fe-575f050f886e',
  fileParameters: 'caa16737-fa36-4d43-b3b6-33f0aa44e76b',
  virtualDiskSize: '2fa54224-cd1b-4876-b211-5dbed83bf4b8',
  page83Data: 'beca12ab-b2e6-4523-93ef-c309e000c746',
  logicalSectorSize: '8141bf1d-a96f-4709-ba47-f233a8faab5f',
  physicalSectorSize: 'cda348c7-445d-4471-9cc9-e9885251c556',
  parentLocator: 'a8d35f2d-b30b-454d-abf7-d3d84834ab0c',
  vhdxParentLocatorType: 'b04aefb7-d19e-4a81-b789-25b8e9445913',
} as const;

export const guidBytes = (s: string): Uint8Array => guidFromString(s);
export const guidText = (b: Uint8Array): string => guidToString(b).toLowerCase();

/**
 * CRC-32C over `buf` with the 4-byte checksum field at `at` taken as zero,
 * as every VHDX checksum is defined (2.2.2 header, 2.2.3 region table, 2.3.1.1 log entry).
 */
export function checksumWithHole(buf: Uint8Array, at = 4): number {
  const head = crc32c(buf.subarray(0, at));
  const zeroed = crc32c(new Uint8Array(4), head);
  return crc32c(buf.subarray(at + 4), zeroed);
}

/** Write the checksum into a structure whose checksum field is at `at`. */
export function sealChecksum(buf: Uint8Array, at = 4): void {
  new DataView(buf.buffer, buf.byteOffset, buf.byteLength).setUint32(at, checksumWithHole(buf, at), true);
}

export function sig(text: string): number {
  return (text.charCodeAt(0) | (text.charCodeAt(1) << 8) | (text.charCodeAt(2) << 16) | (text.charCodeAt(3) << 24)) >>> 0;
}

/** Two byte ranges overlap (half-open). */
export function overlaps(a: number, alen: number, b: number, blen: number): boolean {
  return alen > 0 && blen > 0 && a < b + blen && b < a + alen;
}
