import { BlockError } from '../../core/errors.js';
import { pushExtent, type Extent } from '../../core/extent.js';
import { Mutex } from '../../core/mutex.js';
import { checkRequest, readOnlyError } from '../../core/request.js';
import type { HostRange, Store } from '../../io/store.js';
import { readExact } from '../../io/store.js';
import { RawImage } from '../raw/image.js';
import type { BackingRef, BackingTarget, CheckProblem, CheckResult, FormatInfo, Image, WritePlacement } from '../types.js';
import { Bitmap } from './bitmap.js';
import {
  BACKING_FIELD_OFFSET,
  HEADER_SIZE,
  SECTOR,
  SIZE_FIELD_OFFSET,
  encodeBackingField,
  encodeSizeField,
  type AddCowHeader,
} from './header.js';
import { sameFile } from '../../io/identity.js';
import { nameToStore, resolveName } from './paths.js';

export function backingRefOf(name: string): BackingRef | null {
  // The header records no backing format: the chain probes the backing file.
  return name ? { recorded: name, candidates: [name] } : null;
}

/**
 * One add-cow layer: the add-cow file (header + bitmap) and its raw image
 * file. Set bits are answered from the image file; clear bits are the
 * backing file's business (chain/), or zeros when there is none.
 *
 * Durability (docs/formats/add-cow.md, "Write order"): writes go to the image
 * file and set bits in memory only. flush() makes the image file durable
 * first, then writes the changed bitmap pieces, then makes the add-cow file
 * durable — so a set bit on disk always covers durable data.
 */
