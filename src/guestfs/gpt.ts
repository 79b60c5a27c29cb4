import CRC32 from 'crc-32';
import { BlockError } from '../core/errors.js';
import { defineStruct } from '../codec/struct.js';
import { u64ToNumber } from '../core/u64.js';
import { guidToString } from '../core/guid.js';

/**
 * GUID Partition Table (UEFI Specification 2.10, section 5.3 "GUID Partition
 * Table (GPT) Disk Layout").
 *
 *   LBA 0            protective MBR (OSType 0xEE)
 *   LBA 1            GPT header (table 5-5), HeaderSize bytes covered by HeaderCRC32
 *   PartitionEntryLBA  NumberOfPartitionEntries x SizeOfPartitionEntry bytes,
 *                      covered by PartitionEntryArrayCRC32
 *   last LBA         backup header (its MyLBA is the last LBA)
 *
 * All fields little-endian; StartingLBA..EndingLBA of an entry are inclusive.
 * The logical block size is not recorded: 512 is tried, then 4096 (5.3.1).
 */
const Header = defineStruct('GPT header', 'le', 92, [
  { name: 'signature', type: 'bytes', size: 8 },
  { name: 'revision', type: 'u32' },
  { name: 'headerSize', type: 'u32' },
  { name: 'headerCrc32', type: 'u32' },
  { name: 'reserved', type: 'u32' },
  { name: 'myLba', type: 'u64' },
  { name: 'alternateLba', type: 'u64' },
  { name: 'firstUsableLba', type: 'u64' },
  { name: 'lastUsableLba', type: 'u64' },
  { name: 'diskGuid', type: 'bytes', size: 16 },
  { name: 'partitionEntryLba', type: 'u64' },
  { name: 'numberOfPartitionEntries', type: 'u32' },
  { name: 'sizeOfPartitionEntry', type: 'u32' },
  { name: 'partitionEntryArrayCrc32', type: 'u32' },
]);

const Entry = defineStruct('GPT partition entry', 'le', 128, [
  { name: 'partitionTypeGuid', type: 'bytes', size: 16 },
  { name: 'uniquePartitionGuid', type: 'bytes', size: 16 },
  { name: 'startingLba', type: 'u64' },
  { name: 'endingLba', type: 'u64' },
  { name: 'attributes', type: 'u64' },
  { name: 'partitionName', type: 'bytes', size: 72 },
]);

const SIGNATURE = 'EFI PART';
/** The array is bounded so a forged header cannot make us read gigabytes (the spec's minimum is 16 KiB; tools write 128 entries). */
const MAX_ARRAY_BYTES = 1 << 20;

/** Well-known type GUIDs, only to name partitions in notes (UEFI 2.10 table 5-7 and the partition-type registries of Microsoft and freedesktop.org). */
const TYPE_NAMES: Record<string, string> = {
  'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': 'EFI system',
  'e3c9e316-0b5c-4db8-817d-f92df00215ae': 'Microsoft reserved',
  'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7': 'Microsoft basic data',
  'de94bba4-06d1-4d40-a16a-bfd50179d6ac': 'Windows recovery',
  '0fc63daf-8483-4772-8e79-3d69d8477de4': 'Linux file system',
  '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': 'Linux swap',
  'e6d6d379-f507-44c2-a23c-238f2a3df928': 'Linux LVM',
  'a19d880f-05fc-4d3b-a006-743f0f84911e': 'Linux RAID',
  '21686148-6449-6e6f-744e-656564454649': 'BIOS boot',
};

export interface GptPartition {
  /** 1-based index in the entry array. */
  number: number;
  typeGuid: string;
  typeName: string | undefined;
  offset: number;
  length: number;
}

export interface Gpt {
  sectorSize: number;
  /** True when the primary header was damaged and the backup was used. */
  usedBackup: boolean;
  partitions: GptPartition[];
}

function crc32(data: Uint8Array): number {
  return CRC32.buf(data) >>> 0;
}

