import { BlockError } from '../../core/errors.js';
import { pushExtent, type Extent } from '../../core/extent.js';
import { writeZeroBytes } from '../../core/zeros.js';
import type { Store } from '../../io/store.js';
import { readOrZero } from '../../io/store.js';
import type { FormatInfo, Image, WritePlacement } from '../types.js';

/**
 * A raw layer: the file is the disk, byte for byte, so the image is its
 * store and a size. (add-cow reads its image file through one of these.)
 */
export class RawImage implements Image {
  readonly format = 'raw';
  readonly backing = null;
  readonly logicalSectorSize: number;
  /** The file is the disk (and its zeros are written: no fastZero). */
  readonly placement: WritePlacement = 'identity';

  constructor(
    private readonly store: Store,
    public size: number,
    readonly readOnly: boolean,
  ) {
    // A raw file need not be a whole number of sectors; then it is byte-addressed.
    this.logicalSectorSize = size % 512 === 0 ? 512 : 1;
  }

  get path(): string {
    return this.store.path;
  }

  /** The file is the disk: hostOffset = disk offset. */
  get hostStore(): Store {
    return this.store;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    // Holes of a sparse file read as zeros: report them so copies skip them
    // without reading (the chain asks only within the disk, which is the file).
    const ranges = (await this.store.allocation?.(offset, length)) ?? [{ offset, length, data: true }];
    const out: Extent[] = [];
    for (const r of ranges) pushExtent(out, { offset: r.offset, length: r.length, kind: r.data ? 'data' : 'zero', hostOffset: r.offset });
    return out;
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return readOrZero(this.store, offset, into);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.store.write(offset, data);
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return writeZeroBytes((o, d) => this.store.write(o, d), offset, length);
  }

  flush(): Promise<void> {
    return this.store.flush();
  }

  close(): Promise<void> {
    return this.store.close();
  }

  info(): FormatInfo {
    return { specific: {} };
  }

  async resize(newSize: number, options: { shrink?: boolean }): Promise<void> {
    if (newSize < this.size && !options.shrink) {
      throw new BlockError('invalid-argument', 'shrinking needs --shrink (data past the new end is lost)', { path: this.path });
    }
    await this.store.truncate(newSize);
    this.size = newSize;
  }

  // No check: a raw file has no structure to check, and saying "no errors"
  // would claim a check that never ran. Like qemu-img (raw has no
  // bdrv_co_check), `check` reports that the format has no checks (exit 63).
}
