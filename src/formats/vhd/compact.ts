import { alignUp } from '../../core/u64.js';
import { readExact } from '../../io/store.js';
import { copyMoves, FreeRanges, planMoves, unusedRanges, type FileRange, type MovableUnit } from '../free-ranges.js';
import type { CompactBlocks, CompactOptions, CompactOutcome } from '../types.js';
import { ENTRIES_PER_SECTOR, UNALLOCATED, batBytes, encodeBatSector } from './bat.js';
import { clearBatmap } from './batmap.js';
import { DYNAMIC_HEADER_SIZE } from './dynamic-header.js';
import { FOOTER_SIZE, SECTOR } from './footer.js';
import { bitmapBytes, clearBits, findBit } from './sector-bitmap.js';
import { endFileAt } from './check.js';
import type { VhdState } from './state.js';

/*
 * Compaction of a dynamic or differencing VHD (vdisk compact). VHD has no
 * log, so every step is one that a crash may stop anywhere, ordered as the
 * write path orders an allocation (image.ts: data before the pointer to it):
 *
 *   0. clear (zero mode in a differencing layer, the caller's runs): the
 *      sector bits of zero runs over zeros in the parent are cleared in
 *      place, bitmap sector by bitmap sector. Either value of such a bit
 *      reads the same zeros, so any subset of these writes may land.
 *   1. release: the batmap, if any, is cleared first (a set bit for a block
 *      that is no longer allocated would be a lie; a clear one never is);
 *      then the released blocks' BAT entries become 0xFFFFFFFF, written and
 *      flushed. From here nothing durable points at their space.
 *   2. move: a block at the end of the file (its sector bitmap and data) is
 *      copied into a hole below it and flushed; only then its BAT entry is
 *      switched (written, flushed). A crash in between leaves the old entry
 *      naming the old copy, untouched. Holes a move frees lie above every
 *      block still to move (free-ranges.ts planMoves), so none is reused
 *      while a durable entry names it.
 *   3. the footer is written at the new end and flushed, then the file is
 *      cut after it: a crash before the cut leaves the old end footer in
 *      place, still the last sector and still valid (its contents never
 *      change: a VHD footer records no file size).
 *
 * The footer's unique id (what a child names as its parent) does not change.
 */

/** Bytes of blocks moved per batch: each batch is one copy, one flush, then its BAT sectors and a flush. */
const MOVE_BATCH_BYTES = 512 << 20;

export async function compactBlocksVhd(state: VhdState): Promise<CompactBlocks> {
  const h = state.header!;
  const bat = state.bat!;
  const differencing = state.footer.diskType === 'differencing';
  const sectorsPerBlock = h.blockSize / SECTOR;
  const blocks: CompactBlocks['blocks'] = [];
  for (let i = 0; i < bat.length; i++) {
    if (bat[i] === UNALLOCATED) continue;
    let trimmed = false;
    if (differencing) {
      // No bit set: every sector of the block reads from the parent (a discard cleared them all).
      const bits = await readExact(state.store, bat[i] * SECTOR, new Uint8Array(bitmapBytes(h.blockSize)), `sector bitmap of block ${i}`);
      trimmed = findBit(bits, 0, sectorsPerBlock, true) === sectorsPerBlock;
    }
    blocks.push({ index: i, trimmed });
  }
  return { blockSize: h.blockSize, blocks };
}

/** Write the BAT sectors holding `blocks`' entries, from the in-memory table, and flush. */
async function writeBatSectors(state: VhdState, blocks: Iterable<number>): Promise<void> {
  const h = state.header!;
  const sectors = [...new Set([...blocks].map((b) => Math.floor(b / ENTRIES_PER_SECTOR)))].sort((a, b) => a - b);
  for (const sec of sectors) await state.store.write(h.tableOffset + sec * SECTOR, encodeBatSector(state.bat!, sec, h.maxTableEntries));
  await state.store.flush();
}

/** Metadata (fixed in place) and blocks (movable) of a dynamic or differencing VHD. */
function layout(state: VhdState, skip: ReadonlySet<number> = new Set()): { fixed: FileRange[]; units: MovableUnit[]; span: number } {
  const h = state.header!;
  const bat = state.bat!;
  const span = bitmapBytes(h.blockSize) + h.blockSize;
  const fixed: FileRange[] = [
    { offset: 0, length: FOOTER_SIZE },
    { offset: state.headerOffset, length: DYNAMIC_HEADER_SIZE },
    { offset: h.tableOffset, length: batBytes(h.maxTableEntries) },
  ];
  for (const l of state.locators) fixed.push({ offset: l.dataOffset, length: l.dataLength });
  if (state.batmap) fixed.push({ offset: state.batmap.headerOffset, length: SECTOR }, { offset: state.batmap.offset, length: state.batmap.size });
  const units: MovableUnit[] = [];
  for (let i = 0; i < bat.length; i++) if (bat[i] !== UNALLOCATED && !skip.has(i)) units.push({ id: i, offset: bat[i] * SECTOR, length: span });
  return { fixed, units, span };
}

