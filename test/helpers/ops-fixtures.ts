import { createHash } from 'node:crypto';
import { BlockError } from '../../src/core/errors.js';
import { FaultStore } from './fault-store.js';
import { MemoryStore } from '../../src/io/memory-store.js';
import type { OpenStoreOptions, Store, StoreOpener } from '../../src/io/store.js';
import { openChain, type ChainOpenOptions } from '../../src/chain/open.js';
import { rawFormat } from '../../src/formats/raw/index.js';
import type { BackingTarget, Format, Image } from '../../src/formats/types.js';
import { toyFormat, writeToy, type ToyCreate } from './toy-format.js';

/**
 * Fixtures for the whole-image operation tests (commit, rebase, check):
 *  - `cowFormat`: the test-only toy format plus the hooks those operations
 *    use (setBacking, check) and a crash-safe write order (data durable
 *    before the map byte that points at it), so crash tests measure the
 *    operation, not the fixture;
 *  - `CrashFs`: named FaultStores sharing one budget of mutating operations,
 *    so a crash can be injected at any step across every file of a chain.
 */

const enc = new TextEncoder();

/** New sizes that reached the cow format's resize hook. */
export const resizeCalls: number[] = [];

function withOpsHooks(img: Image, store: Store): Image {
  const mut = img as { -readonly [K in keyof Image]: Image[K] };
  const dataStart = 1024 + Math.ceil(img.size / 512 / 512) * 512;
  const innerWrite = img.write.bind(img);
  // The toy cannot change its size; the hook only records what reached it (resize's own checks are under test).
  mut.resize = async (newSize: number) => {
    resizeCalls.push(newSize);
  };
  mut.write = async (offset: number, data: Uint8Array) => {
    // Data first and durable, then the toy's own write (same bytes again, then the map).
    await store.write(dataStart + offset, data);
    await store.flush();
    await innerWrite(offset, data);
  };
  mut.setBacking = async (t: BackingTarget | null) => {
    // One 1024-byte header write: atomic in FaultStore's model.
    const h = new Uint8Array(1024);
    await store.read(0, h);
    h.fill(0, 24, 32);
    h.fill(0, 64, 352);
    h[32] = 0;
    if (t) {
      h.set(enc.encode(t.path), 64);
      h.set(enc.encode(t.format), 320);
    }
    await store.write(0, h);
    mut.backing = t ? { recorded: t.path, candidates: [t.path], format: t.format } : null;
  };
  mut.check = async () => {
    // Map bytes other than 0, 1, 2 are corruption.
    const map = new Uint8Array(img.size / 512);
    await store.read(1024, map);
    const bad = map.findIndex((b) => b > 2);
    return { problems: bad < 0 ? [] : [{ severity: 'corruption' as const, message: `bad map byte for sector ${bad}`, offset: 1024 + bad }] };
  };
  return img;
}

const cowFormat: Format = {
  ...toyFormat,
  async open(ctx) {
    return withOpsHooks(await toyFormat.open(ctx), ctx.store);
  },
};

export const COW_FORMATS: readonly Format[] = [cowFormat, rawFormat];

/** A memory folder holding toy/raw files, every file a FaultStore drawing on one shared budget. */
export class CrashFs {
  readonly stores = new Map<string, FaultStore>();
  /** Mutating operations left before the power fails (Infinity: never). */
  budget = Infinity;
  used = 0;

  static async from(files: Record<string, ToyCreate | Uint8Array>): Promise<CrashFs> {
    const fs = new CrashFs();
    for (const [path, spec] of Object.entries(files)) {
      const m = new MemoryStore(path);
      if (spec instanceof Uint8Array) await m.write(0, spec);
      else await writeToy(m, spec);
      fs.stores.set(path, new FaultStore(path, m.bytes()));
    }
    return fs;
  }

  /** The same files with their current bytes, no crash pending. */
  async clone(mode: 'durable' | 'all' | 'subset' = 'all', seed = 1): Promise<CrashFs> {
    const fs = new CrashFs();
    for (const [p, s] of this.stores) fs.stores.set(p, new FaultStore(p, await s.crashImage(mode, seed)));
    return fs;
  }

  private tick(path: string, op: string): void {
    if (this.used >= this.budget) {
      for (const s of this.stores.values()) s.crashed = true;
      throw new BlockError('io', `injected crash at operation ${this.used} (${op})`, { path, operation: op });
    }
    this.used++;
  }

  opener(): StoreOpener {
    return async (path: string, options: OpenStoreOptions): Promise<Store> => {
      let s = this.stores.get(path);
      if (options.create) {
        if (s && !options.truncate) throw new BlockError('invalid-argument', 'file already exists', { path });
        s = new FaultStore(path, new Uint8Array(0));
        this.stores.set(path, s);
      }
      if (!s) throw new BlockError('not-found', 'no such file', { path, operation: 'open' });
      const inner = s;
      const fs = this;
      const readOnly = Boolean(options.readOnly);
      const refuse = (op: string) => {
        throw new BlockError('read-only', 'image is open read-only', { path, operation: op });
      };
      return {
        path,
        readOnly,
        size: () => inner.size(),
        read: (o, into) => inner.read(o, into),
        async write(o, d) {
          if (readOnly) refuse('write');
          fs.tick(path, 'write');
          return inner.write(o, d);
        },
        async truncate(n) {
          if (readOnly) refuse('truncate');
          fs.tick(path, 'truncate');
          return inner.truncate(n);
        },
        async flush() {
          if (readOnly) return;
          fs.tick(path, 'flush');
          return inner.flush();
        },
        async close() {},
      };
    };
  }
}

/** sha256 of the whole disk a chain shows. */
export async function chainDigest(path: string, options: ChainOpenOptions): Promise<string> {
  const c = await openChain(path, { readOnly: true, ...options });
  try {
    const h = createHash('sha256');
    const buf = new Uint8Array(1 << 20);
    for (let o = 0; o < c.size; o += buf.length) {
      const part = buf.subarray(0, Math.min(buf.length, c.size - o));
      await c.read(o, part);
      h.update(part);
    }
    return h.digest('hex');
  } finally {
    await c.close();
  }
}
