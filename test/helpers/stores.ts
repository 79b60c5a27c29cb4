import { BlockError, fromSystemError } from '../../src/core/errors.js';
import { MemoryStore } from '../../src/io/memory-store.js';
import type { Store } from '../../src/io/store.js';

/**
 * A store whose writes land after a random number (0-3) of event-loop
 * turns, so writes in flight together land in any order — as on a host,
 * where two writes to one file run on two threads and either may take the
 * file first. The data is copied when the write is issued; reads see what
 * has landed. (FaultStore models crashes, not this: its writes land in
 * issue order.)
 */
export function reordering(inner: Store, r: () => number): Store {
  const later = async () => {
    for (let n = Math.floor(r() * 4); n > 0; n--) await new Promise((resolve) => setImmediate(resolve));
  };
  return new Proxy(inner, {
    get(t, k, recv) {
      if (k === 'write') {
        return async (offset: number, data: Uint8Array) => {
          const copy = data.slice();
          await later();
          return t.write(offset, copy);
        };
      }
      if (k === 'writev' && t.writev) {
        return async (offset: number, parts: readonly Uint8Array[]) => {
          const copies = parts.map((p) => p.slice());
          await later();
          return t.writev!(offset, copies);
        };
      }
      const v = Reflect.get(t, k, recv);
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
}

/**
 * A store on a disk that fills up: from its `fullAt`-th write on (counting
 * from 0), no write may reach past the size the file had then — as on a
 * full file system, where growing a file fails with ENOSPC while writes
 * inside it still land. The failing write lands up to that size (a short
 * write) and throws the BlockError a real ENOSPC becomes (fromSystemError).
 * `nothingAfter`: from the failure on, every write fails (a disk that
 * refuses even the writes that would restore the image). Truncation frees
 * space, which later writes may use again up to the same size.
 */
export class DiskFullStore implements Store {
  readonly readOnly = false;
  private readonly inner: MemoryStore;
  private writes = 0;
  private limit = Infinity;
  /** Set once a write has failed. */
  failed = false;

  constructor(
    readonly path: string,
    initial: Uint8Array,
    private readonly fullAt = Infinity,
    private readonly nothingAfter = false,
  ) {
    this.inner = new MemoryStore(path, initial);
  }

  /** Writes seen so far (to size a fail-at-every-write loop). */
  get writeCount(): number {
    return this.writes;
  }

  bytes(): Uint8Array {
    return this.inner.bytes();
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  read(offset: number, into: Uint8Array): Promise<number> {
    return this.inner.read(offset, into);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.writes++ === this.fullAt) this.limit = await this.inner.size();
    if ((this.failed && this.nothingAfter) || offset + data.length > this.limit) {
      if (!(this.failed && this.nothingAfter) && offset < this.limit) await this.inner.write(offset, data.subarray(0, this.limit - offset));
      this.failed = true;
      const sys = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
      throw fromSystemError(sys, { path: this.path, operation: 'write', offset, length: data.length });
    }
    await this.inner.write(offset, data);
  }

  async truncate(size: number): Promise<void> {
    if (this.failed && this.nothingAfter) throw new BlockError('io', 'injected failure (truncate on a failed disk)', { path: this.path, operation: 'truncate' });
    await this.inner.truncate(size);
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}
