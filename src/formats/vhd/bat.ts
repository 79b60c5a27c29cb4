import { BlockError } from '../../core/errors.js';
import { alignUp, checkRange, checkedMul } from '../../core/u64.js';
import type { Store } from '../../io/store.js';
import { readExact } from '../../io/store.js';

/**
 * Block Allocation Table (VHD spec 2006, "Block Allocation Table and Data
 * Blocks"): `maxTableEntries` big-endian 32-bit entries at the header's table
 * offset, each the *sector* offset of a block (its sector bitmap first, then
 * the data), or 0xFFFFFFFF for a block never written. The table occupies whole
 * sectors on disk.
 */
export const UNALLOCATED = 0xffffffff;
/** Bytes per entry (32 bits). */
export const BAT_ENTRY_SIZE = 4;
/** Entries per 512-byte sector of the table: the unit a BAT update writes. */
export const ENTRIES_PER_SECTOR = 512 / BAT_ENTRY_SIZE;

/** Bytes the BAT occupies on disk, padded to whole sectors. */
export function batBytes(entries: number): number {
  return alignUp(checkedMul(entries, BAT_ENTRY_SIZE, 'BAT size'), 512);
}

/** Load the first `entries` entries (bounds-checked against the file before any allocation). */
export async function readBat(store: Store, tableOffset: number, entries: number, fileSize: number): Promise<Uint32Array> {
  checkRange(tableOffset, entries * BAT_ENTRY_SIZE, fileSize, 'VHD block allocation table', store.path);
  if (tableOffset % 512 !== 0) throw new BlockError('corrupt', `VHD BAT offset ${tableOffset} is not sector aligned`, { path: store.path, offset: tableOffset });
  const raw = await readExact(store, tableOffset, new Uint8Array(entries * BAT_ENTRY_SIZE), 'VHD block allocation table');
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.length);
  const bat = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) bat[i] = dv.getUint32(i * BAT_ENTRY_SIZE);
  return bat;
}

/** The on-disk sector of the BAT holding entry `index`, encoded from the in-memory table. */
export function encodeBatSector(bat: Uint32Array, sectorIndex: number, maxTableEntries: number): Uint8Array {
  const out = new Uint8Array(512).fill(0xff); // padding past the last entry is unused; all ones like the entries
  const dv = new DataView(out.buffer);
  const first = sectorIndex * ENTRIES_PER_SECTOR;
  for (let i = 0; i < ENTRIES_PER_SECTOR && first + i < maxTableEntries; i++) {
    dv.setUint32(i * BAT_ENTRY_SIZE, first + i < bat.length ? bat[first + i] : UNALLOCATED);
  }
  return out;
}

/** The whole table as written on create/resize. */
export function encodeBat(bat: Uint32Array, maxTableEntries: number): Uint8Array {
  const out = new Uint8Array(batBytes(maxTableEntries)).fill(0xff);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < bat.length && i < maxTableEntries; i++) dv.setUint32(i * BAT_ENTRY_SIZE, bat[i]);
  return out;
}
