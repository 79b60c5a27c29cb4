import { BlockError } from '../../core/errors.js';
import { alignDown, alignUp } from '../../core/u64.js';
import { readExact } from '../../io/store.js';
import type { BackingTarget, ResizeOptions } from '../types.js';
import { Bat, BAT_ENTRY_SIZE, batGeometry, batRegionLength, PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT } from './bat.js';
import { locatorFor } from './create.js';
import type { SectorUpdates } from './journal.js';
import { GUIDS, LOG_SECTOR, MAX_SIZE, MiB, REGION_TABLE_OFFSETS } from './layout.js';
import { encodeMetadataTable, METADATA_TABLE_SIZE } from './metadata-table.js';
import { VirtualDiskSize } from './metadata-items.js';
import { backingFromLocator, encodeParentLocator } from './parent-locator.js';
import { encodeRegionTable } from './region-table.js';
import type { VhdxState } from './state.js';

/** Put `bytes` at file offset `at` into the transaction, sector by sector, reading sectors it only partly covers. */
export async function stage(s: VhdxState, updates: SectorUpdates, at: number, bytes: Uint8Array): Promise<void> {
  for (let sector = alignDown(at, LOG_SECTOR); sector < at + bytes.length; sector += LOG_SECTOR) {
    let img = updates.get(sector);
    if (!img) {
      img = await readExact(s.store, sector, new Uint8Array(LOG_SECTOR), 'metadata sector');
      updates.set(sector, img);
    }
    const a = Math.max(at, sector);
    const b = Math.min(at + bytes.length, sector + LOG_SECTOR);
    img.set(bytes.subarray(a - at, b - at), a - sector);
  }
}

/**
 * Change the virtual size (VHDX spec 2.6.2.2). The new BAT is built in memory;
 * when it outgrows its region, it is written whole to new space at the end of
 * the file (unreferenced until the region table names it). Then one journaled
 * transaction switches everything: changed BAT sectors first, the region
 * tables and the size item last, so a crash leaves either disk.
 */
export async function resizeVhdx(s: VhdxState, newSize: number, options: ResizeOptions): Promise<void> {
  const p = s.params;
  const ctx = { path: s.path };
  if (!Number.isSafeInteger(newSize) || newSize <= 0 || newSize % p.logicalSectorSize !== 0) {
    throw new BlockError('invalid-argument', `new size ${newSize} is not a positive multiple of the ${p.logicalSectorSize}-byte sector`, ctx);
  }
  if (newSize > MAX_SIZE) throw new BlockError('out-of-range', `VHDX disks hold at most 64 TiB (asked for ${newSize})`, ctx);
  if (newSize < p.virtualSize && !options.shrink) {
    throw new BlockError('invalid-argument', 'shrinking needs --shrink (data past the new end is lost)', ctx);
  }
  if (newSize === p.virtualSize) return;

  const old = s.bat;
  // A differencing disk resizes too (its size is its own, 2.6.2.6): its BAT keeps a sector bitmap entry after every chunk.
  const g = batGeometry(newSize, p.blockSize, p.logicalSectorSize, p.hasParent);
  const bytes = new Uint8Array(Bat.loadLength(g));
  bytes.set(old.bytes.subarray(0, Math.min(bytes.length, old.bytes.length)));
  const bat = new Bat(g, bytes);
  const dv = new DataView(bytes.buffer);
  // Entries past the new end describe nothing: clear them, so a later grow starts from absent blocks.
  for (let i = g.entryCount; i < bytes.length / BAT_ENTRY_SIZE; i++) dv.setBigUint64(i * BAT_ENTRY_SIZE, 0n, true);
  for (let b = g.dataBlocks; b < old.geometry.dataBlocks; b++) {
    const i = old.payloadIndex(b);
    if (i < g.entryCount) Bat.encode(dv, i * BAT_ENTRY_SIZE, 0, 0);
  }
  // On grow, the old last block may hold stale bytes past the old end (left by a shrink): zero them.
  if (newSize > p.virtualSize && p.virtualSize % p.blockSize !== 0) {
    const last = Math.floor(p.virtualSize / p.blockSize);
    const i = old.payloadIndex(last);
    const st = old.state(i);
    if (st === PAYLOAD_FULLY_PRESENT || st === PAYLOAD_PARTIALLY_PRESENT) {
      const from = p.virtualSize - last * p.blockSize;
      const to = Math.min(p.blockSize, newSize - last * p.blockSize);
      await s.store.write(old.offset(i) + from, new Uint8Array(to - from));
    }
  }
  // A fixed disk keeps every block allocated (LeaveBlocksAllocated).
  if (p.leaveBlocksAllocated) {
    for (let b = old.geometry.dataBlocks; b < g.dataBlocks; b++) {
      const off = s.fileEnd;
      s.fileEnd += p.blockSize;
      Bat.encode(dv, bat.payloadIndex(b) * BAT_ENTRY_SIZE, PAYLOAD_FULLY_PRESENT, off);
    }
  }

  const updates: SectorUpdates = new Map();
  let region = s.regions.bat;
  if (g.entryCount * BAT_ENTRY_SIZE > region.length) {
    const length = batRegionLength(g);
    const offset = s.fileEnd;
    s.fileEnd = alignUp(offset + length, MiB);
    await s.store.truncate(Math.max(s.fileEnd, s.fileSize));
    s.fileSize = Math.max(s.fileEnd, s.fileSize);
    await s.store.write(offset, bytes);
    region = { ...region, offset, length };
    const table = encodeRegionTable(s.regions.all.map((r) => (r === s.regions.bat ? region : r)));
    for (const at of REGION_TABLE_OFFSETS) await stage(s, updates, at, table);
  } else {
    if (s.fileSize < s.fileEnd) {
      await s.store.truncate(s.fileEnd);
      s.fileSize = s.fileEnd;
    }
    const n = Math.max(bytes.length, old.bytes.length);
    for (let at = 0; at < n; at += LOG_SECTOR) {
      const a = bytes.subarray(at, at + LOG_SECTOR);
      const b = old.bytes.subarray(at, at + LOG_SECTOR);
      if (a.length === LOG_SECTOR && Buffer.compare(a, b) !== 0) updates.set(region.offset + at, a.slice());
    }
  }
  const sizeItem = s.metadataEntries.find((e) => e.id === GUIDS.virtualDiskSize)!;
  // Map order is the commit order: the BAT sectors above, then the size.
  const sized = new Map(updates);
  updates.clear();
  for (const [k, v] of sized) if (k >= s.regions.bat.offset) updates.set(k, v);
  for (const [k, v] of sized) if (k < s.regions.bat.offset) updates.set(k, v);
  await stage(s, updates, s.regions.metadata.offset + sizeItem.offset, VirtualDiskSize.encode({ size: BigInt(newSize) }));
  await s.journal.commit(updates, () => {});
  s.regions = { ...s.regions, bat: region, all: s.regions.all.map((r) => (r === s.regions.bat ? region : r)) };
  s.bat = bat;
  s.params = { ...p, virtualSize: newSize };
  s.bitmaps.clear();
}

