import { Mutex } from '../../core/mutex.js';
import type { Store } from '../../io/store.js';
import { RawImage } from '../raw/image.js';
import type { BackingRef } from '../types.js';
import type { Bitmap } from './bitmap.js';
import { HEADER_SIZE, type AddCowHeader } from './header.js';

/**
 * add-cow (docs/formats/add-cow.md): copy-on-write for a raw image file, from
 * the add-cow v4 patch (QEMU, 2011, never merged). The whole bitmap is kept in
 * memory, one byte per 4 KiB of disk, so the size is capped at 2 TiB
 * (a 512 MiB bitmap).
 */
export const MAX_SIZE = 2 ** 41;

export function backingRefOf(name: string): BackingRef | null {
  // The header records no backing format: the chain probes the backing file.
  return name ? { recorded: name, candidates: [name] } : null;
}

/**
 * One open add-cow layer in memory, shared by the I/O path (image.ts), check
 * and maintenance: the add-cow file (header + bitmap, the whole bitmap held
 * here) and its raw image file.
 *
 * Durability (docs/formats/add-cow.md, "Write order"): writes go to the image
 * file and set bits in memory only. flush makes the image file durable first,
 * then writes the changed bitmap pieces, then makes the add-cow file durable —
 * so a set bit on disk always covers durable data.
 */
export class AddCowState {
  /** Serialises flush, check, resize and setBacking (the v4 patch updated the bitmap without a lock). */
  readonly meta = new Mutex();
  /** The image file seen as a raw disk: sector n of the disk is byte n*512 of the file. */
  readonly data: RawImage;
  backing: BackingRef | null;

  constructor(
    /** The add-cow file. */
    readonly store: Store,
    readonly imageStore: Store,
    public header: AddCowHeader,
    readonly bitmap: Bitmap,
    readonly imagePath: string,
    readonly readOnly: boolean,
    /** Set bits found past the last sector at open (check reports them). */
    public strayTailBits: boolean,
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

  get bitmapEnd(): number {
    return HEADER_SIZE + this.bitmap.byteLength;
  }

  /**
   * Image file fdatasync → changed bitmap pieces written → add-cow fdatasync
   * (docs "Write order"). Call with `meta` held. Here, not in image.ts,
   * because resize (maintenance.ts) persists pending bits the same way.
   */
  async flushLocked(): Promise<void> {
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
}
