import { BlockError } from '../../core/errors.js';
import { HEADER_SECTION_SIZE, LOG_SECTOR, MiB, SECTOR_BITMAP_BLOCK_SIZE } from './layout.js';

/**
 * Block Allocation Table (VHDX spec 2.5): 64-bit little-endian entries,
 *
 *   bits 0..2   state
 *   bits 3..19  reserved
 *   bits 20..63 file offset in MiB
 *
 * Payload entries and sector-bitmap entries are interleaved: after every
 * `chunkRatio` payload entries comes the entry of the sector bitmap block
 * covering them (2.5.1: chunk ratio = 2^23 * logical sector size / block size,
 * because one 1 MiB bitmap block has 2^23 bits, one per logical sector).
 *
 * The table stays in memory as its raw bytes (rounded up to whole 4 KiB
 * sectors, the unit the log updates): no object per entry, so a 64 TiB disk
 * with 32 MiB blocks costs 16 MiB and opens with one read.
 */
export const PAYLOAD_NOT_PRESENT = 0;
const PAYLOAD_UNDEFINED = 1;
export const PAYLOAD_ZERO = 2;
export const PAYLOAD_UNMAPPED = 3;
export const PAYLOAD_FULLY_PRESENT = 6;
export const PAYLOAD_PARTIALLY_PRESENT = 7;
const SB_NOT_PRESENT = 0;
export const SB_PRESENT = 6;

/** Bytes per entry (2.5: 64 bits). */
export const BAT_ENTRY_SIZE = 8;
/** The state field, bits 0..2 of an entry (2.5.1). */
const BAT_STATE_MASK = 7;

interface BatGeometry {
  blockSize: number;
  logicalSectorSize: number;
  virtualSize: number;
  hasParent: boolean;
  chunkRatio: number;
  dataBlocks: number;
  bitmapBlocks: number;
  entryCount: number;
}

export function batGeometry(virtualSize: number, blockSize: number, logicalSectorSize: number, hasParent: boolean): BatGeometry {
  const chunkRatio = (2 ** 23 * logicalSectorSize) / blockSize;
  const dataBlocks = Math.ceil(virtualSize / blockSize);
  const bitmapBlocks = Math.ceil(dataBlocks / chunkRatio);
  // 2.5: a differencing disk has a bitmap entry after every chunk, the last one included;
  // other disks need none after the last (partial) chunk.
  const entryCount = hasParent ? bitmapBlocks * (chunkRatio + 1) : dataBlocks + Math.floor((dataBlocks - 1) / chunkRatio);
  return { blockSize, logicalSectorSize, virtualSize, hasParent, chunkRatio, dataBlocks, bitmapBlocks, entryCount };
}

/** Bytes the BAT region must hold, rounded up to 1 MiB (regions are 1 MiB multiples). */
export function batRegionLength(g: BatGeometry): number {
  return Math.ceil((g.entryCount * BAT_ENTRY_SIZE) / MiB) * MiB;
}

export class Bat {
  readonly bytes: Uint8Array;
  private readonly dv: DataView;

  constructor(
    readonly geometry: BatGeometry,
    /** Whole 4 KiB sectors covering every entry. */
    bytes: Uint8Array,
  ) {
    this.bytes = bytes;
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Bytes to load for `g`: the entries rounded up to whole log sectors. */
  static loadLength(g: BatGeometry): number {
    return Math.ceil((g.entryCount * BAT_ENTRY_SIZE) / LOG_SECTOR) * LOG_SECTOR;
  }

  payloadIndex(block: number): number {
    return block + Math.floor(block / this.geometry.chunkRatio);
  }

  bitmapIndex(chunk: number): number {
    return chunk * (this.geometry.chunkRatio + 1) + this.geometry.chunkRatio;
  }

  state(i: number): number {
    return this.dv.getUint32(i * BAT_ENTRY_SIZE, true) & BAT_STATE_MASK;
  }

  /** File offset in bytes (exact: a MiB count times 2^20 is a power-of-two product). */
  offset(i: number): number {
    const lo = this.dv.getUint32(i * BAT_ENTRY_SIZE, true);
    const hi = this.dv.getUint32(i * BAT_ENTRY_SIZE + 4, true);
    return ((lo >>> 20) + hi * 4096) * MiB;
  }

  /** Encode an entry into any 8 bytes (the BAT itself, or a sector being logged). */
  static encode(into: DataView, at: number, state: number, fileOffset: number): void {
    const mib = fileOffset / MiB;
    into.setUint32(at, (state & BAT_STATE_MASK) | ((mib % 4096) << 20), true);
    into.setUint32(at + 4, Math.floor(mib / 4096), true);
  }

  /**
   * Validate every entry once at open (2.5.1, 2.5.2): known states only,
   * PARTIALLY_PRESENT only in differencing disks and only with its chunk's
   * bitmap present, allocated blocks past the header section and inside the
   * file. Returns the end of the highest allocated block.
   */
  validate(fileSize: number, path?: string): number {
    const g = this.geometry;
    let end = 0;
    const fail = (i: number, msg: string) => {
      throw new BlockError('corrupt', `BAT entry ${i}: ${msg}`, { path, batEntry: i });
    };
    const checkRange = (i: number, length: number) => {
      const off = this.offset(i);
      if (off < HEADER_SECTION_SIZE) fail(i, `points into the header section (offset ${off})`);
      if (off + length > fileSize) fail(i, `points past the end of the file (offset ${off}, file size ${fileSize})`);
      if (off + length > end) end = off + length;
    };
    for (let chunk = 0; chunk * g.chunkRatio < g.dataBlocks; chunk++) {
      const first = chunk * g.chunkRatio;
      const last = Math.min(g.dataBlocks, first + g.chunkRatio);
      let bitmapPresent = false;
      const bi = this.bitmapIndex(chunk);
      // Sector bitmaps matter only to differencing disks; other disks' bitmap
      // entries are ignored (QEMU before 8.0 wrote garbage there, issue 727).
      if (g.hasParent && bi < g.entryCount) {
        const s = this.state(bi);
        if (s === SB_PRESENT) {
          bitmapPresent = true;
          checkRange(bi, SECTOR_BITMAP_BLOCK_SIZE);
        } else if (s !== SB_NOT_PRESENT) fail(bi, `invalid sector bitmap state ${s}`);
      }
      for (let block = first; block < last; block++) {
        const i = block + chunk;
        const s = this.state(i);
        if (s === PAYLOAD_FULLY_PRESENT || s === PAYLOAD_PARTIALLY_PRESENT) {
          if (s === PAYLOAD_PARTIALLY_PRESENT) {
            if (!g.hasParent) fail(i, 'PARTIALLY_PRESENT in a disk without a parent');
            if (!bitmapPresent) fail(i, 'PARTIALLY_PRESENT but the sector bitmap block of its chunk is missing');
          }
          checkRange(i, Math.min(g.blockSize, g.virtualSize - block * g.blockSize));
        } else if (s !== PAYLOAD_NOT_PRESENT && s !== PAYLOAD_UNDEFINED && s !== PAYLOAD_ZERO && s !== PAYLOAD_UNMAPPED) {
          fail(i, `invalid payload block state ${s}`);
        }
      }
    }
    return end;
  }
}
