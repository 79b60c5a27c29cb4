import type { Store } from './store.js';
import { readOnlyError } from '../core/request.js';

/**
 * A store that keeps only what is written to it, reading zeros everywhere
 * else, with a length that may run far past its bytes: the metadata a
 * format's create lays out (headers, tables, footers) without the disk
 * space it truncates to. The sequential writers (ops/sequential.ts) create
 * a target into one and stream its metadata from it; memory stays the size
 * of the metadata whatever the disk's size.
 */
export class SkeletonStore implements Store {
  readonly readOnly = false;
  private readonly writes: { offset: number; data: Uint8Array }[] = [];
  private length = 0;

  constructor(readonly path: string) {}

  async size(): Promise<number> {
    return this.length;
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    const n = Math.max(0, Math.min(into.length, this.length - offset));
    into.fill(0, 0, n);
    // Later writes overlay earlier ones, as on a file.
    for (const w of this.writes) {
      const a = Math.max(offset, w.offset);
      const b = Math.min(offset + n, w.offset + w.data.length);
      if (a < b) into.set(w.data.subarray(a - w.offset, b - w.offset), a - offset);
    }
    return n;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.writes.push({ offset, data: data.slice() });
    this.length = Math.max(this.length, offset + data.length);
  }

  async truncate(size: number): Promise<void> {
    for (const w of this.writes) if (w.offset + w.data.length > size) w.data = w.data.subarray(0, Math.max(0, size - w.offset));
    this.length = size;
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}

  /** The same bytes, refusing writes (what a read-only open of the skeleton gets). */
  readOnlyView(): Store {
    const self = this;
    return {
      path: this.path,
      readOnly: true,
      size: () => self.size(),
      read: (o, into) => self.read(o, into),
      write: async () => {
        throw readOnlyError({ path: self.path, operation: 'write' });
      },
      truncate: async () => {
        throw readOnlyError({ path: self.path, operation: 'truncate' });
      },
      flush: async () => {},
      close: async () => {},
    };
  }
}
