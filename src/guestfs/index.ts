import { BlockError, isBlockError } from '../core/errors.js';
import { readMbr, MBR_SECTOR } from './mbr.js';
import { readGpt } from './gpt.js';
import { extFreeSpace, isExt } from './ext4.js';
import { isNtfs, ntfsFreeSpace } from './ntfs.js';
import { FreeRanges, Volume, type DiskReader } from './volume.js';

/**
 * guestfs: what the file systems inside a virtual disk leave free.
 *
 * Given a disk (any reader of its bytes), find its partitions (MBR with
 * logical partitions, GPT behind a protective MBR, or no table with a file
 * system on the whole disk), recognise ext2/3/4 and NTFS in them, and return
 * the disk byte ranges that their allocation maps say are free. Other
 * partitions are skipped with a note. A file system that is not clean
 * (journal to replay, errors recorded, NTFS dirty or hibernated) or whose
 * structures do not add up throws a BlockError: when in doubt, keep the block.
 *
 * Memory stays bounded by the number of free ranges returned: bitmaps are
 * streamed a group (ext) or a megabyte (NTFS) at a time.
 */
export type { DiskReader } from './volume.js';

export interface GuestFreeSpace {
  /** Disk byte ranges, sorted, non-overlapping, wholly free in a clean file system. */
  free: { offset: number; length: number }[];
  /** One line each: skipped partitions (unknown type), file systems found. */
  notes: string[];
}

interface Partition {
  /** How notes name it: "partition 2", "the whole disk". */
  name: string;
  /** Table type as a word, for notes. */
  type: string;
  offset: number;
  length: number;
}

/** Signatures of file systems recognised only to name them in a "skipped" note. */
async function otherFileSystem(vol: Volume): Promise<string | undefined> {
  const head = await vol.read(0, Math.min(vol.length, 4096), 'the partition start');
  const ascii = (at: number, n: number) => new TextDecoder('latin1').decode(head.subarray(at, at + n));
  if (ascii(0, 4) === 'XFSB') return 'XFS';
  if (head.length >= 4096 && ascii(4086, 10) === 'SWAPSPACE2') return 'Linux swap';
  if (ascii(3, 8) === 'EXFAT   ') return 'exFAT';
  if (ascii(82, 5) === 'FAT32' || ascii(54, 5) === 'FAT12' || ascii(54, 5) === 'FAT16') return 'FAT';
  if (vol.length >= 0x10048) {
    const sb = await vol.read(0x10040, 8, 'the btrfs superblock');
    if (new TextDecoder('latin1').decode(sb) === '_BHRfS_M') return 'btrfs';
  }
  return undefined;
}

async function scanPartition(read: DiskReader, p: Partition, out: FreeRanges, notes: string[]): Promise<void> {
  const vol = new Volume(read, p.offset, p.length);
  try {
    const head = await vol.read(0, Math.min(vol.length, 2048), 'the partition start');
    let found: string | undefined;
    if (isNtfs(head)) found = await ntfsFreeSpace(vol, out);
    else if (head.length >= 2048 && isExt(head.subarray(1024))) found = await extFreeSpace(vol, out);
    if (found !== undefined) {
      notes.push(`${p.name} (${p.type}, ${p.length} bytes at ${p.offset}): ${found}; ${out.take()} bytes free`);
      return;
    }
    const other = await otherFileSystem(vol);
    notes.push(`${p.name} (${p.type}, ${p.length} bytes at ${p.offset}): skipped, ${other ? `${other} is not supported` : 'no ext2/3/4 or NTFS file system found'}`);
  } catch (e) {
    if (isBlockError(e)) throw new BlockError(e.kind, `${p.name}: ${e.message}`, { ...e.context, operation: 'find guest free space' }, { cause: e });
    throw e;
  }
}

/** The partitions of the disk, checked to lie inside it and not to overlap. */
async function partitions(read: DiskReader, diskSize: number, notes: string[]): Promise<Partition[]> {
  if (diskSize < MBR_SECTOR) return [];
  const sector0 = new Uint8Array(MBR_SECTOR);
  await read(0, sector0);
  const whole: Partition[] = [{ name: 'the whole disk', type: 'no partition table', offset: 0, length: diskSize }];
  // An NTFS (or FAT) boot sector also ends in 0x55AA: a file system on the whole disk wins.
  if (isNtfs(sector0)) return whole;
  const mbr = await readMbr(sector0, diskSize, read);
  let parts: Partition[];
  if (mbr?.protective) {
    const gpt = await readGpt(read, diskSize);
    if (!gpt) throw new BlockError('corrupt', 'the MBR is protective (type 0xEE) but the disk has no GPT header');
    if (gpt.usedBackup) notes.push('the primary GPT header is damaged: the backup header was used');
    parts = gpt.partitions.map((p) => ({
      name: `partition ${p.number}`,
      type: `GPT ${p.typeName ?? p.typeGuid}`,
      offset: p.offset,
      length: p.length,
    }));
  } else if (mbr) {
    parts = mbr.partitions.map((p) => ({
      name: `partition ${p.number}`,
      type: `MBR type 0x${p.type.toString(16).padStart(2, '0')}`,
      offset: p.offset,
      length: p.length,
    }));
  } else {
    return whole;
  }
  parts.sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < parts.length; i++) {
    const prev = parts[i - 1];
    if (parts[i].offset < prev.offset + prev.length) throw new BlockError('corrupt', `${prev.name} and ${parts[i].name} overlap`);
  }
  return parts;
}

export async function findFreeSpace(read: DiskReader, diskSize: number): Promise<GuestFreeSpace> {
  if (!Number.isSafeInteger(diskSize) || diskSize < 0) throw new BlockError('invalid-argument', `disk size ${diskSize} is invalid`);
  const notes: string[] = [];
  const out = new FreeRanges();
  const parts = await partitions(read, diskSize, notes);
  if (parts.length === 0) notes.push('no partitions found');
  for (const p of parts) await scanPartition(read, p, out, notes);
  return { free: out.ranges, notes };
}