export class AddCowImage implements Image {
  readonly format = 'add-cow';
  readonly logicalSectorSize = SECTOR;
  /** Sector n is byte n*512 of the image file, whatever was written before (zeros are written there too: no fastZero). */
  readonly placement: WritePlacement = 'fixed';
  backing: BackingRef | null;
  /** Serialises flush, resize and setBacking (the v4 patch updated the bitmap without a lock). */
  private readonly meta = new Mutex();
  /** The image file seen as a raw disk: sector n of the disk is byte n*512 of the file. */
  private readonly data: RawImage;
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly imageStore: Store,
    private header: AddCowHeader,
    private readonly bitmap: Bitmap,
    readonly imagePath: string,
    readonly readOnly: boolean,
    private readonly maxSize: number,
    /** Set bits found past the last sector at open (check reports them). */
    private strayTailBits: boolean,
  ) {
    this.backing = backingRefOf(header.backingFile);
    this.data = new RawImage(imageStore, header.size, readOnly);
  }

  get path(): string {
    return this.store.path;
  }

  get size(): number {
    return this.header.size;
  }

  private get bitmapEnd(): number {
    return HEADER_SIZE + this.bitmap.byteLength;
  }

  /** Runs of the bitmap over [offset, offset+length), clipped to the byte range. */
  private *byteRuns(offset: number, length: number): Generator<{ offset: number; length: number; set: boolean }> {
    const end = offset + length;
    for (const r of this.bitmap.runs(Math.floor(offset / SECTOR), Math.ceil(end / SECTOR))) {
      const from = Math.max(offset, r.start * SECTOR);
      const to = Math.min(end, r.end * SECTOR);
      yield { offset: from, length: to - from, set: r.set };
    }
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.mapCached(offset, length);
  }

  /** The whole bitmap is in memory: the map never needs a read. */
  mapCached(offset: number, length: number): Extent[] {
    checkRequest(this, 'block status', offset, length);
    const out: Extent[] = [];
    const clear = this.backing ? 'unallocated' : 'zero';
    // Most requests (a 4 KiB read) lie in one run: answer without the run walk.
    const first = Math.floor(offset / SECTOR);
    const end = Math.ceil((offset + length) / SECTOR);
    if (length > 0 && this.bitmap.runEnd(first, end) >= end) {
      out.push(this.bitmap.get(first) ? { offset, length, kind: 'data', hostOffset: offset } : { offset, length, kind: clear });
      return out;
    }
    for (const r of this.byteRuns(offset, length)) {
      // The image file is the disk's raw twin, so data sits at the same offset there.
      pushExtent(out, r.set ? { offset: r.offset, length: r.length, kind: 'data', hostOffset: r.offset } : { offset: r.offset, length: r.length, kind: clear });
    }
    return out;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRequest(this, 'read', offset, into.length);
    for (const r of this.byteRuns(offset, into.length)) {
      const part = into.subarray(r.offset - offset, r.offset - offset + r.length);
      if (r.set) await this.data.read(r.offset, part);
      else part.fill(0);
    }
  }

  get hostStore(): Store | undefined {
    return this.data.hostStore;
  }

  /** Data extents are the image file's bytes at the same offset (hostOffset = disk offset). */
  readHost(hostOffset: number, into: Uint8Array): Promise<void> {
    return this.data.read(hostOffset, into);
  }

  /** The image file is raw: its blockStatus is the host's allocation (holes read as zeros). */
  async hostAllocation(hostOffset: number, length: number): Promise<HostRange[] | undefined> {
    return (await this.data.blockStatus(hostOffset, length)).map((e) => ({ offset: e.offset, length: e.length, data: e.kind === 'data' }));
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    checkRequest(this, 'write', offset, data.length, SECTOR);
    await this.data.write(offset, data);
    // Only after the data write completed: the bit is in memory, and reaches disk at flush, after fdatasync of the image file.
    this.bitmap.setRange(offset / SECTOR, (offset + data.length) / SECTOR, true);
  }

  /** Zeros are written into the image file: a clear bit would expose the backing file. */
  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRequest(this, 'write zeroes', offset, length, SECTOR);
    await this.data.writeZeroes(offset, length);
    this.bitmap.setRange(offset / SECTOR, (offset + length) / SECTOR, true);
  }

  /**
   * Discard clears the bits: the sectors show the backing file again (allowed:
   * discarded contents are unspecified). A cleared bit may reach the disk at
   * any time without harm; the image file keeps its bytes (stores cannot
   * punch holes).
   */
  async trim(offset: number, length: number): Promise<void> {
    checkRequest(this, 'trim', offset, length, SECTOR);
    this.bitmap.setRange(offset / SECTOR, (offset + length) / SECTOR, false);
  }

  flush(): Promise<void> {
    return this.meta.run(() => this.flushLocked());
  }

  /** Image file fdatasync → changed bitmap pieces written → add-cow fdatasync (docs "Write order"). */
  private async flushLocked(): Promise<void> {
    if (this.readOnly) return;
    const pieces = this.bitmap.takeDirty();
    try {
      await this.imageStore.flush();
      for (const p of pieces) await this.store.write(HEADER_SIZE + p.offset, p.data);
      await this.store.flush();
    } catch (e) {
      this.bitmap.markDirty(pieces);
      throw e;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    let failure: unknown;
    try {
      await this.flush();
    } catch (e) {
      failure = e;
    }
    for (const s of [this.imageStore, this.store]) {
      try {
        await s.close();
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure) throw failure;
  }

  info(): FormatInfo {
    return {
      specific: {
        ...(this.header.backingFile ? { 'backing-file': this.header.backingFile } : {}),
        'image-file': this.header.imageFile,
        'image-file-path': this.imagePath,
        'allocated-bytes': this.bitmap.countSet() * SECTOR,
        'bitmap-bytes': this.bitmap.byteLength,
      },
    };
  }

  /**
   * Rewrite the last bitmap byte on disk with the bits past the last sector
   * cleared. Read from disk, not memory: memory may hold bits whose data is
   * not durable yet.
   */
  private async clearTailOnDisk(): Promise<void> {
    if (this.bitmap.sectors % 8 === 0) return;
    const at = this.bitmapEnd - 1;
    const b = await readExact(this.store, at, new Uint8Array(1), 'add-cow bitmap');
    const masked = b[0] & ((1 << this.bitmap.sectors % 8) - 1);
    if (masked !== b[0]) await this.store.write(at, new Uint8Array([masked]));
  }

  async check(options: { repair?: 'leaks' | 'all' } = {}): Promise<CheckResult> {
    return this.meta.run(async () => {
      const problems: CheckProblem[] = [];
      const fileSize = await this.store.size();
      if (fileSize < this.bitmapEnd) {
        problems.push({ severity: 'corruption', message: `bitmap is truncated: the file ends at ${fileSize}, the bitmap at ${this.bitmapEnd}`, offset: fileSize });
      } else if (fileSize > this.bitmapEnd) {
        problems.push({ severity: 'info', message: `${fileSize - this.bitmapEnd} bytes after the bitmap are ignored`, offset: this.bitmapEnd });
      }
      const imageSize = await this.imageStore.size();
      if (imageSize < this.size) {
        problems.push({ severity: 'corruption', message: `image file ${this.imagePath} is ${imageSize} bytes, smaller than the virtual size ${this.size}` });
      }
      if (this.strayTailBits) {
        const p: CheckProblem = { severity: 'warning', message: 'bits are set past the last sector in the last bitmap byte', offset: this.bitmapEnd - 1 };
        if (options.repair === 'all' && !this.readOnly) {
          await this.clearTailOnDisk();
          await this.store.flush();
          this.strayTailBits = false;
          p.repaired = true;
        }
        problems.push(p);
      }
      if (this.backing && (await sameFile(resolveName(this.header.backingFile, this.path), this.imagePath))) {
        problems.push({ severity: 'corruption', message: 'the backing file is the image file itself' });
      }
      const allocated = this.bitmap.countSet();
      return {
        problems,
        details: { 'allocated-sectors': allocated, 'total-sectors': this.bitmap.sectors, 'image-file': this.imagePath },
      };
    });
  }

  async resize(newSize: number, options: { shrink?: boolean }): Promise<void> {
    await this.meta.run(async () => {
      if (this.readOnly) throw readOnlyError({ path: this.path, operation: 'resize' });
      if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize % SECTOR !== 0) {
        throw new BlockError('invalid-argument', `new size ${newSize} is not a multiple of ${SECTOR}`, { path: this.path });
      }
      if (newSize > this.maxSize) throw new BlockError('out-of-range', `new size ${newSize} exceeds the add-cow limit of ${this.maxSize} bytes`, { path: this.path });
      if (newSize === this.size) return;
      if (newSize < this.size && !options.shrink) {
        throw new BlockError('invalid-argument', 'shrinking needs --shrink (data past the new end is lost)', { path: this.path });
      }
      // Persist pending bits in the old layout first, so the steps below start from a clean state.
      await this.flushLocked();
      if (newSize > this.size) await this.grow(newSize);
      else await this.shrink(newSize);
    });
  }

  /**
   * Grow: image file first (durable), then the bitmap's new zero bytes, then
   * the size field. A crash before the size field leaves the old, valid image
   * with a longer image file and bitmap tail, both ignored.
   */
  private async grow(newSize: number): Promise<void> {
    if ((await this.imageStore.size()) < newSize) {
      await this.imageStore.truncate(newSize);
      await this.imageStore.flush();
    }
    await this.clearTailOnDisk();
    // Bytes past the bitmap may be left from an interrupted shrink, with bits still set:
    // cut them off first, so the new part of the bitmap is all clear.
    await this.store.truncate(this.bitmapEnd);
    this.bitmap.resize(newSize / SECTOR);
    await this.store.truncate(this.bitmapEnd);
    await this.store.flush();
    await this.writeSize(newSize);
  }

  /**
   * Shrink: the size field is written and made durable first, so a crash never
   * leaves a header claiming more than the files hold, nor bits cleared under
   * the old size. Then the bits sharing the new last byte are cleared and the
   * files cut.
   */
  private async shrink(newSize: number): Promise<void> {
    await this.writeSize(newSize);
    this.bitmap.resize(newSize / SECTOR);
    await this.clearTailOnDisk();
    await this.store.truncate(this.bitmapEnd);
    await this.imageStore.truncate(newSize);
    await this.imageStore.flush();
    await this.store.flush();
  }

  private async writeSize(newSize: number): Promise<void> {
    await this.store.write(SIZE_FIELD_OFFSET, encodeSizeField(newSize));
    await this.store.flush();
    this.header = { ...this.header, size: newSize };
    this.data.size = newSize;
  }

  async setBacking(parent: BackingTarget | null): Promise<void> {
    await this.meta.run(async () => {
      if (this.readOnly) throw readOnlyError({ path: this.path, operation: 'set backing' });
      if (parent && (await sameFile(parent.absolutePath, this.imagePath))) {
        throw new BlockError('invalid-argument', 'the backing file cannot be the image file', { path: this.path });
      }
      const name = parent ? nameToStore(this.path, parent.absolutePath) : '';
      await this.store.write(BACKING_FIELD_OFFSET, encodeBackingField(name));
      await this.store.flush();
      this.header = { ...this.header, backingFile: name };
      this.backing = backingRefOf(name);
    });
  }
}
