import { BlockError } from '../../core/errors.js';
import { alignUp } from '../../core/u64.js';
import { readExact } from '../../io/store.js';
import type { BackingTarget, CheckProblem, CheckResult } from '../types.js';
import { ENTRIES_PER_SECTOR, UNALLOCATED, batBytes, encodeBat, encodeBatSector } from './bat.js';
import { batmapChecksum, encodeBatmapHeader } from './batmap.js';
import { VHD_MAX_SIZE, layoutLocators, parentRecord } from './create.js';
import { DYNAMIC_HEADER_SIZE, encodeDynamicHeader } from './dynamic-header.js';
import { FOOTER_SIZE, chsForSectors, encodeFooter } from './footer.js';
import type { VhdImage } from './image.js';
import { readLocators } from './parent-locator.js';
import { bitmapBytes, findBit } from './sector-bitmap.js';

const SECTOR = 512;

/**
 * check, resize and setBacking. Each keeps the file valid at every step by
 * writing new structures where nothing points yet (the end of the file) and
 * switching to them with one sector write (the dynamic header or the footer).
 */

/** Byte ranges the file uses: metadata and blocks. */
function usedRanges(img: VhdImage): Array<[number, number, string]> {
  const { layout } = img;
  const h = layout.header!;
  const out: Array<[number, number, string]> = [
    [0, FOOTER_SIZE, 'footer copy'],
    [layout.headerOffset, layout.headerOffset + DYNAMIC_HEADER_SIZE, 'dynamic header'],
    [h.tableOffset, h.tableOffset + batBytes(h.maxTableEntries), 'BAT'],
  ];
  for (const l of layout.locators) out.push([l.dataOffset, l.dataOffset + l.dataLength, `parent locator ${l.index}`]);
  if (layout.batmap) out.push([layout.batmap.headerOffset, layout.batmap.headerOffset + 512, 'batmap header'], [layout.batmap.offset, layout.batmap.offset + layout.batmap.size, 'batmap']);
  const span = bitmapBytes(h.blockSize) + h.blockSize;
  const bat = layout.bat!;
  for (let i = 0; i < bat.length; i++) if (bat[i] !== UNALLOCATED) out.push([bat[i] * SECTOR, bat[i] * SECTOR + span, `block ${i}`]);
  return out.sort((a, b) => a[0] - b[0]);
}

