import { BlockError } from '../core/errors.js';
import { readOnlyError } from '../core/request.js';
import type { OpenStoreOptions, Store, StoreOpener } from './store.js';

/** A growable in-memory file, for tests and scratch images. */
export class MemoryStore implements Store {
  private buf: Uint8Array;
  private len: number;

  constructor(
    readonly path = 'memory',
    initial?: Uint8Array,
    readonly readOnly = false,
  ) {
    this.buf = initial ? initial.slice() : new Uint8Array(0);
    this.len = this.buf.length;
  }

  /** A copy of the current contents. */
  bytes(): Uint8Array {
    return this.buf.slice(0, this.len);
  }

  async size(): Promise<number> {
    return this.len;
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    if (offset >= this.len) return 0;
    const n = Math.min(into.length, this.len - offset);
    into.set(this.buf.subarray(offset, offset + n));
    return n;
  }

  private ensure(cap: number): void {
    if (cap <= this.buf.length) return;
    const next = new Uint8Array(Math.max(cap, this.buf.length * 2, 4096));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw readOnlyError({ path: this.path, operation: 'write' });
    this.ensure(offset + data.length);
    if (offset > this.len) this.buf.fill(0, this.len, offset);
    this.buf.set(data, offset);
    this.len = Math.max(this.len, offset + data.length);
  }

  async truncate(size: number): Promise<void> {
    if (this.readOnly) throw readOnlyError({ path: this.path, operation: 'truncate' });
    this.ensure(size);
    if (size > this.len) this.buf.fill(0, this.len, size);
    this.len = size;
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/**
 * A set of named memory files behaving like a folder, so formats that open
 * other files (parents, add-cow image files) can be tested without the disk.
 */
export class MemoryFs {
  readonly files = new Map<string, MemoryStore>();

  opener(): StoreOpener {
    return async (path: string, options: OpenStoreOptions) => {
      const existing = this.files.get(path);
      if (options.create) {
        if (existing && !options.truncate) throw new BlockError('invalid-argument', 'file already exists', { path });
        const s = new MemoryStore(path);
        this.files.set(path, s);
        return s;
      }
      if (!existing) throw new BlockError('not-found', 'no such file', { path, operation: 'open' });
      return options.readOnly ? new ReadOnlyView(existing) : existing;
    };
  }
}

class ReadOnlyView implements Store {
  readonly readOnly = true;
  constructor(private readonly inner: Store) {}
  get path(): string {
    return this.inner.path;
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  read(offset: number, into: Uint8Array): Promise<number> {
    return this.inner.read(offset, into);
  }
  async write(): Promise<void> {
    throw readOnlyError({ path: this.path, operation: 'write' });
  }
  async truncate(): Promise<void> {
    throw readOnlyError({ path: this.path, operation: 'truncate' });
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
