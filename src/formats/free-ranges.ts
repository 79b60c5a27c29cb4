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