export async function checkVhd(img: VhdImage, repair: 'leaks' | 'all' | undefined): Promise<CheckResult> {
  const { layout, store } = img;
  const problems: CheckProblem[] = [];
  const f = layout.footer;
  for (const c of layout.badChecksums) problems.push({ severity: 'corruption', message: `${c} checksum is wrong (opened with ignore-checksums)` });
  if (layout.endFooterDamaged) {
    const p: CheckProblem = { severity: 'corruption', message: `footer at the end of the file is damaged (${layout.endFooterDamaged})`, offset: layout.footerOffset };
    if (repair === 'all') {
      // Footer first, then cut whatever follows it: a crash in between leaves the footer copy at 0 in charge.
      await store.write(layout.footerOffset, encodeFooter(f));
      await store.flush();
      await store.truncate(layout.footerOffset + FOOTER_SIZE);
      await store.flush();
      layout.endFooterDamaged = null;
      p.repaired = true;
    }
    problems.push(p);
  }
  if (!layout.header) return { problems, details: { 'disk-type': f.diskType } };
  if (layout.copyFooterProblem) {
    const p: CheckProblem = { severity: 'corruption', message: `footer copy at offset 0: ${layout.copyFooterProblem}`, offset: 0 };
    if (repair === 'all') {
      await store.write(0, encodeFooter(f));
      await store.flush();
      layout.copyFooterProblem = null;
      p.repaired = true;
    }
    problems.push(p);
  }

  // Overlaps between blocks (open already refuses blocks over metadata or past the end).
  const ranges = usedRanges(img);
  for (let i = 1; i < ranges.length; i++) {
    const [a0, a1, an] = ranges[i - 1];
    const [b0, , bn] = ranges[i];
    if (b0 < a1 && !(an.startsWith('parent locator') && bn.startsWith('parent locator'))) {
      problems.push({ severity: 'corruption', message: `${an} and ${bn} overlap at ${b0}`, offset: a0 });
    }
  }

  // Sector bitmaps: a dynamic disk's blocks are written whole, so a bitmap with clear bits is worth knowing
  // (tools that honour it read those sectors as zeros, others read the data).
  const h = layout.header;
  const bat = layout.bat!;
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

  if (layout.batmap && !layout.batmap.checksumOk) {
    const p: CheckProblem = { severity: 'corruption', message: 'batmap checksum is wrong', offset: layout.batmap.headerOffset };
    if (repair === 'all') {
      await clearBatmap(img);
      p.repaired = true;
    }
    problems.push(p);
  }

  // Leaks: space that could hold a block but is used by nothing (smaller gaps are the alignment padding Windows
  // leaves between structures). Only a trailing one (a block written but never entered in the BAT, as a crash
  // leaves it) can be given back, by moving the footer down over it.
  const blockSpan = bitmapBytes(h.blockSize) + h.blockSize;
  let end = 0;
  let leaked = 0;
  for (const [a, z] of ranges) {
    if (a - end >= blockSpan) leaked += a - end;
    end = Math.max(end, z);
  }
  const usedEnd = alignUp(end, SECTOR);
  const gap = layout.endFooterDamaged ? 0 : layout.footerOffset - usedEnd;
  const trailing = gap >= blockSpan ? gap : 0;
  leaked += trailing;
  if (leaked > 0) {
    const p: CheckProblem = { severity: 'leak', message: `${leaked} bytes of the file are used by nothing${trailing ? ` (${trailing} at the end)` : ''}` };
    if (repair && trailing > 0) {
      await store.write(usedEnd, encodeFooter(f));
      await store.flush();
      await store.truncate(usedEnd + FOOTER_SIZE);
      await store.flush();
      layout.footerOffset = usedEnd;
      p.repaired = leaked === trailing;
      if (!p.repaired) p.message += '; only the part at the end was given back';
    }
    problems.push(p);
  }
  return { problems, details: { 'disk-type': f.diskType, 'allocated-blocks': allocated, 'total-blocks': bat.length, 'leaked-bytes': leaked } };
}

/** Zero the batmap (every block "look at the sector bitmap"): always true, whatever the bitmaps hold. */
async function clearBatmap(img: VhdImage): Promise<void> {
  const m = img.layout.batmap;
  if (!m) return;
  const zeros = new Uint8Array(m.size);
  await img.store.write(m.offset, zeros);
  const header = await readExact(img.store, m.headerOffset, new Uint8Array(512), 'VHD batmap header');
  await img.store.write(m.headerOffset, encodeBatmapHeader(m, batmapChecksum(zeros), header));
  await img.store.flush();
  m.checksumOk = true;
}

/** Rewrite both footer copies (end first; either one alone is a valid image). */
async function writeFooters(img: VhdImage): Promise<void> {
  const bytes = encodeFooter(img.layout.footer);
  await img.store.write(img.layout.footerOffset, bytes);
  if (img.layout.header) await img.store.write(0, bytes);
  await img.store.flush();
}

