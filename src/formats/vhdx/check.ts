import { BlockError } from '../../core/errors.js';
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
  const tailLeak = fileSize > covered ? { offset: covered, length: alignUp(fileSize, MiB) - covered, what: 'unused' } : null;
  let repairedTail = false;
  if (tailLeak && options.repair && !s.readOnly) {
    // Space past the last structure can simply be cut off.
    await s.store.truncate(covered);
    await s.store.flush();
    s.fileSize = covered;
    s.fileEnd = alignUp(covered, MiB);
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
      message: small ? `${fileSize - covered} bytes past the last structure (trailing padding)` : `${l.length} bytes at ${l.offset} belong to no structure`,
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
