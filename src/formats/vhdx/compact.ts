import { alignDown, alignUp } from '../../core/u64.js';
import { copyMoves, FreeRanges, planMoves, unusedRanges, type FileRange, type MovableUnit } from '../free-ranges.js';
import type { CompactBlocks, CompactOptions, CompactOutcome } from '../types.js';
import { Bat, BAT_ENTRY_SIZE, PAYLOAD_FULLY_PRESENT, PAYLOAD_NOT_PRESENT, PAYLOAD_PARTIALLY_PRESENT, PAYLOAD_ZERO, SB_PRESENT } from './bat.js';
import type { SectorUpdates } from './journal.js';
import { HEADER_SECTION_SIZE, LOG_SECTOR, MiB, SECTOR_BITMAP_BLOCK_SIZE } from './layout.js';
import { setBits } from './sector-bitmap.js';
import type { VhdxState } from './state.js';

/*
 * Compaction of a dynamic or differencing VHDX (vdisk compact). The order,
 * chosen so that a crash anywhere leaves a file that opens (replaying the
 * log) and reads exactly the old disk:
 *
 *   0. clear (zero mode in a differencing layer, the caller's runs): the
 *      sector bits of zero runs over zeros in the parent are cleared through
 *      the log (a FULLY_PRESENT block becomes PARTIALLY_PRESENT with its
 *      other bits set). Each block's bitmap sectors and BAT entry go in one
 *      log entry; any bit of such a run reads the same zeros set or clear.
 *   1. release: the released blocks' BAT entries change through the log
 *      (2.3), like every BAT change. Once the entry is in the log (flushed),
 *      replay puts it back after a crash, so nothing durable points at the
 *      released space any more.
 *   2. move: a block at the end of the file is copied into a hole below it
 *      (space step 1, or an earlier writer, left unreferenced), then its BAT
 *      entry is switched through the log. The log entry is written after a
 *      flush (Journal.commit), so the copy is durable before any entry names
 *      it; until the switch the old copy, untouched, is the block. A hole a
 *      move frees lies above every block still to move (free-ranges.ts
 *      planMoves), so nothing is ever written where a durable entry points.
 *   3. the log is made empty (in-place writes flushed, LogGuid zeroed), then
 *      the file is cut after its last structure: a replay never needs space
 *      past the cut.
 *
 * Only FileWriteGuid changes (the caller's beginWrite): the disk reads the
 * same, so DataWriteGuid, which children name as parent_linkage, stays.
 */

/** Bytes of blocks moved per batch: one copy, then one log transaction for their entries (whose flush makes the copies durable first). */
const MOVE_BATCH_BYTES = 512 * MiB;

function isPresent(state: number): boolean {
  return state === PAYLOAD_FULLY_PRESENT || state === PAYLOAD_PARTIALLY_PRESENT;
}

/** The blocks holding file space, and those whose metadata says they hold nothing. */
export async function compactBlocksVhdx(s: VhdxState): Promise<CompactBlocks> {
  const bat = s.bat;
  const g = bat.geometry;
  const blocks: CompactBlocks['blocks'] = [];
  const lss = g.logicalSectorSize;
  const sectorsPerBlock = g.blockSize / lss;
  for (let block = 0; block < g.dataBlocks; block++) {
    const i = bat.payloadIndex(block);
    const st = bat.state(i);
    if (st === PAYLOAD_PARTIALLY_PRESENT) {
      // A PARTIALLY_PRESENT block with no bit set holds nothing for the disk (all of it reads from the parent).
      const chunk = Math.floor(block / g.chunkRatio);
      const first = bat.offset(bat.bitmapIndex(chunk)) + ((block % g.chunkRatio) * sectorsPerBlock) / 8;
      let any = false;
      for (let at = first; at < first + sectorsPerBlock / 8 && !any; at = alignDown(at, LOG_SECTOR) + LOG_SECTOR) {
        const sector = await s.bitmaps.sector(alignDown(at, LOG_SECTOR));
        const from = at % LOG_SECTOR;
        const to = Math.min(LOG_SECTOR, from + (first + sectorsPerBlock / 8 - at));
        for (let k = from; k < to; k++) if (sector[k] !== 0) any = true;
      }
      blocks.push({ index: block, trimmed: !any });
    } else if (st === PAYLOAD_FULLY_PRESENT) blocks.push({ index: block, trimmed: false });
    // Any other state with a file offset (Hyper-V leaves one on UNMAPPED blocks): space nothing reads.
    else if (bat.offset(i) !== 0) blocks.push({ index: block, trimmed: true });
  }
  return { blockSize: g.blockSize, blocks };
}

