import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { u64ToNumber } from '../../core/u64.js';
import { checksumWithHole, GUIDS, guidBytes, guidText, HEADER_SECTION_SIZE, MiB, overlaps, REGION_TABLE_OFFSETS, sealChecksum, sig } from './layout.js';

/**
 * Region table (VHDX spec 2.2.3): two identical 64 KiB copies at 192 KiB and
 * 256 KiB. A 16-byte header (signature "regi", CRC-32C over the whole 64 KiB,
 * entry count <= 2047) and 32-byte entries locating the BAT and the metadata
 * region, each at a 1 MiB multiple with a 1 MiB-multiple length.
 */
export const REGION_TABLE_SIZE = 64 * 1024;
const MAX_REGION_ENTRIES = 2047;
const REGION_SIGNATURE = sig('regi');

export const RegionTableHeader = defineStruct('VHDX region table header', 'le', 16, [
  { name: 'signature', type: 'u32' },
  { name: 'checksum', type: 'u32' },
  { name: 'entryCount', type: 'u32' },
  { name: 'reserved', type: 'u32' },
]);

export const RegionTableEntry = defineStruct('VHDX region table entry', 'le', 32, [
  { name: 'guid', type: 'bytes', size: 16 },
  { name: 'fileOffset', type: 'u64' },
  { name: 'length', type: 'u32' },
  { name: 'flags', type: 'u32' },
]);
/** Region entry flag bit 0, Required: a reader that does not know the region must refuse the file. */
const REGION_REQUIRED = 1;

export interface Region {
  guid: string;
  offset: number;
  length: number;
  required: boolean;
}

export interface RegionTable {
  bat: Region;
  metadata: Region;
  all: Region[];
}

function tableProblem(raw: Uint8Array, ignoreChecksums: boolean): string | null {
  const h = RegionTableHeader.decode(raw);
  if (h.signature !== REGION_SIGNATURE) return 'bad signature';
  if (!ignoreChecksums && h.checksum !== checksumWithHole(raw)) return 'bad checksum';
  if (h.entryCount > MAX_REGION_ENTRIES) return `${h.entryCount} entries (at most ${MAX_REGION_ENTRIES})`;
  return null;
}

/**
 * Decode the first valid copy and validate every entry against the file:
 * ranges inside the file and past the header section, no overlaps with each
 * other or with the log, both known regions present, no unknown required
 * region (2.2.3.2).
 */
export function decodeRegionTables(
  raws: Uint8Array[],
  fileSize: number,
  log: { offset: number; length: number },
  ignoreChecksums: boolean,
  path?: string,
): { table: RegionTable; problems: string[] } {
  const problems: string[] = [];
  let chosen: Uint8Array | undefined;
  let chosenSlot = 0;
  raws.forEach((raw, i) => {
    const p = tableProblem(raw, ignoreChecksums);
    if (p) problems.push(`region table ${i + 1}: ${p}`);
    else if (!chosen) {
      chosen = raw;
      chosenSlot = i;
    }
  });
  if (!chosen) {
    const kind = problems.every((p) => p.endsWith('bad checksum')) ? 'checksum' : 'corrupt';
    throw new BlockError(kind, `no valid VHDX region table (${problems.join('; ')})`, { path, offset: REGION_TABLE_OFFSETS[0] });
  }
  const at = REGION_TABLE_OFFSETS[chosenSlot];
  const count = RegionTableHeader.decode(chosen).entryCount;
  const all: Region[] = [];
  for (let i = 0; i < count; i++) {
    const e = RegionTableEntry.decode(chosen, RegionTableHeader.SIZE + i * RegionTableEntry.SIZE);
    const ctx = { path, offset: at + RegionTableHeader.SIZE + i * RegionTableEntry.SIZE };
    const r: Region = {
      guid: guidText(e.guid),
      offset: u64ToNumber(e.fileOffset, 'region offset', ctx),
      length: e.length,
      required: (e.flags & REGION_REQUIRED) !== 0,
    };
    if (r.required && r.guid !== GUIDS.batRegion && r.guid !== GUIDS.metadataRegion) {
      throw new BlockError('unsupported', `unknown required region ${r.guid}`, ctx);
    }
    if (r.offset % MiB !== 0 || r.length % MiB !== 0 || r.length === 0) {
      throw new BlockError('corrupt', `region ${r.guid} at ${r.offset} (length ${r.length}) is not 1 MiB aligned`, ctx);
    }
    if (r.offset < HEADER_SECTION_SIZE) throw new BlockError('corrupt', `region ${r.guid} lies inside the header section`, ctx);
    if (r.offset + r.length > fileSize) {
      throw new BlockError('corrupt', `region ${r.guid} (offset ${r.offset}, length ${r.length}) lies past the end of the file (${fileSize})`, ctx);
    }
    if (overlaps(r.offset, r.length, log.offset, log.length)) throw new BlockError('corrupt', `region ${r.guid} overlaps the log`, ctx);
    for (const o of all) {
      if (o.guid === r.guid) throw new BlockError('corrupt', `region ${r.guid} appears twice`, ctx);
      if (overlaps(r.offset, r.length, o.offset, o.length)) throw new BlockError('corrupt', `regions ${r.guid} and ${o.guid} overlap`, ctx);
    }
    all.push(r);
  }
  const bat = all.find((r) => r.guid === GUIDS.batRegion);
  const metadata = all.find((r) => r.guid === GUIDS.metadataRegion);
  if (!bat || !metadata) throw new BlockError('corrupt', `region table lacks the ${bat ? 'metadata' : 'BAT'} region`, { path, offset: at });
  return { table: { bat, metadata, all }, problems };
}

export function encodeRegionTable(regions: Region[]): Uint8Array {
  const raw = new Uint8Array(REGION_TABLE_SIZE);
  RegionTableHeader.encode({ signature: REGION_SIGNATURE, checksum: 0, entryCount: regions.length, reserved: 0 }, raw);
  regions.forEach((r, i) =>
    RegionTableEntry.encode(
      { guid: guidBytes(r.guid), fileOffset: BigInt(r.offset), length: r.length, flags: r.required ? REGION_REQUIRED : 0 },
      raw,
      RegionTableHeader.SIZE + i * RegionTableEntry.SIZE,
    ),
  );
  sealChecksum(raw);
  return raw;
}