/** Holes inside the file, before the end footer, that could each hold a block (free-ranges.ts): where new blocks go first. */
export function vhdFreeSpace(state: VhdState): FreeRanges {
  const { fixed, units, span } = layout(state);
  return new FreeRanges(unusedRanges([...fixed, ...units], 0, state.footerOffset, span));
}

export async function compactVhd(
  state: VhdState,
  release: readonly number[],
  options: CompactOptions,
): Promise<CompactOutcome> {
  const { store } = state;
  const before = await store.size();
  const bat = state.bat!;
  const releasing = release.filter((b) => b < bat.length && bat[b] !== UNALLOCATED);
  const clearing = clearPlan(state, options.clear ?? [], new Set(releasing));
  const cleared = clearing.reduce((n, c) => n + c.bytes, 0);
  const { fixed, units, span } = layout(state, new Set(releasing));
  const free = new FreeRanges(unusedRanges([...fixed, ...units], 0, state.footerOffset, span));
  const moves = planMoves(units, free, SECTOR);
  const target = new Map(moves.map((m) => [m.unit, m.to]));
  let end = 0;
  for (const r of fixed) end = Math.max(end, r.offset + r.length);
  for (const u of units) end = Math.max(end, (target.get(u) ?? u.offset) + u.length);
  const newFooter = Math.min(state.footerOffset, alignUp(end, SECTOR));
  if (options.dryRun) return { bytesBefore: before, bytesAfter: Math.min(before, newFooter + FOOTER_SIZE), moved: moves.length, cleared };

  // 0. clear: each block's bitmap read, its runs cleared, the changed bitmap sectors written back; one flush.
  if (clearing.length) {
    const bits = new Uint8Array(bitmapBytes(state.header!.blockSize));
    for (const { block, runs } of clearing) {
      await readExact(store, bat[block] * SECTOR, bits, `sector bitmap of block ${block}`);
      const old = bits.slice();
      for (const [from, to] of runs) clearBits(bits, from, to);
      for (let at = 0; at < bits.length; at += SECTOR) {
        const sector = bits.subarray(at, at + SECTOR);
        if (!sameBytes(sector, old.subarray(at, at + SECTOR))) await store.write(bat[block] * SECTOR + at, sector);
      }
    }
    await store.flush();
  }
  // 1. release
  if (releasing.length) {
    if (state.batmap) await clearBatmap(store, state.batmap);
    for (const b of releasing) bat[b] = UNALLOCATED;
    await writeBatSectors(state, releasing);
  }
  // 2. move
  let done = 0;
  const perBatch = Math.max(1, Math.floor(MOVE_BATCH_BYTES / span));
  for (let k = 0; k < moves.length; k += perBatch) {
    const batch = moves.slice(k, k + perBatch);
    await copyMoves(store, batch);
    await store.flush();
    for (const { unit, to } of batch) {
      bat[unit.id] = to / SECTOR;
      options.onProgress?.(++done, moves.length);
    }
    await writeBatSectors(state, batch.map((m) => m.unit.id));
  }
  // 3. footer at the new end, then the cut.
  if (newFooter < state.footerOffset || state.endFooterDamaged) {
    await endFileAt(state, newFooter);
  }
  if (state.free) state.free = vhdFreeSpace(state);
  return { bytesBefore: before, bytesAfter: await store.size(), moved: moves.length, cleared };
}

/** Whether two equal-length byte arrays are the same. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  for (let k = 0; k < a.length; k++) if (a[k] !== b[k]) return false;
  return true;
}

/**
 * The caller's runs (disk byte ranges) as sector ranges per allocated
 * block that stays, in block order (a differencing disk only: a dynamic
 * disk's bits say "written", and clearing them would change nothing it
 * gives back).
 */
function clearPlan(state: VhdState, runs: readonly { offset: number; length: number }[], releasing: ReadonlySet<number>): { block: number; runs: [number, number][]; bytes: number }[] {
  if (state.footer.diskType !== 'differencing' || runs.length === 0) return [];
  const h = state.header!;
  const bat = state.bat!;
  const byBlock = new Map<number, { block: number; runs: [number, number][]; bytes: number }>();
  for (const r of runs) {
    const block = Math.floor(r.offset / h.blockSize);
    const start = r.offset - block * h.blockSize;
    if (block >= bat.length || bat[block] === UNALLOCATED || releasing.has(block) || start % SECTOR || r.length % SECTOR || start + r.length > h.blockSize) continue;
    let e = byBlock.get(block);
    if (!e) byBlock.set(block, (e = { block, runs: [], bytes: 0 }));
    e.runs.push([start / SECTOR, (start + r.length) / SECTOR]);
    e.bytes += r.length;
  }
  return [...byBlock.values()].sort((a, b) => a.block - b.block);
}