/** Stage BAT entry `index` into a transaction (the sector images come from the in-memory BAT). */
function stageEntry(s: VhdxState, updates: SectorUpdates, index: number, state: number, fileOffset: number): void {
  const byte = s.regions.bat.offset + index * BAT_ENTRY_SIZE;
  const sector = alignDown(byte, LOG_SECTOR);
  let img = updates.get(sector);
  if (!img) {
    img = s.bat.bytes.slice(sector - s.regions.bat.offset, sector - s.regions.bat.offset + LOG_SECTOR);
    updates.set(sector, img);
  }
  Bat.encode(new DataView(img.buffer, img.byteOffset, img.byteLength), byte - sector, state, fileOffset);
}

async function commitBat(s: VhdxState, updates: SectorUpdates): Promise<void> {
  if (updates.size === 0) return;
  const region = s.regions.bat;
  await s.journal.commit(updates, (offset, data) => {
    if (offset >= region.offset && offset < region.offset + s.bat.bytes.length) s.bat.bytes.set(data, offset - region.offset);
    else s.bitmaps.put(offset, data);
  });
  updates.clear();
}

/**
 * Clear a released differencing block's sector bits, when its chunk has a
 * bitmap: libvhdi (20210425) reads a set bit from the child even in a
 * NOT_PRESENT block.
 */
async function stageClearBits(s: VhdxState, updates: SectorUpdates, block: number): Promise<void> {
  const g = s.bat.geometry;
  const bi = s.bat.bitmapIndex(Math.floor(block / g.chunkRatio));
  if (bi >= g.entryCount || s.bat.state(bi) !== SB_PRESENT) return;
  const sectorsPerBlock = g.blockSize / g.logicalSectorSize;
  const first = s.bat.offset(bi) + ((block % g.chunkRatio) * sectorsPerBlock) / 8;
  const end = first + sectorsPerBlock / 8;
  for (let sector = alignDown(first, LOG_SECTOR); sector < end; sector += LOG_SECTOR) {
    let img = updates.get(sector);
    if (!img) {
      img = (await s.bitmaps.sector(sector)).slice();
      updates.set(sector, img);
    }
    img.fill(0, Math.max(first, sector) - sector, Math.min(end, sector + LOG_SECTOR) - sector);
  }
}

/** The entry a released block gets: holding nothing, reading as before where the caller said so. */
function releasedState(s: VhdxState, state: number): number {
  if (isPresent(state)) return s.params.hasParent ? PAYLOAD_NOT_PRESENT : PAYLOAD_ZERO;
  return state; // a non-present entry only loses its file offset: it reads the same
}

/** What compaction works with: the fixed structures, and the blocks and bitmaps it may move (with their BAT entries). */
function layout(s: VhdxState, bat: Bat): { fixed: FileRange[]; units: MovableUnit[] } {
  const g = bat.geometry;
  const fixed: FileRange[] = [{ offset: 0, length: HEADER_SECTION_SIZE }];
  if (s.log.length) fixed.push({ offset: s.log.offset, length: s.log.length });
  for (const r of s.regions.all) fixed.push({ offset: r.offset, length: r.length });
  const units: MovableUnit[] = [];
  for (let block = 0; block < g.dataBlocks; block++) {
    const i = bat.payloadIndex(block);
    // A block always owns a whole block of file space (check.ts), the disk's last, partial one too.
    if (isPresent(bat.state(i))) units.push({ id: i, offset: bat.offset(i), length: g.blockSize });
    // Any other entry still naming space (Hyper-V keeps the offset of an UNMAPPED block): left where it is, untouched.
    else if (bat.offset(i) !== 0) fixed.push({ offset: bat.offset(i), length: g.blockSize });
  }
  if (g.hasParent) {
    for (let chunk = 0; chunk < g.bitmapBlocks; chunk++) {
      const i = bat.bitmapIndex(chunk);
      if (i < g.entryCount && bat.state(i) === SB_PRESENT) units.push({ id: i, offset: bat.offset(i), length: SECTOR_BITMAP_BLOCK_SIZE });
    }
  }
  return { fixed, units };
}

