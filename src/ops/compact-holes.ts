import { BlockError } from '../core/errors.js';
import type { Chain } from '../chain/chain.js';
import type { HolePunchable, Image } from '../formats/types.js';
import { findFreeSpace } from '../guestfs/index.js';
import { isZero } from './zero.js';

/*
 * vdisk compact for a layer that gives space back by punching holes in a
 * data file that is the disk's raw twin (add-cow's image file; the layer's
 * metadata is never changed: formats/add-cow/compact.ts). The disk is
 * walked in chunks; in each, every 4 KiB granule of the data file that
 * holds host space is released when each of its sectors is one of
 *
 *   trim  a sector the layer does not answer for (add-cow: its bit is
 *         clear): the data file's bytes there are never read;
 *   fs    a sector the layer answers for, lying in space the guest's file
 *         systems do not use: afterwards it reads as zeros (free space may);
 *   zero  a sector the layer answers for whose bytes are all zeros: a hole
 *         reads the same zeros, so the disk's content does not change, in
 *         a base layer or over a backing file alike;
 *
 * or already a hole. A granule mixing kept and released sectors is kept.
 * The granule is the usual file-system block: a punch smaller than the
 * host's block only zeroes bytes (which the rules above allow) and frees
 * nothing. Sizes reported are the data file's allocated bytes.
 */

const GRANULE = 4096;
const CHUNK = 4 << 20;
const SECTOR = 512;

// Per-sector codes in a chunk, in the order that decides which mode a sector counts under (trim, fs, zero).
const KEEP = 0;
const HOLE = 1;
const ZERO = 2;
const FS = 3;
const TRIM = 4;
const MODE_OF: Record<number, CompactMode> = { [ZERO]: 'zero', [FS]: 'fs', [TRIM]: 'trim' };

type Punchable = Image & HolePunchable;

/** compact.ts's modes and the parts of its result this module fills (declared here: compact.ts imports this module). */
type CompactMode = 'zero' | 'trim' | 'fs';
interface CompactReport {
  released: Partial<Record<CompactMode, number>>;
  blockSize: number;
  bytesBefore: number;
  bytesAfter: number;
  notes: string[];
}

export function isPunchable(image: Image): image is Punchable {
  return typeof image.punchHoles === 'function' && typeof image.punchRefusal === 'function' && typeof image.hostAllocated === 'function';
}

export async function compactByPunching(
  chain: Chain,
  top: Punchable,
  modes: readonly CompactMode[],
  dryRun: boolean,
  result: CompactReport,
  onProgress?: (done: number, total: number) => void,
): Promise<void> {
  const refusal = top.punchRefusal();
  if (refusal) {
    if (!dryRun) throw new BlockError('unsupported', `cannot compact this ${top.format} image here: ${refusal}`, { path: top.path });
    result.notes.push(`a real run would be refused: ${refusal}`);
  }
  // Without SEEK_DATA/SEEK_HOLE every byte counts as held (the walk then reads it all): the sizes are the data file's length.
  const allocated = async (): Promise<number> => (await top.hostAllocated()) ?? (top.hostStore ? await top.hostStore.size() : top.size);
  const before = await allocated();
  result.blockSize = GRANULE;
  result.bytesBefore = before;
  let fsFree: { offset: number; length: number }[] = [];
  if (modes.includes('fs')) {
    const found = await findFreeSpace((offset, into) => chain.read(offset, into), chain.size);
    fsFree = found.free;
    for (const note of found.notes) result.notes.push(`fs: ${note}`);
  }
  const codes = new Uint8Array(CHUNK / SECTOR);
  const buf = new Uint8Array(CHUNK);
  let freed = 0;
  let fsAt = 0;
  const total = Math.ceil(top.size / CHUNK);
  for (let c = 0, n = 0; c < top.size; c += CHUNK) {
    onProgress?.(++n, total);
    const len = Math.min(CHUNK, top.size - c);
    codes.fill(KEEP);
    const mark = (offset: number, length: number, code: number): void => {
      codes.fill(code, (offset - c) / SECTOR, (offset + length - c) / SECTOR);
    };
    const host = (await top.hostAllocation?.(c, len)) ?? [{ offset: c, length: len, data: true }];
    const dataRanges: { offset: number; length: number }[] = [];
    for (const h of host) {
      if (!h.data) mark(h.offset, h.length, HOLE);
      else dataRanges.push(h);
    }
    if (dataRanges.length === 0) continue;
    // The layer's own extents: data (it answers for the sector) or not (add-cow: a clear bit).
    for (const e of await top.blockStatus(c, len)) {
      for (const h of dataRanges) {
        const from = Math.max(e.offset, h.offset);
        const to = Math.min(e.offset + e.length, h.offset + h.length);
        if (from >= to) continue;
        if (e.kind !== 'data') {
          if (modes.includes('trim')) mark(from, to - from, TRIM);
          continue;
        }
        if (modes.includes('zero')) await markZeros(top, from, to, buf, mark);
        if (fsFree.length) fsAt = markFree(fsFree, fsAt, from, to, mark);
      }
    }
    const ranges = releasable(codes, c, len, result);
    if (ranges.length === 0) continue;
    for (const r of ranges) freed += r.freed;
    if (!dryRun) await top.punchHoles(ranges);
  }
  if (!dryRun) {
    await top.flush();
    result.bytesAfter = await allocated();
  } else {
    result.bytesAfter = Math.max(0, result.bytesBefore - freed);
  }
}

