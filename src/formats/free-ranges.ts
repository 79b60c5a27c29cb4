import { fromSystemError } from '../core/errors.js';
import { copyWorkers, NATIVE_MAX_RANGE, nativeAddon } from '../io/native.js';
import { nativeStore, readOrZero, type Store } from '../io/store.js';

/**
 * File space that no structure of an image uses: the holes a released block
 * leaves inside a VHD or VHDX file. One module shared by the two formats for
 * the two things done with such holes — new blocks are placed in them before
 * the file grows (reuse), and compact moves the blocks at the end of the
 * file into them before cutting the end off.
 */

export interface FileRange {
  offset: number;
  length: number;
}

/**
 * The parts of [start, end) that none of `used` covers, in order, each at
 * least `minLength` bytes (smaller gaps are alignment padding, not room for a
 * block). `used` may overlap and come in any order.
 */
export function unusedRanges(used: readonly FileRange[], start: number, end: number, minLength = 1): FileRange[] {
  const sorted = [...used].sort((a, b) => a.offset - b.offset);
  const out: FileRange[] = [];
  let at = start;
  for (const u of sorted) {
    if (u.offset > at && Math.min(u.offset, end) - at >= minLength) out.push({ offset: at, length: Math.min(u.offset, end) - at });
    at = Math.max(at, u.offset + u.length);
    if (at >= end) break;
  }
  if (end - at >= minLength) out.push({ offset: at, length: end - at });
  return out;
}

/**
 * A list of free ranges, lowest first. `take` gives the lowest place where
 * `length` bytes (at an `align` multiple) fit, below `limit`, and removes it
 * from the list.
 */
export class FreeRanges {
  private readonly list: FileRange[];

  constructor(ranges: readonly FileRange[]) {
    this.list = ranges.filter((r) => r.length > 0).map((r) => ({ ...r })).sort((a, b) => a.offset - b.offset);
  }

  /** Free bytes in the list. */
  get bytes(): number {
    let n = 0;
    for (const r of this.list) n += r.length;
    return n;
  }

  get ranges(): readonly FileRange[] {
    return this.list;
  }

  take(length: number, align = 1, limit = Infinity): number | undefined {
    for (let k = 0; k < this.list.length; k++) {
      const r = this.list[k];
      const at = Math.ceil(r.offset / align) * align;
      if (at + length > limit) return undefined;
      if (at + length > r.offset + r.length) continue;
      // Split the range around what is taken (the part before `at` is alignment slack, kept).
      const before = { offset: r.offset, length: at - r.offset };
      const after = { offset: at + length, length: r.offset + r.length - (at + length) };
      this.list.splice(k, 1, ...[before, after].filter((x) => x.length > 0));
      return at;
    }
    return undefined;
  }

  /** Give a range back (after a block is released), merged with its neighbours. */
  give(offset: number, length: number): void {
    if (length <= 0) return;
    let k = 0;
    while (k < this.list.length && this.list[k].offset < offset) k++;
    this.list.splice(k, 0, { offset, length });
    // Merge with the next, then with the previous.
    const cur = this.list[k];
    const next = this.list[k + 1];
    if (next && cur.offset + cur.length >= next.offset) {
      cur.length = Math.max(cur.offset + cur.length, next.offset + next.length) - cur.offset;
      this.list.splice(k + 1, 1);
    }
    const prev = this.list[k - 1];
    if (prev && prev.offset + prev.length >= cur.offset) {
      prev.length = Math.max(prev.offset + prev.length, cur.offset + cur.length) - prev.offset;
      this.list.splice(k, 1);
    }
  }

  /** Forget every range at or past `end` (the file was cut there). */
  cut(end: number): void {
    for (let k = this.list.length - 1; k >= 0; k--) {
      const r = this.list[k];
      if (r.offset >= end) this.list.splice(k, 1);
      else if (r.offset + r.length > end) r.length = end - r.offset;
    }
  }
}

/** A structure compact may move: `id` is the format's (a BAT index). */
export interface MovableUnit extends FileRange {
  id: number;
}

/**
 * Where the units at the end of the file go: the highest unit first, into
 * the lowest free place below it that fits (`align`: the format's placement
 * unit). A place freed by a move is above every unit still to move, so it is
 * never a target — nothing is written where something durable still points.
 */
export function planMoves(units: readonly MovableUnit[], free: FreeRanges, align: number): { unit: MovableUnit; to: number }[] {
  const moves: { unit: MovableUnit; to: number }[] = [];
  for (const u of [...units].sort((a, b) => b.offset - a.offset)) {
    const to = free.take(u.length, align, u.offset);
    if (to === undefined) continue;
    moves.push({ unit: u, to });
  }
  return moves;
}

/** JavaScript copy buffer (the native copier has its own, one per thread). */
const COPY_CHUNK = 4 << 20;

/**
 * Copy each moved unit's bytes to its new place in the same file (compact
 * step 2; the caller then makes them durable and switches the pointers).
 * With the native addon and a local file: one call for the whole batch,
 * file to file on libuv's threads (native/copy.c copyToBlocks, every byte
 * written: the place may hold a released block's old bytes), so no byte
 * crosses into JavaScript and the reads and writes of several units
 * overlap. Otherwise a JavaScript loop through one buffer. Sources and
 * places never overlap (planMoves: a place is a hole that was free before
 * any move), so the order of the copies does not matter.
 */
export async function copyMoves(store: Store, moves: readonly { unit: MovableUnit; to: number }[]): Promise<void> {
  if (moves.length === 0) return;
  const addon = nativeAddon();
  const target = nativeStore(store);
  if (addon && target) {
    const fd = target.nativeFd();
    const plan: number[] = [];
    const units: number[] = [];
    moves.forEach(({ unit, to }, k) => {
      units.push(to, 1); // a known place, every byte written
      for (let at = 0; at < unit.length; at += NATIVE_MAX_RANGE) {
        const n = Math.min(NATIVE_MAX_RANGE, unit.length - at);
        plan.push(fd, unit.offset + at, at, k, at, n);
      }
    });
    try {
      await addon.copyToBlocks(fd, new Float64Array(plan), new Float64Array(units), 0, 1, 4096, copyWorkers(), new Float64Array(moves.length));
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { offset?: number };
      throw fromSystemError(e, { path: store.path, offset: err.offset, operation: err.syscall === 'read' ? 'read' : 'write' });
    }
    return;
  }
  const buf = new Uint8Array(Math.min(COPY_CHUNK, Math.max(...moves.map((m) => m.unit.length))));
  for (const { unit, to } of moves) {
    for (let at = 0; at < unit.length; at += buf.length) {
      const part = buf.subarray(0, Math.min(buf.length, unit.length - at));
      await readOrZero(store, unit.offset + at, part);
      await store.write(to + at, part);
    }
  }
}