/** Where the file may end: after the last structure, a 1 MiB multiple (the disk's last block needs only its own bytes). */
function endOf(s: VhdxState, fixed: readonly FileRange[], placed: readonly MovableUnit[]): number {
  const g = s.bat.geometry;
  let end = 0;
  for (const r of fixed) end = Math.max(end, r.offset + r.length);
  const lastBlockIndex = s.bat.payloadIndex(g.dataBlocks - 1);
  const lastLength = alignUp(g.virtualSize - (g.dataBlocks - 1) * g.blockSize, MiB);
  for (const u of placed) end = Math.max(end, u.offset + (u.id === lastBlockIndex ? lastLength : u.length));
  return alignUp(end, MiB);
}

/** The holes inside the file that nothing uses, for new blocks (free-ranges.ts; at least 1 MiB each, 1 MiB aligned). */
export function vhdxFreeSpace(s: VhdxState): FreeRanges {
  const { fixed, units } = layout(s, s.bat);
  return new FreeRanges(unusedRanges([...fixed, ...units], HEADER_SECTION_SIZE, alignDown(s.fileSize, MiB), MiB));
}

export async function compactVhdx(
  s: VhdxState,
  release: readonly number[],
  options: CompactOptions,
): Promise<CompactOutcome> {
  const before = await s.store.size();
  // The BAT as it will be after step 1 (a copy: a dry run changes nothing).
  const after = new Bat(s.bat.geometry, s.bat.bytes.slice());
  const dv = new DataView(after.bytes.buffer);
  const releasedEntries: number[] = [];
  for (const block of release) {
    const i = after.payloadIndex(block);
    const st = after.state(i);
    if (!isPresent(st) && after.offset(i) === 0) continue;
    Bat.encode(dv, i * BAT_ENTRY_SIZE, releasedState(s, st), 0);
    releasedEntries.push(i);
  }
  const { fixed, units } = layout(s, after);
  const fileEnd = Math.max(before, ...units.map((u) => u.offset + u.length));
  const free = new FreeRanges(unusedRanges([...fixed, ...units], HEADER_SECTION_SIZE, fileEnd, MiB));
  const moves = planMoves(units, free, MiB);
  const target = new Map(moves.map((m) => [m.unit, m.to]));
  const placed = units.map((u) => ({ ...u, offset: target.get(u) ?? u.offset }));
  const newEnd = Math.min(before, endOf(s, fixed, placed));
  const updates: SectorUpdates = new Map();
  const cleared = await clearRuns(s, updates, options.clear ?? [], new Set(releasedEntries), options.dryRun);
  if (options.dryRun) return { bytesBefore: before, bytesAfter: newEnd, moved: moves.length, cleared };

  // 1. release
  for (const i of releasedEntries) {
    const block = i - Math.floor(i / (s.bat.geometry.chunkRatio + 1));
    if (s.params.hasParent && isPresent(s.bat.state(i))) await stageClearBits(s, updates, block);
    stageEntry(s, updates, i, after.state(i), 0);
    if (updates.size >= s.journal.capacity) await commitBat(s, updates);
  }
  await commitBat(s, updates);
  // 2. move, a batch at a time: copies (made durable by the commit's flush), then one log entry for the batch's entries.
  let done = 0;
  // Entries per batch: as many blocks as MOVE_BATCH_BYTES holds, and no more BAT sectors than one log entry carries.
  const perBatch = Math.max(1, Math.min(s.journal.capacity, Math.floor(MOVE_BATCH_BYTES / s.bat.geometry.blockSize)));
  for (let k = 0; k < moves.length; k += perBatch) {
    const batch = moves.slice(k, k + perBatch);
    await copyMoves(s.store, batch);
    for (const { unit, to } of batch) {
      stageEntry(s, updates, unit.id, s.bat.state(unit.id), to);
      options.onProgress?.(++done, moves.length);
    }
    await commitBat(s, updates);
  }
  // 3. an empty log, then the cut.
  await s.journal.close();
  if (newEnd < before) {
    await s.store.truncate(newEnd);
    await s.store.flush();
  }
  s.fileSize = await s.store.size();
  s.fileEnd = alignUp(Math.max(s.fileSize, newEnd), MiB);
  // Bitmap sectors are cached by file offset, and bitmap blocks may have moved.
  s.bitmaps.clear();
  s.free = vhdxFreeSpace(s);
  return { bytesBefore: before, bytesAfter: s.fileSize, moved: moves.length, cleared };
}

