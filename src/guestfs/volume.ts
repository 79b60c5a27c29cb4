import { BlockError } from '../core/errors.js';

/**
 * The two seams every file-system reader in guestfs/ shares: a bounded view of
 * one partition of the virtual disk, and the sink that collects free ranges.
 */

/** Reads exactly `into.length` bytes of the virtual disk at `offset`. */
export type DiskReader = (offset: number, into: Uint8Array) => Promise<void>;

/**
 * One partition (or the whole disk): [start, start + length) in disk bytes.
 * Every read a file-system reader makes goes through here, so a structure that
 * points past the partition's end is refused before anything is read.
 */
export class Volume {
  constructor(
    private readonly disk: DiskReader,
    readonly start: number,
    readonly length: number,
  ) {}

  /** Read `length` bytes at `offset` (relative to the partition), naming `what` if they lie outside it. */
  async read(offset: number, length: number, what: string): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.length) {
      throw new BlockError('corrupt', `${what} lies outside its partition (offset ${offset}, length ${length}, partition size ${this.length})`, {
        offset: this.start + offset,
        length,
      });
    }
    const buf = new Uint8Array(length);
    if (length > 0) await this.disk(this.start + offset, buf);
    return buf;
  }
}

/**
 * Collects free disk byte ranges in ascending order and merges neighbours, so
 * a file system's free map comes back as a short list however it was scanned.
 * Ranges must arrive sorted: the readers scan groups/clusters in disk order, and
 * anything out of order is a bug, not bad input.
 */
export class FreeRanges {
  readonly ranges: { offset: number; length: number }[] = [];
  private end = 0;
  /** Bytes added since the last call to `take()`. */
  private counted = 0;

  add(offset: number, length: number): void {
    if (length <= 0) return;
    if (offset < this.end) throw new Error(`guestfs: free range ${offset} added out of order (last end ${this.end})`);
    this.counted += length;
    const last = this.ranges[this.ranges.length - 1];
    if (last && last.offset + last.length === offset) last.length += length;
    else this.ranges.push({ offset, length });
    this.end = offset + length;
  }

  /** Bytes added since the previous call (for the per-file-system note). */
  take(): number {
    const n = this.counted;
    this.counted = 0;
    return n;
  }
}

/** Half-open [start, end) ranges sorted by start with neighbours merged (in file-system units, e.g. blocks). */
export function mergeSorted(pairs: number[]): number[] {
  const idx = Array.from({ length: pairs.length / 2 }, (_, i) => i);
  idx.sort((a, b) => pairs[2 * a] - pairs[2 * b]);
  const out: number[] = [];
  for (const i of idx) {
    const s = pairs[2 * i];
    const e = pairs[2 * i + 1];
    const n = out.length;
    if (n > 0 && s <= out[n - 1]) out[n - 1] = Math.max(out[n - 1], e);
    else out.push(s, e);
  }
  return out;
}