export async function resizeVhd(img: VhdImage, newSize: number, shrink: boolean): Promise<void> {
  const { layout, store } = img;
  const f = layout.footer;
  if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize % SECTOR) throw new BlockError('invalid-argument', `new size ${newSize} is not a whole number of 512-byte sectors`, { path: img.path });
  if (newSize > VHD_MAX_SIZE) throw new BlockError('out-of-range', `a VHD holds at most 2040 GiB (${VHD_MAX_SIZE} bytes)`, { path: img.path });
  if (f.diskType === 'differencing') throw new BlockError('unsupported', 'a differencing VHD has its parent\'s size and cannot be resized on its own', { path: img.path });
  if (newSize < f.currentSize && !shrink) throw new BlockError('invalid-argument', 'shrinking needs --shrink (data past the new end is lost)', { path: img.path });
  const old = f.currentSize;
  if (newSize === old) return;
  const setSize = () => {
    f.currentSize = newSize;
    Object.assign(f, chsForSectors(newSize / SECTOR));
  };

  if (f.diskType === 'fixed') {
    setSize();
    // The new footer goes first; a crash afterwards leaves a valid image whose new sectors may show the old footer.
    await store.write(newSize, encodeFooter(f));
    if (newSize > old) await store.write(old, new Uint8Array(FOOTER_SIZE));
    else await store.truncate(newSize + FOOTER_SIZE);
    layout.footerOffset = newSize;
    await store.flush();
    return;
  }

  const h = layout.header!;
  const bs = h.blockSize;
  const newBlocks = Math.ceil(newSize / bs);
  let bat = layout.bat!;
  if (newSize < old) {
    // Sectors past the new end must read as zeros if the disk grows again: clear the rest of the last block, drop the others.
    const lastKept = newBlocks - 1;
    if (newSize % bs && bat[lastKept] !== UNALLOCATED) {
      const from = newSize % bs;
      const span = Math.min(bs, old - lastKept * bs) - from;
      await store.write(bat[lastKept] * SECTOR + bitmapBytes(bs) + from, new Uint8Array(span));
    }
    let dropped = false;
    for (let i = newBlocks; i < bat.length; i++) if (bat[i] !== UNALLOCATED) dropped = true;
    if (dropped) {
      // The batmap may claim a dropped block full; a cleared batmap is true for any future content.
      await clearBatmap(img);
      const trimmed = new Uint32Array(bat.length).fill(UNALLOCATED);
      trimmed.set(bat.subarray(0, newBlocks));
      for (let s = Math.floor(newBlocks / ENTRIES_PER_SECTOR); s * ENTRIES_PER_SECTOR < bat.length; s++) await store.write(h.tableOffset + s * SECTOR, encodeBatSector(trimmed, s, h.maxTableEntries));
      await store.flush();
    }
    layout.bat = bat.slice(0, newBlocks);
    setSize();
    await writeFooters(img);
    return;
  }

  if (newBlocks > h.maxTableEntries) {
    // The table is too small: write a larger one at the end of the file, then switch the header to it.
    const newMax = newBlocks;
    const at = layout.footerOffset;
    const table = encodeBat(bat, newMax);
    await store.write(at, table);
    layout.footerOffset = at + table.length;
    await store.write(layout.footerOffset, encodeFooter(f));
    await store.flush();
    h.tableOffset = at;
    h.maxTableEntries = newMax;
    // A batmap lives right after the table it belongs to; the moved table has none (it is optional).
    layout.batmap = null;
    await store.write(layout.headerOffset, encodeDynamicHeader(h));
    await store.flush();
  }
  const grown = new Uint32Array(newBlocks).fill(UNALLOCATED);
  grown.set(bat.subarray(0, Math.min(bat.length, newBlocks)));
  bat = grown;
  layout.bat = bat;
  setSize();
  await writeFooters(img);
}

export async function setVhdBacking(img: VhdImage, parent: BackingTarget | null): Promise<void> {
  const { layout, store } = img;
  if (layout.footer.diskType !== 'differencing') throw new BlockError('unsupported', 'only a differencing VHD has a parent', { path: img.path });
  if (!parent) {
    throw new BlockError('unsupported', 'a differencing VHD cannot drop its parent in place (its clear bitmap bits mean "read the parent"); convert it instead', { path: img.path });
  }
  if (parent.size !== layout.footer.currentSize) {
    throw new BlockError('mismatch', `the new parent is ${parent.size} bytes but this disk is ${layout.footer.currentSize}`, { path: img.path });
  }
  const record = parentRecord(img.path, parent);
  // New locator data at the end of the file (nothing points there yet), footer after it; then one header write switches over.
  const at = layout.footerOffset;
  const l = layoutLocators(record, at);
  for (const [off, data] of l.writes) await store.write(off, data);
  layout.footerOffset = l.end;
  await store.write(layout.footerOffset, encodeFooter(layout.footer));
  await store.flush();
  const h = layout.header!;
  h.parentUniqueId = record.uuid;
  h.parentTimestamp = record.timestamp;
  h.parentUnicodeName = record.unicodeName;
  h.parentLocators = l.table;
  await store.write(layout.headerOffset, encodeDynamicHeader(h));
  await store.flush();
  layout.locators = await readLocators(store, h.parentLocators, await store.size());
}