/** Stage bits [first, first+count) of the sector bitmap block at file offset `sb` as `value` (2.5.1: bit n is logical sector n of the chunk). */
async function stageBits(s: VhdxState, updates: SectorUpdates, sb: number, first: number, count: number, value: boolean): Promise<void> {
  const end = first + count;
  for (let sector = sb + alignDown(first / 8, LOG_SECTOR); sector < sb + Math.ceil(end / 8); sector += LOG_SECTOR) {
    let img = updates.get(sector);
    if (!img) {
      img = (await s.bitmaps.sector(sector)).slice();
      updates.set(sector, img);
    }
    const sectorFirstBit = (sector - sb) * 8;
    const a = Math.max(first, sectorFirstBit);
    const b = Math.min(end, sectorFirstBit + LOG_SECTOR * 8);
    if (b > a) setBits(img, a - sectorFirstBit, b - a, value);
  }
}

/**
 * Step 0: clear the sector bits of `runs` (disk byte ranges, whole logical
 * sectors, each inside one block) of a differencing disk's blocks that stay.
 * A FULLY_PRESENT block first gets every bit set and becomes
 * PARTIALLY_PRESENT — only in a chunk that has a sector bitmap block
 * already: making one would add a MiB to the file compaction is shrinking,
 * to free nothing, so such runs stay (their content is kept either way).
 * A block's sectors are committed together: a log entry never splits
 * between a block's bits and its BAT entry. Returns the bytes cleared.
 */
async function clearRuns(s: VhdxState, updates: SectorUpdates, runs: readonly { offset: number; length: number }[], releasing: ReadonlySet<number>, dryRun: boolean): Promise<number> {
  if (!s.params.hasParent || runs.length === 0) return 0;
  const g = s.bat.geometry;
  const lss = g.logicalSectorSize;
  const sectorsPerBlock = g.blockSize / lss;
  // Bitmap sectors one block's bits can span, plus its BAT sector.
  const perBlock = Math.ceil(sectorsPerBlock / 8 / LOG_SECTOR) + 2;
  let cleared = 0;
  let lastBlock = -1;
  const madePartial = new Set<number>();
  for (const r of [...runs].sort((a, b) => a.offset - b.offset)) {
    const block = Math.floor(r.offset / g.blockSize);
    const start = r.offset - block * g.blockSize;
    if (block >= g.dataBlocks || start % lss || r.length % lss || start + r.length > g.blockSize) continue;
    const i = s.bat.payloadIndex(block);
    const st = s.bat.state(i);
    const bi = s.bat.bitmapIndex(Math.floor(block / g.chunkRatio));
    if (!isPresent(st) || releasing.has(i) || bi >= g.entryCount || s.bat.state(bi) !== SB_PRESENT) continue;
    cleared += r.length;
    if (dryRun) continue;
    if (block !== lastBlock && updates.size + perBlock > s.journal.capacity) await commitBat(s, updates);
    lastBlock = block;
    const sb = s.bat.offset(bi);
    const firstBit = (block % g.chunkRatio) * sectorsPerBlock;
    if (st === PAYLOAD_FULLY_PRESENT && !madePartial.has(i)) {
      await stageBits(s, updates, sb, firstBit, sectorsPerBlock, true);
      stageEntry(s, updates, i, PAYLOAD_PARTIALLY_PRESENT, s.bat.offset(i));
      madePartial.add(i);
    }
    await stageBits(s, updates, sb, firstBit + start / lss, r.length / lss, false);
  }
  await commitBat(s, updates);
  return cleared;
}