/** Mark the all-zero granule-sized pieces of layer data [from, to) as ZERO (read from the data file itself). */
async function markZeros(top: Punchable, from: number, to: number, buf: Uint8Array, mark: (o: number, l: number, code: number) => void): Promise<void> {
  const part = buf.subarray(0, to - from);
  if (top.readHost) await top.readHost(from, part);
  else await top.read(from, part);
  if (isZero(part)) return mark(from, to - from, ZERO);
  for (let at = from; at < to; ) {
    const next = Math.min(to, (Math.floor(at / GRANULE) + 1) * GRANULE);
    if (isZero(part.subarray(at - from, next - from))) mark(at, next - at, ZERO);
    at = next;
  }
}

/** Mark the parts of [from, to) inside the guest's free space as FS; `at` is where the search of `free` (sorted) resumes. */
function markFree(free: readonly { offset: number; length: number }[], at: number, from: number, to: number, mark: (o: number, l: number, code: number) => void): number {
  while (at < free.length && free[at].offset + free[at].length <= from) at++;
  for (let k = at; k < free.length && free[k].offset < to; k++) {
    const a = Math.max(from, Math.ceil(free[k].offset / SECTOR) * SECTOR);
    const b = Math.min(to, Math.floor((free[k].offset + free[k].length) / SECTOR) * SECTOR);
    if (a < b) mark(a, b - a, FS);
  }
  return at;
}

/** Granules of the chunk whose every sector is released or a hole (and at least one released), merged into ranges; counts per mode. */
function releasable(codes: Uint8Array, c: number, len: number, result: CompactReport): { offset: number; length: number; freed: number }[] {
  const out: { offset: number; length: number; freed: number }[] = [];
  const perGranule = GRANULE / SECTOR;
  // Only whole granules inside the disk (a disk ends on a sector, not always on a granule).
  const granules = Math.floor(len / GRANULE);
  for (let g = 0; g < granules; g++) {
    let lowest = TRIM;
    let best = KEEP;
    let released = 0;
    for (let s = g * perGranule; s < (g + 1) * perGranule; s++) {
      const v = codes[s];
      if (v < lowest) lowest = v;
      if (v > best) best = v;
      if (v > HOLE) released++;
    }
    if (lowest === KEEP || best <= HOLE) continue;
    result.released[MODE_OF[best]] = (result.released[MODE_OF[best]] ?? 0) + 1;
    const offset = c + g * GRANULE;
    const last = out[out.length - 1];
    if (last && last.offset + last.length === offset) {
      last.length += GRANULE;
      last.freed += released * SECTOR;
    } else out.push({ offset, length: GRANULE, freed: released * SECTOR });
  }
  return out;
}
