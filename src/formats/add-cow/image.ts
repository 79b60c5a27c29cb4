import { pushExtent, type Extent } from '../../core/extent.js';
import { checkRequest } from '../../core/request.js';
import type { HostRange, Store } from '../../io/store.js';
import type { BackingRef, BackingTarget, CheckResult, FormatInfo, Image, WritePlacement } from '../types.js';
import { checkAddCow } from './check.js';
import { hostAllocatedAddCow, punchHolesAddCow, punchRefusalAddCow } from './compact.js';
import { SECTOR } from './header.js';
import { resizeAddCow, setBackingAddCow } from './maintenance.js';
import type { AddCowState } from './state.js';

/**
 * One add-cow layer's I/O path (its files, durability rule and lock are
 * state.ts's). Set bits are answered from the image file; clear bits are the
 * backing file's business (chain/), or zeros when there is none. check,
 * resize and setBacking are check.ts's and maintenance.ts's.
 */
export class AddCowImage implements Image {
  readonly format = 'add-cow';
  readonly logicalSectorSize = SECTOR;
  /** Sector n is byte n*512 of the image file, whatever was written before (zeros are written there too: no fastZero). */
  readonly placement: WritePlacement = 'fixed';
  /** Copied from the state, which never changes it: read on every write. */
  readonly readOnly: boolean;
  /**
   * The state's bitmap and raw view of the image file, held here too for the
   * data path (one property load less per use). The same objects: the state
   * never replaces them (resize changes them in place).
   */
  private readonly bitmap: AddCowState['bitmap'];
  private readonly data: AddCowState['data'];
  private closed = false;

  constructor(private readonly state: AddCowState) {
    this.readOnly = state.readOnly;
    this.bitmap = state.bitmap;
    this.data = state.data;
  }

  get path(): string {
    return this.state.store.path;
  }

  get size(): number {
    return this.state.header.size;
  }

  get backing(): BackingRef | null {
    return this.state.backing;
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
    const clear = this.state.backing ? 'unallocated' : 'zero';
    const bitmap = this.bitmap;
    // Most requests (a 4 KiB read) lie in one run: answer without the run walk.
    const first = Math.floor(offset / SECTOR);
    const end = Math.ceil((offset + length) / SECTOR);
    if (length > 0 && bitmap.runEnd(first, end) >= end) {
      out.push(bitmap.get(first) ? { offset, length, kind: 'data', hostOffset: offset } : { offset, length, kind: clear });
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
   * any time without harm; the image file keeps its bytes and its space
   * (`vdisk compact` punches them out later: compact.ts).
   */
  async trim(offset: number, length: number): Promise<void> {
    checkRequest(this, 'trim', offset, length, SECTOR);
    this.bitmap.setRange(offset / SECTOR, (offset + length) / SECTOR, false);
  }

  /** Image file fdatasync → changed bitmap pieces written → add-cow fdatasync (state.ts, docs "Write order"). */
  flush(): Promise<void> {
    return this.state.meta.run(() => this.state.flushLocked());
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
    for (const s of [this.state.imageStore, this.state.store]) {
      try {
        await s.close();
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure) throw failure;
  }

  info(): FormatInfo {
    const { header, bitmap } = this.state;
    return {
      specific: {
        ...(header.backingFile ? { 'backing-file': header.backingFile } : {}),
        'image-file': header.imageFile,
        'image-file-path': this.state.imagePath,
        'allocated-bytes': bitmap.countSet() * SECTOR,
        'bitmap-bytes': bitmap.byteLength,
      },
    };
  }

  check(options: { repair?: 'leaks' | 'all' } = {}): Promise<CheckResult> {
    return checkAddCow(this.state, options);
  }

  resize(newSize: number, options: { shrink?: boolean }): Promise<void> {
    return resizeAddCow(this.state, newSize, options);
  }

  setBacking(parent: BackingTarget | null): Promise<void> {
    return setBackingAddCow(this.state, parent);
  }

  /** vdisk compact: holes punched in the image file, the bitmap untouched (compact.ts). */
  punchRefusal(): string | undefined {
    return punchRefusalAddCow(this.state);
  }

  hostAllocated(): Promise<number | undefined> {
    return hostAllocatedAddCow(this.state);
  }

  punchHoles(ranges: readonly { offset: number; length: number }[]): Promise<void> {
    return punchHolesAddCow(this.state, ranges);
  }
}
