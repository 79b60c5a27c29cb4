import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { u64ToNumber } from '../../core/u64.js';

/**
 * The hard disk footer (VHD spec 2006, "Hard Disk Footer Format"): 512 bytes,
 * big-endian, at the end of every VHD; dynamic and differencing disks keep a
 * copy at offset 0 as well. Fields after `savedState` are reserved (427 zero bytes).
 */
export const Footer = defineStruct('VHD footer', 'be', 512, [
  { name: 'cookie', type: 'bytes', size: 8 },
  { name: 'features', type: 'u32' },
  { name: 'fileFormatVersion', type: 'u32' },
  { name: 'dataOffset', type: 'u64' },
  { name: 'timestamp', type: 'u32' },
  { name: 'creatorApplication', type: 'bytes', size: 4 },
  { name: 'creatorVersion', type: 'u32' },
  { name: 'creatorHostOs', type: 'u32' },
  { name: 'originalSize', type: 'u64' },
  { name: 'currentSize', type: 'u64' },
  { name: 'cylinders', type: 'u16' },
  { name: 'heads', type: 'u8' },
  { name: 'sectorsPerTrack', type: 'u8' },
  { name: 'diskType', type: 'u32' },
  { name: 'checksum', type: 'u32' },
  { name: 'uniqueId', type: 'bytes', size: 16 },
  { name: 'savedState', type: 'u8' },
]);

export const FOOTER_SIZE = Footer.SIZE;

/** The VHD sector: BAT entries, block offsets, bitmaps and CHS geometry all count 512-byte sectors (VHD spec, "Hard Disk Footer Format" and "Block Allocation Table"). */
export const SECTOR = 512;
const FOOTER_COOKIE = 'conectix';
/** "Features": bit 1 is reserved and must always be set (spec, "Features"). */
export const FEATURES_RESERVED = 0x2;
export const FILE_FORMAT_VERSION = 0x00010000;
/** Fixed disks have no dynamic header: data offset is all ones. */
const NO_DATA_OFFSET = 0xffffffffffffffffn;

const DiskType = { fixed: 2, dynamic: 3, differencing: 4 } as const;
type DiskTypeName = keyof typeof DiskType;

/** Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC). */
export const VHD_EPOCH_UNIX = 946684800;

/** Checksum (spec, "Checksum"): one's complement of the byte sum, the checksum field counted as zero. */
export function vhdChecksum(buf: Uint8Array, checksumOffset: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) sum += buf[i];
  for (let i = checksumOffset; i < checksumOffset + 4 && i < buf.length; i++) sum -= buf[i];
  return ~sum >>> 0;
}

export interface VhdFooter {
  features: number;
  fileFormatVersion: number;
  /** Offset of the dynamic header; null for fixed disks. */
  dataOffset: number | null;
  timestamp: number;
  creatorApplication: string;
  creatorVersion: number;
  creatorHostOs: number;
  originalSize: number;
  currentSize: number;
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
  diskType: DiskTypeName;
  uniqueId: Uint8Array;
  savedState: number;
}

export interface DecodedFooter {
  footer: VhdFooter;
  checksumOk: boolean;
}

export function hasFooterCookie(buf: Uint8Array, at = 0): boolean {
  if (buf.length < at + 8) return false;
  for (let i = 0; i < 8; i++) if (buf[at + i] !== FOOTER_COOKIE.charCodeAt(i)) return false;
  return true;
}

/** Decode and validate one footer copy. The checksum is reported, not enforced (the caller decides). */
export function decodeFooter(buf: Uint8Array, where: { path?: string; offset: number }): DecodedFooter {
  if (buf.length < FOOTER_SIZE) throw new BlockError('corrupt', 'VHD footer is truncated', { ...where });
  if (!hasFooterCookie(buf)) throw new BlockError('corrupt', `no VHD footer (cookie 'conectix') at offset ${where.offset}`, { ...where });
  const raw = Footer.decode(buf);
  const checksumOk = vhdChecksum(buf.subarray(0, FOOTER_SIZE), Footer.offsets.checksum) === raw.checksum;
  if (raw.fileFormatVersion >>> 16 !== 1) {
    throw new BlockError('unsupported', `VHD file format version ${raw.fileFormatVersion.toString(16)} is not 1.x`, { ...where });
  }
  const type = (Object.keys(DiskType) as DiskTypeName[]).find((k) => DiskType[k] === raw.diskType);
  if (!type) {
    // Types 1, 5 and 6 are deprecated in the spec; anything else is not a disk type at all.
    const known = [1, 5, 6].includes(raw.diskType);
    throw new BlockError(known ? 'unsupported' : 'corrupt', `VHD disk type ${raw.diskType} is ${known ? 'deprecated and not supported' : 'not valid'}`, { ...where });
  }
  const currentSize = u64ToNumber(raw.currentSize, 'VHD current size', { ...where });
  if (currentSize % 512 !== 0) throw new BlockError('corrupt', `VHD current size ${currentSize} is not a whole number of sectors`, { ...where });
  const originalSize = raw.originalSize > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(raw.originalSize);
  let dataOffset: number | null = null;
  if (type !== 'fixed') dataOffset = u64ToNumber(raw.dataOffset, 'VHD data offset (dynamic header position)', { ...where });
  return {
    checksumOk,
    footer: {
      features: raw.features,
      fileFormatVersion: raw.fileFormatVersion,
      dataOffset,
      timestamp: raw.timestamp,
      creatorApplication: fourCC(raw.creatorApplication),
      creatorVersion: raw.creatorVersion,
      creatorHostOs: raw.creatorHostOs,
      originalSize,
      currentSize,
      cylinders: raw.cylinders,
      heads: raw.heads,
      sectorsPerTrack: raw.sectorsPerTrack,
      diskType: type,
      uniqueId: raw.uniqueId,
      savedState: raw.savedState,
    },
  };
}

