import { alignUp } from '../../core/u64.js';
import { readExact } from '../../io/store.js';
import type { CheckProblem, CheckResult } from '../types.js';
import { UNALLOCATED, batBytes } from './bat.js';
import { clearBatmap } from './batmap.js';
import { DYNAMIC_HEADER_SIZE } from './dynamic-header.js';
import { FOOTER_SIZE, encodeFooter, SECTOR } from './footer.js';
import { bitmapBytes, findBit } from './sector-bitmap.js';
import type { VhdState } from './state.js';


/*
 * check (and repair). Like maintenance.ts, a repair keeps the file valid at
 * every step: the footer is written before anything after it is cut.
 */

/** Byte ranges the file uses: metadata and blocks. */
function usedRanges(state: VhdState): Array<[number, number, string]> {
  const h = state.header!;
  const out: Array<[number, number, string]> = [
    [0, FOOTER_SIZE, 'footer copy'],
    [state.headerOffset, state.headerOffset + DYNAMIC_HEADER_SIZE, 'dynamic header'],
    [h.tableOffset, h.tableOffset + batBytes(h.maxTableEntries), 'BAT'],
  ];
  for (const l of state.locators) out.push([l.dataOffset, l.dataOffset + l.dataLength, `parent locator ${l.index}`]);
  if (state.batmap) out.push([state.batmap.headerOffset, state.batmap.headerOffset + 512, 'batmap header'], [state.batmap.offset, state.batmap.offset + state.batmap.size, 'batmap']);
  const span = bitmapBytes(h.blockSize) + h.blockSize;
  const bat = state.bat!;
  for (let i = 0; i < bat.length; i++) if (bat[i] !== UNALLOCATED) out.push([bat[i] * SECTOR, bat[i] * SECTOR + span, `block ${i}`]);
  return out.sort((a, b) => a[0] - b[0]);
}

/** What leaves unused space at the end of a VHD file. */
const TAIL_CAUSE = 'an interrupted allocation or compaction leaves this';

/**
 * Where the last structure ends (sector aligned), and the bytes between
 * there and the end footer when they could hold a block: what a crash
 * leaves after an allocation wrote a block and the footer past it but not
 * yet its BAT entry (image.ts), or after compaction moved blocks down but
 * did not yet cut the file (compact.ts). Smaller gaps are padding some
 * writers leave; a damaged end footer is check -r all's business.
 */
function unusedTail(state: VhdState): { usedEnd: number; bytes: number } {
  if (!state.header || state.endFooterDamaged) return { usedEnd: state.footerOffset, bytes: 0 };
  const h = state.header;
  const span = bitmapBytes(h.blockSize) + h.blockSize;
  // The metadata's end, then the highest block's (one pass, no list: this runs at every writable open).
  let end = Math.max(state.headerOffset + DYNAMIC_HEADER_SIZE, h.tableOffset + batBytes(h.maxTableEntries));
  for (const l of state.locators) end = Math.max(end, l.dataOffset + l.dataLength);
  if (state.batmap) end = Math.max(end, state.batmap.headerOffset + SECTOR, state.batmap.offset + state.batmap.size);
  const bat = state.bat!;
  let top = 0;
  for (let i = 0; i < bat.length; i++) if (bat[i] !== UNALLOCATED && bat[i] > top) top = bat[i];
  if (top) end = Math.max(end, top * SECTOR + span);
  const usedEnd = alignUp(end, SECTOR);
  const gap = state.footerOffset - usedEnd;
  return { usedEnd, bytes: gap >= span ? gap : 0 };
}

/**
 * Give the unused tail back, in the order compaction's last step uses: the
 * footer at the used end first, made durable, then the cut. A crash before
 * the cut leaves the old end footer last and valid (a VHD footer records no
 * file size), a crash after it the new one. Returns the bytes given back.
 * Only on a writable store, under the image's lock (open holds it).
 */
export async function giveBackTail(state: VhdState): Promise<number> {
  const { usedEnd, bytes } = unusedTail(state);
  if (bytes === 0) return 0;
  await endFileAt(state, usedEnd);
  return bytes;
}

/**
 * Make `at` the end footer's place and cut the file after it: the footer
 * first, made durable, then the cut, made durable. A crash in between leaves
 * the old end footer still last and valid (its contents never change: a VHD
 * footer records no file size), or, where the end footer was damaged, the
 * copy at offset 0 in charge. Shared by compaction's last step, the tail
 * given back at a writable open, and check's repairs.
 */
export async function endFileAt(state: VhdState, at: number): Promise<void> {
  await state.store.write(at, encodeFooter(state.footer));
  await state.store.flush();
  await state.store.truncate(at + FOOTER_SIZE);
  await state.store.flush();
  state.footerOffset = at;
  state.endFooterDamaged = null;
}

