/**
 * Arithmetic shared by the formats' `measure` functions (Format.measure):
 * how many fixed-size blocks a set of allocated ranges touches.
 */

/** Blocks of `blockSize` bytes that the ranges touch (part of a block allocates all of it). Ranges are in order. */
export function blocksTouched(allocated: readonly { offset: number; length: number }[], blockSize: number): number {
  let count = 0;
  let lastBlock = -1;
  for (const r of allocated) {
    if (r.length <= 0) continue;
    const first = Math.max(Math.floor(r.offset / blockSize), lastBlock + 1);
    const last = Math.floor((r.offset + r.length - 1) / blockSize);
    if (last >= first) count += last - first + 1;
    lastBlock = Math.max(lastBlock, last);
  }
  return count;
}