async function readHeader(
  read: (offset: number, into: Uint8Array) => Promise<void>,
  diskSize: number,
  ss: number,
  lba: number,
): Promise<{ gpt: Gpt } | { problem: string } | undefined> {
  if ((lba + 1) * ss > diskSize) return undefined;
  const sector = new Uint8Array(ss);
  await read(lba * ss, sector);
  if (new TextDecoder('latin1').decode(sector.subarray(0, 8)) !== SIGNATURE) return undefined;
  const h = Header.decode(sector);
  if (h.headerSize < Header.SIZE || h.headerSize > ss) return { problem: `header size ${h.headerSize} is invalid` };
  const covered = sector.slice(0, h.headerSize);
  covered.fill(0, Header.offsets.headerCrc32, Header.offsets.headerCrc32 + 4);
  if (crc32(covered) !== h.headerCrc32) return { problem: 'header CRC32 does not match' };
  const ctx = { offset: lba * ss };
  const myLba = u64ToNumber(h.myLba, 'GPT MyLBA', ctx);
  if (myLba !== lba) return { problem: `header says it lies at LBA ${myLba}, found at ${lba}` };
  const sectors = Math.floor(diskSize / ss);
  const first = u64ToNumber(h.firstUsableLba, 'GPT FirstUsableLBA', ctx);
  const last = u64ToNumber(h.lastUsableLba, 'GPT LastUsableLBA', ctx);
  if (first > last + 1 || last >= sectors) {
    throw new BlockError('corrupt', `GPT usable range ${first}..${last} lies outside the disk (${sectors} sectors of ${ss} bytes)`, ctx);
  }
  const size = h.sizeOfPartitionEntry;
  // 5.3.2: SizeOfPartitionEntry is 128 x 2^n.
  if (size < 128 || (size & (size - 1)) !== 0) return { problem: `partition entry size ${size} is invalid` };
  const arrayBytes = size * h.numberOfPartitionEntries;
  if (arrayBytes > MAX_ARRAY_BYTES) throw new BlockError('unsupported', `GPT partition array of ${arrayBytes} bytes is larger than ${MAX_ARRAY_BYTES}`, ctx);
  const arrayLba = u64ToNumber(h.partitionEntryLba, 'GPT PartitionEntryLBA', ctx);
  if ((arrayLba + Math.ceil(arrayBytes / ss)) * ss > diskSize) {
    throw new BlockError('corrupt', `GPT partition entry array (LBA ${arrayLba}) lies outside the disk`, ctx);
  }
  const array = new Uint8Array(arrayBytes);
  if (arrayBytes > 0) await read(arrayLba * ss, array);
  if (crc32(array) !== h.partitionEntryArrayCrc32) return { problem: 'partition entry array CRC32 does not match' };

  const partitions: GptPartition[] = [];
  for (let i = 0; i < h.numberOfPartitionEntries; i++) {
    const e = Entry.decode(array, i * size);
    if (e.partitionTypeGuid.every((b) => b === 0)) continue; // unused entry (5.3.3)
    const start = u64ToNumber(e.startingLba, `GPT partition ${i + 1} StartingLBA`, ctx);
    const end = u64ToNumber(e.endingLba, `GPT partition ${i + 1} EndingLBA`, ctx);
    if (end < start || start < first || end > last) {
      throw new BlockError('corrupt', `GPT partition ${i + 1} (LBA ${start}..${end}) lies outside the usable range ${first}..${last}`, ctx);
    }
    const typeGuid = guidToString(e.partitionTypeGuid);
    partitions.push({ number: i + 1, typeGuid, typeName: TYPE_NAMES[typeGuid], offset: start * ss, length: (end - start + 1) * ss });
  }
  return { gpt: { sectorSize: ss, usedBackup: false, partitions } };
}

/**
 * Read the GPT of a disk whose MBR is protective: the primary header, or the
 * backup at the last LBA when the primary is damaged (5.3.2: software must
 * check both). Returns undefined when neither sector size finds a header.
 */
export async function readGpt(read: (offset: number, into: Uint8Array) => Promise<void>, diskSize: number): Promise<Gpt | undefined> {
  const problems: string[] = [];
  for (const ss of [512, 4096]) {
    const primary = await readHeader(read, diskSize, ss, 1);
    if (primary && 'gpt' in primary) return primary.gpt;
    const lastLba = Math.floor(diskSize / ss) - 1;
    const backup = lastLba > 1 ? await readHeader(read, diskSize, ss, lastLba) : undefined;
    if (backup && 'gpt' in backup) return { ...backup.gpt, usedBackup: true };
    if (primary) problems.push(`primary: ${primary.problem}`);
    if (backup) problems.push(`backup: ${backup.problem}`);
    if (primary || backup) throw new BlockError('corrupt', `GPT is damaged (${problems.join('; ')})`);
  }
  return undefined;
}
