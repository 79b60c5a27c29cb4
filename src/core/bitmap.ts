/**
 * Bit manipulation for the allocation bitmaps of the formats: one bit per
 * item (a sector), item n in byte floor(n / 8). Formats differ only in
 * which bit of the byte holds the first of its eight items, so that is a
 * parameter:
 *
 *   'msb-first'  item n = bit 7 - n%8 (mask 0x80 >>> n%8)   VHD sector bitmaps
 *   'lsb-first'  item n = bit n%8     (mask 1 << n%8)       VHDX sector bitmaps, add-cow
 *
 *          byte 0                  byte 1
 *   msb:   [0 1 2 3 4 5 6 7]      [8 9 ...]      (leftmost = bit 7)
 *   lsb:   [7 6 5 4 3 2 1 0]      [... 9 8]
 *
 * Searches go a 32-bit word at a time (clz32 / count of trailing zeros), so
 * a run costs O(run / 32) plus a few bit tests at its ends: a read never
 * loops per sector. What the bits mean, the caches and where bitmaps live in
 * the file stay in the format folders.
 *
 * Item numbers may pass 2^31 (add-cow: up to 2^32 sectors), so positions are
 * split with arithmetic and `& 7` / `& 31` (which keep the low bits of any
 * safe integer), never with `>>>` or `& ~31` (which would cut them to 32 bits).
 */
export type BitOrder = 'msb-first' | 'lsb-first';

/** Mask of item n within its byte. */
function mask(order: BitOrder, n: number): number {
  return order === 'msb-first' ? 0x80 >>> (n & 7) : 1 << (n & 7);
}

export function getBit(order: BitOrder, bits: Uint8Array, n: number): boolean {
  return (bits[Math.floor(n / 8)] & mask(order, n)) !== 0;
}

/** First item in [from, to) whose bit equals `set`; `to` when there is none. */
export function findBit(order: BitOrder, bits: Uint8Array, from: number, to: number, set: boolean): number {
  // One specialised loop per order: the hot loops stay monomorphic in a
  // process that reads VHD and VHDX or add-cow bitmaps at once.
  return order === 'msb-first' ? findMsbFirst(bits, from, to, set) : findLsbFirst(bits, from, to, set);
}

/*
 * Both searches take the 32 items [wordStart, wordStart+32) as one word with
 * the first item at the end clz32 / count-trailing-zeros look at first, drop
 * the items before s, and look for a 1 (after flipping every bit when
 * searching for a clear one). Bytes past the end read as zero (a bitmap of
 * fewer than 32 items).
 */

function findMsbFirst(bits: Uint8Array, from: number, to: number, set: boolean): number {
  const flip = set ? 0 : -1;
  let s = from;
  while (s < to) {
    const wordStart = s - (s & 31);
    const i = wordStart / 8;
    const w = (((((bits[i] ?? 0) << 24) | ((bits[i + 1] ?? 0) << 16) | ((bits[i + 2] ?? 0) << 8) | (bits[i + 3] ?? 0)) ^ flip) << (s - wordStart)) >>> 0;
    if (w !== 0) {
      const hit = s + Math.clz32(w);
      return hit < to ? hit : to;
    }
    s = wordStart + 32;
    if (to - s >= LONG_SPAN) s = skipUniformWords(bits, s, to, set);
  }
  return to;
}

function findLsbFirst(bits: Uint8Array, from: number, to: number, set: boolean): number {
  const flip = set ? 0 : -1;
  let s = from;
  while (s < to) {
    const wordStart = s - (s & 31);
    const i = wordStart / 8;
    const w = ((((bits[i] ?? 0) | ((bits[i + 1] ?? 0) << 8) | ((bits[i + 2] ?? 0) << 16) | ((bits[i + 3] ?? 0) << 24)) ^ flip) >>> (s - wordStart)) | 0;
    if (w !== 0) {
      const hit = s + 31 - Math.clz32(w & -w);
      return hit < to ? hit : to;
    }
    s = wordStart + 32;
    if (to - s >= LONG_SPAN) s = skipUniformWords(bits, s, to, set);
  }
  return to;
}

/** Items left to search from which whole words are compared through a 32-bit view (worth its allocation). */
const LONG_SPAN = 4096;

/**
 * From `s` (a multiple of 32), skip the whole 32-item words lying before
 * `to` that hold no bit equal to `set`, four bytes per compare (the bit
 * order does not matter for a uniform word). Returns where the search goes
 * on: a word that holds one, or the last partial word.
 */
function skipUniformWords(bits: Uint8Array, s: number, to: number, set: boolean): number {
  const first = bits.byteOffset + s / 8;
  const words = Math.min(Math.floor((to - s) / 32), Math.floor((bits.length - s / 8) / 4));
  if (first % 4 !== 0 || words <= 0) return s;
  const view = new Uint32Array(bits.buffer, first, words);
  const none = set ? 0 : 0xffffffff;
  let k = 0;
  while (k < words && view[k] === none) k++;
  return s + k * 32;
}

/** Runs of equal bits covering [from, to): fn(start, end, set) for each, in order. */
export function forEachRun(order: BitOrder, bits: Uint8Array, from: number, to: number, fn: (start: number, end: number, set: boolean) => void): void {
  let s = from;
  while (s < to) {
    const set = getBit(order, bits, s);
    const e = findBit(order, bits, s, to, !set);
    fn(s, e, set);
    s = e;
  }
}

/** Set (value true) or clear the bits of items [from, to); returns whether any bit changed. */
export function setBits(order: BitOrder, bits: Uint8Array, from: number, to: number, value: boolean): boolean {
  if (findBit(order, bits, from, to, !value) === to) return false;
  let s = from;
  // Partial first byte, whole bytes, partial last byte.
  for (; s < to && (s & 7) !== 0; s++) assign(order, bits, s, value);
  const wholeEnd = to - (to & 7);
  if (s < wholeEnd) {
    bits.fill(value ? 0xff : 0, s / 8, wholeEnd / 8);
    s = wholeEnd;
  }
  for (; s < to; s++) assign(order, bits, s, value);
  return true;
}

function assign(order: BitOrder, bits: Uint8Array, n: number, value: boolean): void {
  const i = Math.floor(n / 8);
  if (value) bits[i] |= mask(order, n);
  else bits[i] &= ~mask(order, n);
}