export async function checkVhd(state: VhdState, options: { repair?: 'leaks' | 'all' }): Promise<CheckResult> {
  const { store } = state;
  const { repair } = options;
  const problems: CheckProblem[] = [];
  const f = state.footer;
  for (const c of state.badChecksums) problems.push({ severity: 'corruption', message: `${c} checksum is wrong (opened with ignore-checksums)` });
  if (state.endFooterDamaged) {
    const p: CheckProblem = { severity: 'corruption', message: `footer at the end of the file is damaged (${state.endFooterDamaged})`, offset: state.footerOffset };
    if (repair === 'all') {
      // Footer first, then cut whatever follows it: a crash in between leaves the footer copy at 0 in charge.
      await endFileAt(state, state.footerOffset);
      p.repaired = true;
    }
    problems.push(p);
  }
  if (!state.header) return { problems, details: { 'disk-type': f.diskType } };
  if (state.copyFooterProblem) {
    const p: CheckProblem = { severity: 'corruption', message: `footer copy at offset 0: ${state.copyFooterProblem}`, offset: 0 };
    if (repair === 'all') {
      await store.write(0, encodeFooter(f));
      await store.flush();
      state.copyFooterProblem = null;
      p.repaired = true;
    }
    problems.push(p);
  }

  // Overlaps between blocks (open already refuses blocks over metadata or past the end).
  const ranges = usedRanges(state);
  for (let i = 1; i < ranges.length; i++) {
    const [a0, a1, an] = ranges[i - 1];
    const [b0, , bn] = ranges[i];
    if (b0 < a1 && !(an.startsWith('parent locator') && bn.startsWith('parent locator'))) {
      problems.push({ severity: 'corruption', message: `${an} and ${bn} overlap at ${b0}`, offset: a0 });
    }
  }

  // Sector bitmaps: a dynamic disk's blocks are written whole, so a bitmap with clear bits is worth knowing
  // (tools that honour it read those sectors as zeros, others read the data).
  const h = state.header;
  const bat = state.bat!;
  const sectorsPerBlock = h.blockSize / SECTOR;
  let allocated = 0;
  let partial = 0;
  for (let i = 0; i < bat.length; i++) {
    if (bat[i] === UNALLOCATED) continue;
    allocated++;
    if (f.diskType !== 'dynamic') continue;
    const bits = await readExact(store, bat[i] * SECTOR, new Uint8Array(bitmapBytes(h.blockSize)), `sector bitmap of block ${i}`);
    if (findBit(bits, 0, sectorsPerBlock, false) !== sectorsPerBlock) partial++;
  }
  if (partial) problems.push({ severity: 'info', message: `${partial} block(s) of this dynamic disk have sector bitmaps with clear bits` });

  if (state.batmap && !state.batmap.checksumOk) {
    const p: CheckProblem = { severity: 'corruption', message: 'batmap checksum is wrong', offset: state.batmap.headerOffset };
    if (repair === 'all') {
      await clearBatmap(store, state.batmap);
      p.repaired = true;
    }
    problems.push(p);
  }

  // Leaks: space that could hold a block but is used by nothing (smaller gaps are the alignment padding Windows
  // leaves between structures). Holes inside the file are free space, not leaks: compact's zero mode (or a crash)
  // leaves them, a writable open puts new blocks there (free-ranges.ts), and compact gives them back. Only space
  // at the end is lost, and a writable open gives that back before anything else (giveBackTail, called by open.ts):
  // a read-only check still finds it, a check of a writable open reports it given back.
  const blockSpan = bitmapBytes(h.blockSize) + h.blockSize;
  let end = 0;
  let free = 0;
  for (const [a, z] of ranges) {
    if (a - end >= blockSpan) free += a - end;
    end = Math.max(end, z);
  }
  if (free > 0) problems.push({ severity: 'info', message: `${free} bytes inside the file are free: new blocks reuse them, and vdisk compact gives them back` });
  let leaked = 0;
  if (state.tailGivenBack > 0) {
    problems.push({ severity: 'leak', message: `${state.tailGivenBack} bytes at the end of the file were used by nothing (${TAIL_CAUSE}): given back when the image was opened writable`, repaired: true });
    state.tailGivenBack = 0; // reported once
  }
  const tail = unusedTail(state);
  if (tail.bytes > 0) {
    leaked += tail.bytes;
    const p: CheckProblem = { severity: 'leak', message: `${tail.bytes} bytes at the end of the file are used by nothing (${TAIL_CAUSE}): a writable open or check -r leaks gives them back` };
    if (repair && !state.readOnly) {
      await giveBackTail(state);
      p.repaired = true;
    }
    problems.push(p);
  }
  return { problems, details: { 'disk-type': f.diskType, 'allocated-blocks': allocated, 'total-blocks': bat.length, 'leaked-bytes': leaked, 'free-bytes': free } };
}
