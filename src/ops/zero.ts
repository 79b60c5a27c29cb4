const ZEROS = Buffer.alloc(1 << 20);

/** True when every byte is zero; native memcmp in 1 MiB slices, no per-byte JS loop. */
export function isZero(b: Uint8Array): boolean {
  for (let off = 0; off < b.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, b.length - off);
    const slice = Buffer.from(b.buffer, b.byteOffset + off, n);
    if (!slice.equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}

const asBuffer = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.length));

/**
 * "Is [from, to) of the buffer all zero (or equal to the other buffer)?",
 * made once per buffer for granule loops.
 */
export interface SameChecker {
  (from: number, to: number): boolean;
  /**
   * Optional fast path for a walk through granules that differ: the first of
   * the granule starts `from`, `from + step`, ... (below `end`) whose granule
   * might be the same; every granule before it certainly is not.
   */
  skipDiffering?: (from: number, end: number, step: number) => number;
}

/**
 * A zero checker. Data granules nearly always show a non-zero byte in their
 * first 16 bytes, so those are looked at first, as words and with no native
 * call or allocation; only granules that pass go to a native compare. A
 * buffer of data is walked by `skipDiffering`, one tight loop over granule
 * heads (a 2 MiB buffer of 4 KiB granules is 512 loads), not a
 * call per granule.
 */
export function zeroChecker(b: Uint8Array): SameChecker {
  const buf = asBuffer(b);
  const words = b.byteOffset % 4 === 0 ? new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2) : null;
  const check: SameChecker = (from: number, to: number) => {
    if (words && (from & 3) === 0 && to - from >= 16) {
      const w = from >>> 2;
      if (words[w] | words[w + 1] | words[w + 2] | words[w + 3]) return false;
    }
    for (let off = from; off < to; off += ZEROS.length) {
      const n = Math.min(ZEROS.length, to - off);
      if (buf.compare(ZEROS, 0, n, off, off + n) !== 0) return false;
    }
    return true;
  };
  if (words) {
    check.skipDiffering = (from: number, end: number, step: number) => {
      if ((from & 3) !== 0 || (step & 3) !== 0 || step < 16) return from;
      // Only granules whose 16 head bytes lie inside the range. The loop is
      // kept to a load and a compare per granule: it runs before the JIT has
      // optimised it (a convert calls it a few hundred times), and in the
      // interpreter every bytecode counts — this shape costs a third less
      // than testing all four words each time.
      const last = Math.min(end, b.length) - 16;
      if (last < from) return from;
      const stepW = step >>> 2;
      const lastW = last >>> 2;
      let w = from >>> 2;
      for (; w <= lastW; w += stepW) {
        if (words[w] === 0 && (words[w + 1] | words[w + 2] | words[w + 3]) === 0) break;
      }
      const g = w << 2;
      return Math.min(g, end);
    };
  }
  return check;
}

/** A checker for "are [from, to) of `a` and `b` equal?" without per-call allocation. */
export function sameChecker(a: Uint8Array, b: Uint8Array): SameChecker {
  const ba = asBuffer(a);
  const bb = asBuffer(b);
  return (from: number, to: number) => ba.compare(bb, from, to, from, to) === 0;
}

/**
 * Runs of granules (aligned to absolute disk offsets) that are all-zero (or
 * equal) or not. A granule that is the same starts a gallop: spans of 2, 4,
 * 8... granules are tested in one call each, so a long zero run costs a few
 * native compares instead of one per granule; where a span fails, the walk
 * goes on granule by granule (and a later same granule gallops again). In
 * a run of differing granules, the checker's `skipDiffering` (if it has
 * one) passes over those that certainly differ in one call.
 */
export function* granuleRuns(
  buf: Uint8Array,
  diskOffset: number,
  granule: number,
  isSame: SameChecker,
): Generator<{ from: number; to: number; same: boolean }> {
  let runStart = 0;
  let runSame: boolean | undefined;
  let pos = 0;
  const skip = isSame.skipDiffering;
  while (pos < buf.length) {
    if (skip && runSame !== true && (diskOffset + pos) % granule === 0) {
      const to = skip(pos, buf.length, granule);
      if (to > pos) {
        runSame = false;
        pos = to;
        continue;
      }
    }
    let next = Math.min(buf.length, (Math.floor((diskOffset + pos) / granule) + 1) * granule - diskOffset);
    const same = isSame(pos, next);
    if (same) {
      for (let span = granule; next < buf.length; span *= 2) {
        const to = Math.min(buf.length, next + span);
        if (!isSame(next, to)) break;
        next = to;
      }
    }
    if (runSame === undefined) runSame = same;
    else if (same !== runSame) {
      yield { from: runStart, to: pos, same: runSame };
      runStart = pos;
      runSame = same;
    }
    pos = next;
  }
  if (runSame !== undefined) yield { from: runStart, to: buf.length, same: runSame };
}
