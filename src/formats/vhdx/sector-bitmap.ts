import { type BitOrder, findBit, getBit, setBits as coreSetBits } from '../../core/bitmap.js';
import type { Store } from '../../io/store.js';
import { readExact } from '../../io/store.js';
import { LOG_SECTOR } from './layout.js';

/**
 * Sector bitmap blocks (VHDX spec 2.5.1, 2.5.2.2): 1 MiB each, one bit per
 * logical sector of the chunk they cover, least significant bit first. In a
 * differencing disk a set bit means "this block holds the sector", a clear
 * bit "ask the parent". The bitmap of payload block b of its chunk starts at
 * byte (b mod chunkRatio) * sectorsPerBlock / 8. The bit manipulation is
 * core/bitmap.ts's, in this bit order.
 *
 * Bitmaps are cached per 4 KiB sector (the unit the log updates), a bounded
 * LRU so a huge differencing disk does not pin all its bitmaps in memory.
 */
export class SectorBitmapCache {
  private readonly cache = new Map<number, Uint8Array>();

  constructor(
    private readonly store: Store,
    private readonly capacity = 4096,
  ) {}

  /** The 4 KiB bitmap sector at file offset `sectorOffset` (aligned), from the cache or the file. */
  async sector(sectorOffset: number): Promise<Uint8Array> {
    const hit = this.touch(sectorOffset);
    if (hit) return hit;
    const data = await readExact(this.store, sectorOffset, new Uint8Array(LOG_SECTOR), 'sector bitmap');
    this.put(sectorOffset, data);
    return data;
  }

  /** Record a sector's new content (after the log made it durable and it was applied). */
  put(sectorOffset: number, data: Uint8Array): void {
    this.cache.delete(sectorOffset);
    this.cache.set(sectorOffset, data);
    if (this.cache.size > this.capacity) this.cache.delete(this.cache.keys().next().value as number);
  }

  /**
   * Bytes [fileOffset, fileOffset+length) of bitmap content if every sector
   * they lie in is cached; otherwise the file offset of the first sector
   * that is not (load it with sector() and ask again).
   */
  cachedBytes(fileOffset: number, length: number): Uint8Array | number {
    const first = Math.floor(fileOffset / LOG_SECTOR) * LOG_SECTOR;
    if (fileOffset + length <= first + LOG_SECTOR) {
      const s = this.touch(first);
      return s ? s.subarray(fileOffset - first, fileOffset - first + length) : first;
    }
    for (let s = first; s < fileOffset + length; s += LOG_SECTOR) if (!this.cache.has(s)) return s;
    const out = new Uint8Array(length);
    for (let s = first; s < fileOffset + length; s += LOG_SECTOR) {
      const data = this.touch(s)!;
      const a = Math.max(fileOffset, s);
      const b = Math.min(fileOffset + length, s + LOG_SECTOR);
      out.set(data.subarray(a - s, b - s), a - fileOffset);
    }
    return out;
  }

  /** A cached sector, marked most recently used. */
  private touch(sectorOffset: number): Uint8Array | undefined {
    const hit = this.cache.get(sectorOffset);
    if (hit) {
      this.cache.delete(sectorOffset);
      this.cache.set(sectorOffset, hit);
    }
    return hit;
  }

  clear(): void {
    this.cache.clear();
  }
}

/** Sector n is bit n%8 of byte n/8: least significant bit first (see SectorBitmapCache). */
const ORDER: BitOrder = 'lsb-first';

/**
 * Runs of equal bits in [start, start+count) of a sector bitmap: calls
 * `emit(firstBit, length, set)` per run (core/bitmap.ts, a word at a time:
 * the cost is per run, not per sector).
 */
export function bitRuns(bits: Uint8Array, start: number, count: number, emit: (first: number, length: number, set: boolean) => void): void {
  // core's forEachRun, unrolled here so that passing lengths costs no closure per call.
  const end = start + count;
  for (let s = start; s < end; ) {
    const set = getBit(ORDER, bits, s);
    const e = findBit(ORDER, bits, s, end, !set);
    emit(s, e - s, set);
    s = e;
  }
}

/** Set (or clear) bits [start, start+count) of a sector bitmap. */
export function setBits(bits: Uint8Array, start: number, count: number, value: boolean): void {
  coreSetBits(ORDER, bits, start, start + count, value);
}
