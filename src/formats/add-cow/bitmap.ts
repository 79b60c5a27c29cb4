import { type BitOrder, findBit, getBit, setBits } from '../../core/bitmap.js';

/**
 * The COW bitmap (docs/formats/add-cow.md, "Bitmap"): bit n set = sector n
 * lives in the image file; clear = read the backing file. Bit n is bit
 * (n mod 8), least significant first, of byte floor(n / 8). The bit
 * manipulation is core/bitmap.ts's, in this bit order.
 *
 * The whole bitmap is held in memory (1 byte per 4 KiB of disk). Changes are
 * tracked per 512-byte piece of bitmap so that flush writes only what changed,
 * as few contiguous writes as possible.
 */
const DIRTY_CHUNK = 512;

const ORDER: BitOrder = 'lsb-first';

/** A piece of bitmap to write back: `data` is a snapshot taken when the piece was collected. */
interface BitmapPiece {
  /** Byte offset within the bitmap. */
  offset: number;
  data: Uint8Array;
}

export class Bitmap {
  private bytes: Uint8Array;
  /** The same memory in 32-bit words, to skip long uniform runs quickly. */
  private words: Uint32Array;
  private readonly dirty = new Set<number>();

  /** `initial` holds at least bitmapBytes(sectors*512) bytes; bits past `sectors` are ignored (and cleared). */
  constructor(
    public sectors: number,
    initial?: Uint8Array,
  ) {
    this.bytes = new Uint8Array(0);
    this.words = new Uint32Array(0);
    this.allocate(sectors, initial);
  }

  /** Bytes the bitmap takes on disk. */
  get byteLength(): number {
    return Math.ceil(this.sectors / 8);
  }

  private allocate(sectors: number, from?: Uint8Array): void {
    const len = Math.ceil(sectors / 8);
    const buf = new ArrayBuffer(Math.ceil(len / 8) * 8 || 8);
    const bytes = new Uint8Array(buf);
    if (from) bytes.set(from.subarray(0, Math.min(len, from.length)));
    this.bytes = bytes;
    this.words = new Uint32Array(buf);
    this.sectors = sectors;
    this.clearTail();
  }

  /** Clear the bits past the last sector in the last byte; true when some were set. */
  private clearTail(): boolean {
    const used = this.sectors % 8;
    if (used === 0) return false;
    const i = this.byteLength - 1;
    const keep = (1 << used) - 1;
    const stray = (this.bytes[i] & ~keep) !== 0;
    this.bytes[i] &= keep;
    return stray;
  }

  /** Would the on-disk bytes have bits set past the last sector? (check) */
  static hasStrayTail(onDisk: Uint8Array, sectors: number): boolean {
    const used = sectors % 8;
    if (used === 0 || onDisk.length < Math.ceil(sectors / 8)) return false;
    return (onDisk[Math.ceil(sectors / 8) - 1] & ~((1 << used) - 1) & 0xff) !== 0;
  }

  get(sector: number): boolean {
    return getBit(ORDER, this.bytes, sector);
  }

  /**
   * End (exclusive, at most `limit`) of the run of sectors that share the
   * state of `start`: O(run/32) (core/bitmap.ts searches a word at a time).
   */
  runEnd(start: number, limit: number): number {
    return findBit(ORDER, this.bytes, start, limit, !this.get(start));
  }

  /** Runs of equal state covering sectors [start, end). */
  *runs(start: number, end: number): Generator<{ start: number; end: number; set: boolean }> {
    let s = start;
    while (s < end) {
      const e = this.runEnd(s, end);
      yield { start: s, end: e, set: this.get(s) };
      s = e;
    }
  }

  /** Set (or clear) sectors [start, end) in memory and remember the change for the next flush. */
  setRange(start: number, end: number, value: boolean): void {
    if (end <= start) return;
    setBits(ORDER, this.bytes, start, end, value);
    const firstByte = Math.floor(start / 8);
    const lastByte = Math.floor((end - 1) / 8);
    for (let c = Math.floor(firstByte / DIRTY_CHUNK); c <= Math.floor(lastByte / DIRTY_CHUNK); c++) this.dirty.add(c);
  }

  /**
   * Snapshot the changed pieces (merged where contiguous) and forget them.
   * The snapshot is what gets written: bits set after this call wait for the
   * next flush, because their data was not part of the fdatasync before it.
   */
  takeDirty(): BitmapPiece[] {
    const chunks = [...this.dirty].sort((a, b) => a - b);
    this.dirty.clear();
    const out: BitmapPiece[] = [];
    let i = 0;
    while (i < chunks.length) {
      let j = i;
      while (j + 1 < chunks.length && chunks[j + 1] === chunks[j] + 1) j++;
      const from = chunks[i] * DIRTY_CHUNK;
      const to = Math.min((chunks[j] + 1) * DIRTY_CHUNK, this.byteLength);
      if (to > from) out.push({ offset: from, data: this.bytes.slice(from, to) });
      i = j + 1;
    }
    return out;
  }

  /** Put pieces back after a failed write-back, so a later flush retries them. */
  markDirty(pieces: readonly BitmapPiece[]): void {
    for (const p of pieces) {
      for (let c = Math.floor(p.offset / DIRTY_CHUNK); c * DIRTY_CHUNK < p.offset + p.data.length; c++) this.dirty.add(c);
    }
  }

  /** Number of set bits (allocated sectors). */
  countSet(): number {
    let n = 0;
    for (let w = 0; w < this.words.length; w++) {
      let v = this.words[w];
      if (v === 0) continue;
      v = v - ((v >>> 1) & 0x55555555);
      v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
      n += (Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
    }
    return n;
  }

  /** The on-disk bytes (a view; do not keep it across resize). */
  view(): Uint8Array {
    return this.bytes.subarray(0, this.byteLength);
  }

  /** Change the number of sectors; bits past the new end are dropped. Dirty state is kept for what remains. */
  resize(sectors: number): void {
    const dirty = [...this.dirty];
    this.allocate(sectors, this.bytes);
    this.dirty.clear();
    const chunks = Math.ceil(this.byteLength / DIRTY_CHUNK);
    for (const c of dirty) if (c < chunks) this.dirty.add(c);
  }
}
