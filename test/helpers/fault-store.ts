import { BlockError } from '../../src/core/errors.js';
import { MemoryStore } from '../../src/io/memory-store.js';
import type { Store } from '../../src/io/store.js';

type Pending = { kind: 'write'; offset: number; data: Uint8Array } | { kind: 'truncate'; size: number };

/**
 * A store for crash tests. It behaves like a disk with a volatile write cache:
 * writes are visible at once but only become durable at `flush()`. After
 * `failAfter` mutating operations (write, punch hole, truncate, flush) the "power fails":
 * that operation and every later one throws. `crashImage()` then yields what a
 * disk could hold after the crash — only what was flushed, everything, or a
 * seeded random subset of the unflushed writes applied in random order
 * (modelling dropped and reordered writes).
 */
export class FaultStore implements Store {
  readonly readOnly = false;
  private readonly current: MemoryStore;
  private readonly durable: MemoryStore;
  private pending: Pending[] = [];
  private ops = 0;
  crashed = false;

  constructor(
    readonly path: string,
    initial: Uint8Array,
    /** Mutating operations allowed before the crash; Infinity = never crash. */
    public failAfter = Infinity,
  ) {
    this.current = new MemoryStore(path, initial);
    this.durable = new MemoryStore(path, initial);
  }

  /** Mutating operations seen so far (to size a crash-at-every-step loop). */
  get operations(): number {
    return this.ops;
  }

  private tick(op: string): void {
    if (this.crashed) throw new BlockError('io', `injected crash (${op} after power loss)`, { path: this.path, operation: op });
    if (this.ops >= this.failAfter) {
      this.crashed = true;
      throw new BlockError('io', `injected crash at operation ${this.ops} (${op})`, { path: this.path, operation: op });
    }
    this.ops++;
  }

  size(): Promise<number> {
    return this.current.size();
  }

  read(offset: number, into: Uint8Array): Promise<number> {
    if (this.crashed) throw new BlockError('io', 'injected crash (read after power loss)', { path: this.path, operation: 'read' });
    return this.current.read(offset, into);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.tick('write');
    const copy = data.slice();
    this.pending.push({ kind: 'write', offset, data: copy });
    await this.current.write(offset, copy);
  }

  /** A punched hole reads as zeros: a write of zeros, durable (like any write) at the next flush. */
  async punchHole(offset: number, length: number): Promise<void> {
    this.tick('punch hole');
    const zeros = new Uint8Array(length);
    this.pending.push({ kind: 'write', offset, data: zeros });
    await this.current.write(offset, zeros);
  }

  async truncate(size: number): Promise<void> {
    this.tick('truncate');
    this.pending.push({ kind: 'truncate', size });
    await this.current.truncate(size);
  }

  async flush(): Promise<void> {
    this.tick('flush');
    for (const p of this.pending) await apply(this.durable, p);
    this.pending = [];
  }

  async close(): Promise<void> {}

  /** What the disk may hold after the crash. */
  async crashImage(mode: 'durable' | 'all' | 'subset', seed = 1): Promise<Uint8Array> {
    if (mode === 'all') return this.current.bytes();
    const out = new MemoryStore(this.path, this.durable.bytes());
    if (mode === 'subset') {
      let s = seed >>> 0 || 1;
      const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32);
      const chosen = this.pending.filter(() => rnd() < 0.5);
      for (let i = chosen.length - 1; i > 0; i--) {
        const j = Math.floor(rnd() * (i + 1));
        [chosen[i], chosen[j]] = [chosen[j], chosen[i]];
      }
      for (const p of chosen) await apply(out, p);
    }
    return out.bytes();
  }
}

async function apply(store: MemoryStore, p: Pending): Promise<void> {
  if (p.kind === 'write') await store.write(p.offset, p.data);
  else await store.truncate(p.size);
}