export function encodeFooter(f: VhdFooter): Uint8Array {
  const buf = Footer.encode({
    cookie: new TextEncoder().encode(FOOTER_COOKIE),
    features: f.features,
    fileFormatVersion: f.fileFormatVersion,
    dataOffset: f.dataOffset === null ? NO_DATA_OFFSET : BigInt(f.dataOffset),
    timestamp: f.timestamp,
    creatorApplication: fromFourCC(f.creatorApplication),
    creatorVersion: f.creatorVersion,
    creatorHostOs: f.creatorHostOs,
    originalSize: BigInt(f.originalSize),
    currentSize: BigInt(f.currentSize),
    cylinders: f.cylinders,
    heads: f.heads,
    sectorsPerTrack: f.sectorsPerTrack,
    diskType: DiskType[f.diskType],
    checksum: 0,
    uniqueId: f.uniqueId,
    savedState: f.savedState,
  });
  new DataView(buf.buffer).setUint32(Footer.offsets.checksum, vhdChecksum(buf, Footer.offsets.checksum));
  return buf;
}

/** A four-character code as text; NULs (XenServer's "tap\0") are kept visible as \0. */
function fourCC(b: Uint8Array): string {
  return Array.from(b, (c) => (c === 0 ? '\\0' : c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, '0')}`)).join('');
}

function fromFourCC(s: string): Uint8Array {
  const out = new Uint8Array(4);
  const bytes = s.replace(/\\0/g, '\0');
  for (let i = 0; i < 4 && i < bytes.length; i++) out[i] = bytes.charCodeAt(i) & 0xff;
  return out;
}

export function hostOsName(code: number): string {
  if (code === 0x5769326b) return 'Windows';
  if (code === 0x4d616320) return 'Macintosh';
  return `0x${code.toString(16).padStart(8, '0')}`;
}

// ---------------------------------------------------------------------------
// CHS geometry (spec, Appendix "CHS Calculation")

interface Chs {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/** Largest geometry the footer can record: 65535 cylinders, 16 heads, 255 sectors per track. */
const MAX_CHS_SECTORS = 65535 * 16 * 255;
const MAX_CHS: Chs = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 };

/** The spec's appendix algorithm: geometry for a disk of `totalSectors` (rounds down). */
export function chsForSectors(totalSectors: number): Chs {
  const total = Math.min(totalSectors, MAX_CHS_SECTORS);
  let spt: number;
  let heads: number;
  let cth: number;
  if (total >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(total / spt);
  } else {
    spt = 17;
    cth = Math.floor(total / spt);
    heads = Math.max(4, Math.floor((cth + 1023) / 1024));
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(total / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(total / spt);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

export function chsBytes(g: Chs): number {
  return g.cylinders * g.heads * g.sectorsPerTrack * 512;
}

/** The maximum geometry, 65535/16/255: qemu then takes the current size whatever the creator. */
export function isMaxGeometry(g: Chs): boolean {
  return g.cylinders === MAX_CHS.cylinders && g.heads === MAX_CHS.heads && g.sectorsPerTrack === MAX_CHS.sectorsPerTrack;
}

/**
 * The geometry to record for a disk of exactly `size` bytes, so that every
 * reader takes the same size from the footer (docs/formats/vhd.md, "Size
 * rounding"): the appendix geometry when it spells the size exactly;
 * otherwise the maximum geometry 65535/16/255, as Disk2VHD writes. A reader
 * that sizes a VHD by its geometry (qemu for creators it does not know:
 * block/vpc.c takes the current size only from "win ", "qem2", "d2v ",
 * "CTXS", "tap\0" or when the geometry is the maximum one) would otherwise
 * see a disk up to a track smaller than the current size says; Hyper-V and
 * libvhdi do not read the geometry at all.
 */
export function geometryForSize(size: number): Chs {
  const g = chsForSectors(Math.floor(size / 512));
  return chsBytes(g) === size ? g : { ...MAX_CHS };
}

/**
 * The size a disk of `requested` bytes gets without force_size: the smallest
 * CHS-expressible size not below the request (the same rule qemu-img and
 * Virtual PC follow, so the disk looks the same size to tools that read the
 * geometry). At the geometry's maximum (about 127 GiB) CHS cannot grow and the
 * requested size is kept exactly.
 */
export function roundSizeToChs(requested: number): { size: number; chs: Chs } {
  const sectors = Math.ceil(requested / 512);
  if (sectors >= MAX_CHS_SECTORS) return { size: sectors * 512, chs: chsForSectors(sectors) };
  // The geometry for n sectors covers at least n - (heads*spt) sectors, so a
  // short search upward finds the first geometry that covers the request.
  for (let n = sectors; ; n++) {
    const chs = chsForSectors(n);
    const bytes = chsBytes(chs);
    if (bytes >= sectors * 512) return { size: bytes, chs };
    if (n >= MAX_CHS_SECTORS) return { size: sectors * 512, chs };
  }
}
