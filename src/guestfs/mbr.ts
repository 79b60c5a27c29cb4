import { BlockError } from '../core/errors.js';
import { defineStruct } from '../codec/struct.js';

/**
 * Master Boot Record partition table (UEFI 2.10, section 5.2.1 "Legacy Master
 * Boot Record"; the extended-partition chain as documented for MS-DOS/Windows
 * "Extended Boot Record"):
 *
 *   sector 0:  0..445 boot code | 446: 4 x 16-byte partition records | 510: 0x55 0xAA
 *   record:    +0 BootIndicator (0x00 or 0x80) | +1 CHS start (3) | +4 OSType
 *              +5 CHS end (3) | +8 StartingLBA u32 | +12 SizeInLBA u32
 *
 * CHS fields are ignored (LBA is authoritative for every disk these tools make).
 * An EBR has the same layout: record 0 is a logical partition relative to the
 * EBR itself, record 1 points at the next EBR relative to the extended
 * partition's start.
 */
const Record = defineStruct('MBR partition record', 'le', 16, [
  { name: 'bootIndicator', type: 'u8' },
  { name: 'chsStart', type: 'bytes', size: 3 },
  { name: 'osType', type: 'u8' },
  { name: 'chsEnd', type: 'bytes', size: 3 },
  { name: 'startingLba', type: 'u32' },
  { name: 'sizeInLba', type: 'u32' },
]);

export const MBR_SECTOR = 512;
const RECORDS_AT = 446;
/** OSType of the protective MBR entry covering a GPT disk (UEFI 2.10, 5.2.3). */
const GPT_PROTECTIVE = 0xee;
const EXTENDED = new Set([0x05, 0x0f, 0x85]);
/** Logical partitions followed at most: the chain is on-disk data and may loop. */
const MAX_LOGICAL = 128;

export interface MbrPartition {
  /** 1-based, as Linux numbers them (logical partitions from 5). */
  number: number;
  type: number;
  /** Disk byte range. */
  offset: number;
  length: number;
}

export interface Mbr {
  /** True when an entry has OSType 0xEE: the disk's real table is the GPT. */
  protective: boolean;
  partitions: MbrPartition[];
}

function hasSignature(sector: Uint8Array): boolean {
  return sector[510] === 0x55 && sector[511] === 0xaa;
}

/**
 * Decode sector 0 as an MBR, or return undefined when it is not one (no 0x55AA,
 * or boot indicators that are neither 0x00 nor 0x80 — a file system's boot
 * sector, e.g. NTFS or FAT, also ends in 0x55AA).
 */
function decodeMbr(sector: Uint8Array): { protective: boolean; records: ReturnType<typeof Record.decode>[] } | undefined {
  if (sector.length < MBR_SECTOR || !hasSignature(sector)) return undefined;
  const records = [0, 1, 2, 3].map((i) => Record.decode(sector, RECORDS_AT + 16 * i));
  if (records.some((r) => r.bootIndicator !== 0 && r.bootIndicator !== 0x80)) return undefined;
  const used = records.filter((r) => r.osType !== 0);
  if (used.length === 0) return undefined;
  return { protective: used.some((r) => r.osType === GPT_PROTECTIVE), records };
}

/**
 * The partitions of an MBR disk, logical ones included. Entries of size 0 are
 * skipped; a partition or EBR outside the disk is corrupt.
 */
export async function readMbr(
  sector0: Uint8Array,
  diskSize: number,
  read: (offset: number, into: Uint8Array) => Promise<void>,
): Promise<Mbr | undefined> {
  const mbr = decodeMbr(sector0);
  if (!mbr) return undefined;
  const partitions: MbrPartition[] = [];
  const inDisk = (what: string, lba: number, count: number): { offset: number; length: number } => {
    const offset = lba * MBR_SECTOR;
    const length = count * MBR_SECTOR;
    if (offset + length > diskSize) {
      throw new BlockError('corrupt', `${what} lies outside the disk (sectors ${lba}+${count}, disk has ${Math.floor(diskSize / MBR_SECTOR)})`, { offset, length });
    }
    return { offset, length };
  };
  let extended: { offset: number; length: number; lba: number } | undefined;
  mbr.records.forEach((r, i) => {
    if (r.osType === 0 || r.sizeInLba === 0) return;
    const where = inDisk(`MBR partition ${i + 1}`, r.startingLba, r.sizeInLba);
    if (EXTENDED.has(r.osType)) {
      if (extended) throw new BlockError('corrupt', 'the MBR has two extended partitions');
      extended = { ...where, lba: r.startingLba };
      return;
    }
    partitions.push({ number: i + 1, type: r.osType, ...where });
  });
  if (extended) {
    const seen = new Set<number>();
    let ebrLba = extended.lba;
    for (let n = 5; ; n++) {
      if (seen.has(ebrLba) || seen.size >= MAX_LOGICAL) throw new BlockError('corrupt', 'the extended partition chain loops or is too long');
      seen.add(ebrLba);
      inDisk('an extended boot record', ebrLba, 1);
      const ebr = new Uint8Array(MBR_SECTOR);
      await read(ebrLba * MBR_SECTOR, ebr);
      if (!hasSignature(ebr)) throw new BlockError('corrupt', `the extended boot record at sector ${ebrLba} has no 0x55AA signature`);
      const logical = Record.decode(ebr, RECORDS_AT);
      const next = Record.decode(ebr, RECORDS_AT + 16);
      if (logical.osType !== 0 && logical.sizeInLba !== 0) {
        const where = inDisk(`logical partition ${n}`, ebrLba + logical.startingLba, logical.sizeInLba);
        if (where.offset < extended.offset || where.offset + where.length > extended.offset + extended.length) {
          throw new BlockError('corrupt', `logical partition ${n} lies outside its extended partition`, where);
        }
        partitions.push({ number: n, type: logical.osType, ...where });
      }
      if (next.osType === 0 || next.sizeInLba === 0) break;
      ebrLba = extended.lba + next.startingLba;
    }
  }
  return { protective: mbr.protective, partitions };
}
