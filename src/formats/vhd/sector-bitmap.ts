import { type BitOrder, findBit as coreFindBit, forEachRun as coreForEachRun, setBits as coreSetBits } from '../../core/bitmap.js';
import { alignUp } from '../../core/u64.js';

/**
 * The sector bitmap at the start of every allocated block (VHD spec 2006,
 * "Block Allocation Table and Data Blocks"): one bit per 512-byte sector of
 * the block, most significant bit first (sector n = bit 7 - n%8 of byte n/8),
 * padded to whole sectors. Differencing disks: set = the sector is in this
 * file, clear = read the parent. Dynamic disks: set = the sector was written.
 *
 * The bit manipulation is core/bitmap.ts's, in the spec's bit order; runs
 * are found a 32-bit word at a time so a read never loops per sector.
 */
const ORDER: BitOrder = 'msb-first';

export function bitmapBytes(blockSize: number): number {
  return alignUp(blockSize / 512 / 8, 512);
}

/** First sector in [from, to) whose bit equals `set`; `to` when none. */
export function findBit(bitmap: Uint8Array, from: number, to: number, set: boolean): number {
  return coreFindBit(ORDER, bitmap, from, to, set);
}

/** Runs of equal bits covering [from, to): calls fn(start, end, set) for each. */
export function forEachRun(bitmap: Uint8Array, from: number, to: number, fn: (start: number, end: number, set: boolean) => void): void {
  coreForEachRun(ORDER, bitmap, from, to, fn);
}

/** Set the bits of sectors [from, to); returns whether anything changed. */
export function setBits(bitmap: Uint8Array, from: number, to: number): boolean {
  return coreSetBits(ORDER, bitmap, from, to, true);
}

/** Clear the bits of sectors [from, to) (discard: the parent shows through again); returns whether anything changed. */
export function clearBits(bitmap: Uint8Array, from: number, to: number): boolean {
  return coreSetBits(ORDER, bitmap, from, to, false);
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

  clear(): void {
    this.map.clear();
  }
}
