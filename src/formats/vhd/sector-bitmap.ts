import { alignUp } from '../../core/u64.js';

/**
 * The sector bitmap at the start of every allocated block (VHD spec 2006,
 * "Block Allocation Table and Data Blocks"): one bit per 512-byte sector of
 * the block, most significant bit first (sector n = bit 7 - n%8 of byte n/8),
 * padded to whole sectors. Differencing disks: set = the sector is in this
 * file, clear = read the parent. Dynamic disks: set = the sector was written.
 *
 * Runs are found a 32-bit word at a time so a read never loops per sector.
 */
export function bitmapBytes(blockSize: number): number {
  return alignUp(blockSize / 512 / 8, 512);
}

function word(b: Uint8Array, i: number): number {
  // Bytes past the end read as zero (a block of fewer than 32 sectors).
  return ((b[i] ?? 0) << 24 | (b[i + 1] ?? 0) << 16 | (b[i + 2] ?? 0) << 8 | (b[i + 3] ?? 0)) >>> 0;
}

/** First sector in [from, to) whose bit equals `set`; `to` when none. */
export function findBit(bitmap: Uint8Array, from: number, to: number, set: boolean): number {
  let s = from;
  while (s < to) {
    const wordStart = s & ~31;
    let w = word(bitmap, wordStart >>> 3);
    if (!set) w = ~w >>> 0;
    w = (w << (s - wordStart)) >>> 0; // drop bits before s (MSB = first sector of the word)
    if (w !== 0) {
      const hit = s + Math.clz32(w);
      return hit < to ? hit : to;
    }
    s = wordStart + 32;
  }
  return to;
}

/** Runs of equal bits covering [from, to): calls fn(start, end, set) for each. */
export function forEachRun(bitmap: Uint8Array, from: number, to: number, fn: (start: number, end: number, set: boolean) => void): void {
  let s = from;
  while (s < to) {
    const set = (bitmap[s >>> 3] & (0x80 >>> (s & 7))) !== 0;
    const e = findBit(bitmap, s, to, !set);
    fn(s, e, set);
    s = e;
  }
}

/** Set the bits of sectors [from, to); returns whether anything changed. */
export function setBits(bitmap: Uint8Array, from: number, to: number): boolean {
  return assignBits(bitmap, from, to, true);
}

/** Clear the bits of sectors [from, to) (discard: the parent shows through again); returns whether anything changed. */
export function clearBits(bitmap: Uint8Array, from: number, to: number): boolean {
  return assignBits(bitmap, from, to, false);
}

function assignBits(bitmap: Uint8Array, from: number, to: number, value: boolean): boolean {
  if (findBit(bitmap, from, to, !value) === to) return false;
  const put = (sector: number) => {
    if (value) bitmap[sector >>> 3] |= 0x80 >>> (sector & 7);
    else bitmap[sector >>> 3] &= ~(0x80 >>> (sector & 7));
  };
  let s = from;
  // Partial first byte, whole bytes, partial last byte.
  while (s < to && (s & 7) !== 0) put(s++);
  const wholeEnd = to & ~7;
  if (s < wholeEnd) {
    bitmap.fill(value ? 0xff : 0, s >>> 3, wholeEnd >>> 3);
    s = wholeEnd;
  }
  while (s < to) put(s++);
  return true;
}

/**
 * A small cache of sector bitmaps by block index. Dirty bitmaps (changed in
 * memory, not yet written: see the write order in image.ts) are pinned until
 * the next flush writes them; clean ones are evicted least recently used first.
 */
export class BitmapCache {
  private readonly map = new Map<number, { bits: Uint8Array; dirty: boolean; used: number }>();
  /** Use counter: a hit only stamps its entry (a lookup per layer per read must stay cheap); eviction looks for the oldest stamp. */
  private clock = 0;
  constructor(private readonly capacity = 64) {}

  get(block: number): Uint8Array | undefined {
    const e = this.map.get(block);
    if (!e) return undefined;
    e.used = ++this.clock;
    return e.bits;
  }

  put(block: number, bits: Uint8Array, dirty = false): void {
    const old = this.map.get(block);
    this.map.set(block, { bits, dirty: dirty || (old?.dirty ?? false), used: ++this.clock });
    while (this.map.size > this.capacity) {
      let victim: number | undefined;
      let oldest = Infinity;
      for (const [k, v] of this.map) {
        if (!v.dirty && v.used < oldest) {
          oldest = v.used;
          victim = k;
        }
      }
      if (victim === undefined) return; // all dirty: pinned until the next flush
      this.map.delete(victim);
    }
  }

  markDirty(block: number): void {
    const e = this.map.get(block);
    if (e) e.dirty = true;
  }

  dirtyCount(): number {
    let n = 0;
    for (const v of this.map.values()) if (v.dirty) n++;
    return n;
  }

  /** Dirty entries, in block order. */
  dirty(): Array<[number, Uint8Array]> {
    return [...this.map].filter(([, v]) => v.dirty).map(([k, v]) => [k, v.bits] as [number, Uint8Array]).sort((a, b) => a[0] - b[0]);
  }

  markClean(block: number): void {
    const e = this.map.get(block);
    if (e) e.dirty = false;
  }

  drop(block: number): void {
    this.map.delete(block);
  }

  clear(): void {
    this.map.clear();
  }
}