/**
 * Why rebase -b "" cannot flatten a differencing VHDX in place: a dynamic
 * VHDX has no PAYLOAD_BLOCK_PARTIALLY_PRESENT blocks and no sector bitmaps
 * (2.5.1), so every partly present block would have to become fully present
 * (its absent sectors zeroed first), the sector bitmap entries dropped, and
 * the parent locator and HasParent flag (2.6.2.1, 2.6.2.6) removed in one
 * logged update — which, for a large disk, is more than one log
 * transaction holds. Not done: a copy does the same safely.
 */
export const VHDX_FLATTEN_REFUSAL =
  'a differencing VHDX cannot drop its parent in place (its partly present blocks, sector bitmaps and parent locator would all have to change in one logged update); copy the disk the chain shows into a new image instead: vdisk convert -O vhdx IMAGE NEW.vhdx (then replace IMAGE with NEW.vhdx)';

/**
 * Rewrite the parent locator (2.6.2.6) — rebase -u: no data moves. The new
 * locator goes where the old one was when it fits, else after the last item
 * of the metadata region; the table entry and the item change in one
 * journaled transaction.
 */
export async function setBackingVhdx(s: VhdxState, parent: BackingTarget | null): Promise<void> {
  const ctx = { path: s.path };
  if (!s.params.hasParent) throw new BlockError('unsupported', 'only a differencing VHDX can change its parent (this disk has none)', ctx);
  if (!parent) throw new BlockError('unsupported', VHDX_FLATTEN_REFUSAL, ctx);
  const locator = locatorFor(s.path, parent);
  const raw = encodeParentLocator(locator);
  const entries = s.metadataEntries.map((e) => ({ ...e }));
  const entry = entries.find((e) => e.id === GUIDS.parentLocator)!;
  let offset = entry.offset;
  if (raw.length > entry.length) {
    offset = alignUp(Math.max(METADATA_TABLE_SIZE, ...entries.map((e) => e.offset + e.length)), 8);
    if (offset + raw.length > s.regions.metadata.length) throw new BlockError('unsupported', 'the new parent locator does not fit the metadata region', ctx);
  }
  entry.offset = offset;
  entry.length = raw.length;
  const updates: SectorUpdates = new Map();
  await stage(s, updates, s.regions.metadata.offset + offset, raw);
  const table = encodeMetadataTable(entries);
  // Only the part holding entries changes; the rest of the table stays as it is on disk.
  await stage(s, updates, s.regions.metadata.offset, table.subarray(0, alignUp(32 + entries.length * 32, LOG_SECTOR)));
  await s.journal.commit(updates, () => {});
  s.metadataEntries = entries;
  s.parentLocator = locator;
  s.backing = backingFromLocator(locator, s.path);
}
