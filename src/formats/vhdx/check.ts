import { BlockError } from '../../core/errors.js';
import { randomGuid } from '../../core/guid.js';
import { alignUp } from '../../core/u64.js';
import type { CheckProblem, CheckResult } from '../types.js';
import { PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT, SB_PRESENT } from './bat.js';
import { HEADER_SECTION_SIZE, MiB, SECTOR_BITMAP_BLOCK_SIZE } from './layout.js';
import type { VhdxState } from './state.js';

interface Span {
  offset: number;
  /** Bytes the structure needs (overlaps are judged on these). */
  length: number;
  /** Bytes it may own: a block always owns a whole block of file space, even past the disk's end. */
  extent?: number;
  what: string;
}

/** What leaves unused space at the end of a VHDX file. */
const TAIL_CAUSE = 'an interrupted allocation or compaction leaves this';

/**
 * Where the last structure ends (header section, log, regions, blocks and
 * sector bitmap blocks; a block owns a whole block of file space, as far as
 * the file reaches), and the bytes past it when they could hold a block:
 * what a crash leaves after an allocation extended the file but its BAT
 * entry never reached the log, or after compaction moved blocks down but did
 * not yet cut the file. Less is padding (Disk2VHD leaves 512 bytes).
 * One pass over the BAT, no list: this runs at every writable open.
 */
function unusedTailVhdx(s: VhdxState, fileSize: number): { usedEnd: number; bytes: number } {
  let end = HEADER_SECTION_SIZE;
  if (s.log.length) end = Math.max(end, s.log.offset + s.log.length);
  for (const r of s.regions.all) end = Math.max(end, r.offset + r.length);
  const bat = s.bat;
  const g = bat.geometry;
  for (let block = 0; block < g.dataBlocks; block++) {
    const i = bat.payloadIndex(block);
    const st = bat.state(i);
    if (st !== PAYLOAD_FULLY_PRESENT && st !== PAYLOAD_PARTIALLY_PRESENT) continue;
    const at = bat.offset(i);
    const needs = at + alignUp(Math.min(g.blockSize, g.virtualSize - block * g.blockSize), MiB);
    end = Math.max(end, Math.min(at + g.blockSize, Math.max(fileSize, needs)));
  }
  if (g.hasParent) {
    for (let chunk = 0; chunk < g.bitmapBlocks; chunk++) {
      const i = bat.bitmapIndex(chunk);
      if (i < g.entryCount && bat.state(i) === SB_PRESENT) end = Math.max(end, bat.offset(i) + SECTOR_BITMAP_BLOCK_SIZE);
    }
  }
  // VHDX structures are 1 MiB aligned (2.1): the file is cut on such a boundary.
  const usedEnd = alignUp(end, MiB);
  return { usedEnd, bytes: fileSize - end >= g.blockSize ? fileSize - usedEnd : 0 };
}

/**
 * Give the unused tail back: cut the file after its last structure (what
 * compaction's last step does). Only on a writable open with an empty log
 * (open replays and empties it first), so no replay ever needs the space
 * cut. FileWriteGuid changes first (2.2.2: before the first change to the
 * file after it is opened), unless this open already changed it. Returns
 * the bytes given back.
 */
export async function giveBackTailVhdx(s: VhdxState, fileGuidChanged = false): Promise<number> {
  const fileSize = await s.store.size();
  const { usedEnd, bytes } = unusedTailVhdx(s, fileSize);
  if (bytes <= 0) return 0;
  if (!fileGuidChanged) await s.headers.update({ fileWriteGuid: randomGuid() });
  await s.store.truncate(usedEnd);
  await s.store.flush();
  s.fileSize = usedEnd;
  s.fileEnd = usedEnd;
  return bytes;
}

/**
 * Consistency check (VHDX spec 2.1-2.6 taken together). Open has already
 * refused what cannot be read at all (bad checksums on both copies, ranges
 * outside the file, unknown required structures); this adds what open need
 * not look at: damaged secondary copies, blocks overlapping each other or the
 * log / regions, and file space nothing refers to (leaks). A log replayed at
 * open is reported, since the file was not cleanly closed.
 */
