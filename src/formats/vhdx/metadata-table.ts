import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { GUIDS, guidBytes, guidText, MiB, overlaps } from './layout.js';

/**
 * Metadata table (VHDX spec 2.6.1): the first 64 KiB of the metadata region.
 * A 32-byte header (signature "metadata", entry count <= 2047) and 32-byte
 * entries, each locating one item inside the region (offset >= 64 KiB,
 * length <= 1 MiB) with flags IsUser, IsVirtualDisk, IsRequired.
 */
export const METADATA_TABLE_SIZE = 64 * 1024;
const MAX_METADATA_ENTRIES = 2047;
const MAX_ITEM_LENGTH = MiB;

export const MetadataTableHeader = defineStruct('VHDX metadata table header', 'le', 32, [
  { name: 'signature', type: 'bytes', size: 8 },
  { name: 'reserved', type: 'u16' },
  { name: 'entryCount', type: 'u16' },
]);

export const MetadataTableEntry = defineStruct('VHDX metadata table entry', 'le', 32, [
  { name: 'itemId', type: 'bytes', size: 16 },
  { name: 'offset', type: 'u32' },
  { name: 'length', type: 'u32' },
  { name: 'flags', type: 'u32' },
]);

const METADATA_SIGNATURE = 'metadata';
export const FLAG_IS_USER = 1;
export const FLAG_IS_VIRTUAL_DISK = 2;
export const FLAG_IS_REQUIRED = 4;

export interface MetadataEntry {
  id: string;
  /** Offset inside the metadata region. */
  offset: number;
  length: number;
  flags: number;
  /** Index in the table (to rewrite the entry). */
  index: number;
}

/** The system items this implementation understands (2.6.2); any other required one refuses the open. */
const KNOWN_ITEMS: ReadonlySet<string> = new Set([
  GUIDS.fileParameters,
  GUIDS.virtualDiskSize,
  GUIDS.page83Data,
  GUIDS.logicalSectorSize,
  GUIDS.physicalSectorSize,
  GUIDS.parentLocator,
]);

export function decodeMetadataTable(raw: Uint8Array, regionLength: number, regionOffset: number, path?: string): MetadataEntry[] {
  const h = MetadataTableHeader.decode(raw);
  if (new TextDecoder('latin1').decode(h.signature) !== METADATA_SIGNATURE) {
    throw new BlockError('corrupt', 'metadata table has a bad signature', { path, offset: regionOffset });
  }
  if (h.entryCount > MAX_METADATA_ENTRIES) {
    throw new BlockError('corrupt', `metadata table has ${h.entryCount} entries (at most ${MAX_METADATA_ENTRIES})`, { path, offset: regionOffset });
  }
  const out: MetadataEntry[] = [];
  for (let i = 0; i < h.entryCount; i++) {
    const at = MetadataTableHeader.SIZE + i * MetadataTableEntry.SIZE;
    const e = MetadataTableEntry.decode(raw, at);
    const ctx = { path, offset: regionOffset + at };
    const item: MetadataEntry = { id: guidText(e.itemId), offset: e.offset, length: e.length, flags: e.flags, index: i };
    if (item.length > MAX_ITEM_LENGTH) throw new BlockError('corrupt', `metadata item ${item.id} is ${item.length} bytes (at most 1 MiB)`, ctx);
    if (item.length === 0 ? item.offset !== 0 : item.offset < METADATA_TABLE_SIZE) {
      throw new BlockError('corrupt', `metadata item ${item.id} at offset ${item.offset} overlaps the metadata table`, ctx);
    }
    if (item.offset + item.length > regionLength) {
      throw new BlockError('corrupt', `metadata item ${item.id} (offset ${item.offset}, length ${item.length}) lies past the metadata region (${regionLength})`, ctx);
    }
    for (const o of out) {
      if (o.id === item.id && (o.flags & FLAG_IS_USER) === (item.flags & FLAG_IS_USER)) {
        throw new BlockError('corrupt', `metadata item ${item.id} appears twice`, ctx);
      }
      if (overlaps(item.offset, item.length, o.offset, o.length)) {
        throw new BlockError('corrupt', `metadata items ${item.id} and ${o.id} overlap`, ctx);
      }
    }
    if ((item.flags & FLAG_IS_REQUIRED) && ((item.flags & FLAG_IS_USER) || !KNOWN_ITEMS.has(item.id))) {
      throw new BlockError('unsupported', `unknown required metadata item ${item.id}`, ctx);
    }
    out.push(item);
  }
  return out;
}

export function encodeMetadataTable(entries: MetadataEntry[]): Uint8Array {
  const raw = new Uint8Array(METADATA_TABLE_SIZE);
  MetadataTableHeader.encode({ signature: new TextEncoder().encode(METADATA_SIGNATURE), reserved: 0, entryCount: entries.length }, raw);
  entries.forEach((e, i) =>
    MetadataTableEntry.encode(
      { itemId: guidBytes(e.id), offset: e.offset, length: e.length, flags: e.flags },
      raw,
      MetadataTableHeader.SIZE + i * MetadataTableEntry.SIZE,
    ),
  );
  return raw;
}