export async function checkVhdx(s: VhdxState, options: { repair?: 'leaks' | 'all' }): Promise<CheckResult> {
  const problems: CheckProblem[] = [];
  for (const p of s.problems) problems.push({ severity: 'warning', message: p });
  if (s.replay) {
    problems.push({
      severity: 'info',
      message: `the log held ${s.replay.entries} unapplied entr${s.replay.entries === 1 ? 'y' : 'ies'}; replayed ${s.replay.onto === 'file' ? 'onto the file' : 'in memory only (the file is unchanged)'}`,
    });
  }

  const spans: Span[] = [{ offset: 0, length: HEADER_SECTION_SIZE, what: 'header section' }];
  if (s.log.length) spans.push({ offset: s.log.offset, length: s.log.length, what: 'log' });
  for (const r of s.regions.all) spans.push({ offset: r.offset, length: r.length, what: `region ${r.guid}` });
  const bat = s.bat;
  const g = bat.geometry;
  let allocated = 0;
  let bitmaps = 0;
  for (let block = 0; block < g.dataBlocks; block++) {
    const i = bat.payloadIndex(block);
    const st = bat.state(i);
    if (st === PAYLOAD_FULLY_PRESENT || st === PAYLOAD_PARTIALLY_PRESENT) {
      allocated++;
      spans.push({ offset: bat.offset(i), length: alignUp(Math.min(g.blockSize, g.virtualSize - block * g.blockSize), MiB), extent: g.blockSize, what: `block ${block}` });
    }
  }
  if (g.hasParent) {
    for (let chunk = 0; chunk < g.bitmapBlocks; chunk++) {
      const i = bat.bitmapIndex(chunk);
      if (i < g.entryCount && bat.state(i) === SB_PRESENT) {
        bitmaps++;
        spans.push({ offset: bat.offset(i), length: SECTOR_BITMAP_BLOCK_SIZE, what: `sector bitmap ${chunk}` });
      }
    }
  }
  spans.sort((a, b) => a.offset - b.offset);
  const fileSize = await s.store.size();
  let covered = 0;
  let prev: Span | null = null;
  const leaks: Span[] = [];
  for (const sp of spans) {
    if (prev && sp.offset < prev.offset + prev.length) {
      problems.push({ severity: 'corruption', message: `${sp.what} (offset ${sp.offset}) overlaps ${prev.what}`, offset: sp.offset });
    }
    // A gap smaller than a block cannot be a lost block: writers pad structures
    // to alignments of their own (Windows to 1 MiB, QEMU puts the first block
    // on a block-size boundary), and that padding is not a leak.
    if (sp.offset - covered >= g.blockSize) leaks.push({ offset: covered, length: sp.offset - covered, what: 'unused' });
    covered = Math.max(covered, Math.min(sp.offset + (sp.extent ?? sp.length), Math.max(fileSize, sp.offset + sp.length)));
    if (!prev || sp.offset + sp.length > prev.offset + prev.length) prev = sp;
  }
  // Space past the last structure. A writable open gives it back before anything else (giveBackTailVhdx,
  // called by open.ts); a read-only check still finds it.
  if (s.tailGivenBack > 0) {
    problems.push({ severity: 'leak', message: `${s.tailGivenBack} bytes past the last structure were used by nothing (${TAIL_CAUSE}): given back when the image was opened writable`, repaired: true });
    s.tailGivenBack = 0; // reported once
  }
  const tailLeak = fileSize > covered ? { offset: covered, length: alignUp(fileSize, MiB) - covered, what: 'unused' } : null;
  let repairedTail = false;
  if (tailLeak && options.repair && !s.readOnly && fileSize - covered >= g.blockSize) {
    await giveBackTailVhdx(s);
    repairedTail = true;
  }
  // Holes inside the file are free space, not leaks: a released block
  // (discard, compact's zero mode, a crash before a BAT entry) leaves one,
  // a writable open reuses it for new blocks (free-ranges.ts), and compact
  // gives it back. Only space past the last structure is lost.
  const free = leaks.reduce((n, l) => n + l.length, 0);
  if (free > 0) {
    problems.push({ severity: 'info', message: `${free} bytes in ${leaks.length} hole(s) inside the file are free: new blocks reuse them, and vdisk compact gives them back`, offset: leaks[0].offset });
  }
  for (const l of tailLeak ? [tailLeak] : []) {
    // Less than a block past the last structure is trailing padding (Disk2VHD
    // leaves 512 bytes there), worth a note but not a lost block.
    const small = l === tailLeak && fileSize - covered < g.blockSize;
    problems.push({
      severity: small ? 'info' : 'leak',
      message: small
        ? `${fileSize - covered} bytes past the last structure (trailing padding)`
        : `${l.length} bytes at ${l.offset} belong to no structure (${TAIL_CAUSE}): a writable open or check -r leaks gives them back`,
      offset: l.offset,
      repaired: l === tailLeak ? repairedTail : false,
    });
  }
  if (!Number.isSafeInteger(covered)) throw new BlockError('corrupt', 'structure ranges overflow', { path: s.path });
  return {
    problems,
    details: {
      'total-blocks': g.dataBlocks,
      'allocated-blocks': allocated,
      'sector-bitmap-blocks': bitmaps,
      'image-end-offset': covered,
      'free-bytes': free,
      'log-replayed': s.replay !== null,
    },
  };
}
