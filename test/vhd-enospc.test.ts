import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openChain } from '../src/chain/open.js';
import { isBlockError } from '../src/core/errors.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import type { Store, StoreOpener } from '../src/io/store.js';
import { commitImage } from '../src/ops/commit.js';
import { createImage } from '../src/ops/create.js';
import { resizeImage } from '../src/ops/resize.js';
import { rng, randomBytes } from './helpers/random.js';
import { DiskFullStore } from './helpers/stores.js';

/**
 * A full disk while a VHD grows (src/formats/vhd/image.ts, restoreEnd;
 * maintenance.ts, extending). For every write of `io`, `commit` and
 * `resize`, the disk fills up at that write; then the file must end in a
 * valid footer (Hyper-V reads only that one), `check` must find nothing, the
 * disk must read old or new sector by sector, and a later write with space
 * again must leave no leak. A second pass fails every write after the first
 * failure, the restore included: the caller still gets the ENOSPC, and the
 * file still opens (through the footer copy at offset 0) with old or new
 * content.
 */
const MiB = 1 << 20;
const SIZE = 4 * MiB;
const DIR = '/full';

type Op = (fs: MemoryFs, top: string, store: Store) => Promise<void>;

function routed(fs: MemoryFs, name: string, store: Store): StoreOpener {
  const inner = fs.opener();
  return async (path, o) => (path === name ? store : inner(path, o));
}

async function makeVhd(fs: MemoryFs, path: string, type: 'dynamic' | 'fixed', backing?: string): Promise<void> {
  await createImage({
    path,
    format: 'vhd',
    ...(backing ? { backing: { path: backing, format: 'vhd' } } : { size: SIZE }),
    options: { force_size: 'on', block_size: '1M', ...(type === 'fixed' ? { subformat: 'fixed' } : {}) },
    openStore: fs.opener(),
  });
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

interface Case {
  name: string;
  /** Builds the files; returns the one whose disk fills up and the image to read the disk through. */
  prepare: (fs: MemoryFs) => Promise<{ target: string; view: string }>;
  op: Op;
}

const io: Op = async (fs, top, store) => {
  const c = await openChain(top, { openStore: routed(fs, top, store) });
  try {
    const r = rng(7);
    // A partial new block, a whole new block (bitmap, data and footer in one request), an allocated block, another new block.
    await c.write(MiB + 4096, randomBytes(r, 8192));
    await c.write(2 * MiB, randomBytes(r, MiB));
    await c.write(0, randomBytes(r, 4096));
    await c.write(3 * MiB + 512, randomBytes(r, 1024));
    await c.flush();
  } finally {
    await c.close().catch(() => {});
  }
};

const CASES: Case[] = [
  {
    name: 'io into a dynamic disk',
    prepare: async (fs) => {
      await makeVhd(fs, `${DIR}/d.vhd`, 'dynamic');
      const c = await openChain(`${DIR}/d.vhd`, { openStore: fs.opener() });
      await c.write(0, randomBytes(rng(1), 8192));
      await c.close();
      return { target: `${DIR}/d.vhd`, view: `${DIR}/d.vhd` };
    },
    op: io,
  },
  {
    name: 'io into a differencing disk',
    prepare: async (fs) => {
      await makeVhd(fs, `${DIR}/base.vhd`, 'dynamic');
      let c = await openChain(`${DIR}/base.vhd`, { openStore: fs.opener() });
      await c.write(0, randomBytes(rng(2), SIZE));
      await c.close();
      await makeVhd(fs, `${DIR}/top.vhd`, 'dynamic', 'base.vhd');
      c = await openChain(`${DIR}/top.vhd`, { openStore: fs.opener() });
      await c.write(8192, randomBytes(rng(3), 4096));
      await c.close();
      return { target: `${DIR}/top.vhd`, view: `${DIR}/top.vhd` };
    },
    op: io,
  },
  {
    name: 'commit into a dynamic parent',
    prepare: async (fs) => {
      await makeVhd(fs, `${DIR}/base.vhd`, 'dynamic');
      let c = await openChain(`${DIR}/base.vhd`, { openStore: fs.opener() });
      await c.write(MiB, randomBytes(rng(4), 4096));
      await c.close();
      await makeVhd(fs, `${DIR}/top.vhd`, 'dynamic', 'base.vhd');
      c = await openChain(`${DIR}/top.vhd`, { openStore: fs.opener() });
      const r = rng(5);
      await c.write(0, randomBytes(r, 8192));
      await c.write(MiB + 8192, randomBytes(r, 4096));
      await c.write(2 * MiB, randomBytes(r, MiB));
      await c.write(3 * MiB + 4096, randomBytes(r, 4096));
      await c.close();
      return { target: `${DIR}/base.vhd`, view: `${DIR}/top.vhd` };
    },
    op: async (fs, base, store) => {
      await commitImage({ path: `${DIR}/top.vhd`, keepTop: true, openStore: routed(fs, base, store) });
    },
  },
  ...(['fixed', 'dynamic'] as const).map<Case>((type) => ({
    name: `resize of a ${type} disk (${type === 'fixed' ? 'footer moves out' : 'a larger BAT at the end'})`,
    prepare: async (fs) => {
      await makeVhd(fs, `${DIR}/r.vhd`, type);
      const c = await openChain(`${DIR}/r.vhd`, { openStore: fs.opener() });
      await c.write(MiB, randomBytes(rng(6), 4096));
      await c.close();
      return { target: `${DIR}/r.vhd`, view: `${DIR}/r.vhd` };
    },
    // Dynamic: 200 MiB, past the BAT's room (a 4 MiB disk of 1 MiB blocks gets one sector of table, 128 entries). Fixed: twice the size.
    op: async (fs, path, store) => {
      await resizeImage({ path, size: type === 'fixed' ? 2 * SIZE : 200 * MiB, openStore: routed(fs, path, store) });
    },
  })),
];

async function disk(fs: MemoryFs, view: string, target: string, bytes: Uint8Array): Promise<Uint8Array> {
  // The first SIZE bytes only: a resized disk is larger, and past SIZE it reads zeros or nothing.
  const c = await openChain(view, { openStore: routed(fs, target, new MemoryStore(target, bytes)), readOnly: true });
  try {
    const d = new Uint8Array(SIZE);
    await c.read(0, d);
    return d;
  } finally {
    await c.close();
  }
}

async function problems(fs: MemoryFs, target: string, bytes: Uint8Array): Promise<string[]> {
  const c = await openChain(target, { openStore: routed(fs, target, new MemoryStore(target, bytes)), readOnly: true, layerOnly: true });
  try {
    const r = await c.top.check!({});
    return r.problems.map((p) => `${p.severity}: ${p.message}`);
  } finally {
    await c.close();
  }
}

function endFooter(bytes: Uint8Array): boolean {
  return Buffer.from(bytes.subarray(bytes.length - 512, bytes.length - 504)).toString('latin1') === 'conectix';
}

for (const c of CASES) {
  test(`a full disk at every write of ${c.name} leaves a valid VHD with its end footer and no leak`, async () => {
    const fs = new MemoryFs();
    const { target, view } = await c.prepare(fs);
    const initial = fs.files.get(target)!.bytes();
    const oldDisk = await disk(fs, view, target, initial);
    const dry = new DiskFullStore(target, initial);
    await c.op(fs, target, dry);
    const writes = dry.writeCount;
    const newDisk = await disk(fs, view, target, dry.bytes());
    assert.ok(writes >= 2, `the operation writes (${writes})`);
    let failures = 0;
    for (const nothingAfter of [false, true]) {
      for (let k = 0; k < writes; k++) {
        const where = `full at write ${k}${nothingAfter ? ', nothing written after' : ''}`;
        const store = new DiskFullStore(target, initial, k, nothingAfter);
        let error: unknown;
        await c.op(fs, target, store).catch((e: unknown) => (error = e));
        if (store.failed) {
          failures++;
          // The error reported is the disk's, not a later one from restoring.
          assert.ok(isBlockError(error, 'io') && /no space left/.test(error.message), `${where}: ENOSPC reported (${String(error)})`);
        } else assert.equal(error, undefined, `${where}: ${String(error)}`);
        const bytes = store.bytes();
        const got = await disk(fs, view, target, bytes);
        for (let off = 0; off < SIZE; off += 512) {
          const g = got.subarray(off, off + 512);
          if (!equal(g, oldDisk.subarray(off, off + 512)) && !equal(g, newDisk.subarray(off, off + 512))) assert.fail(`${where}: sector ${off / 512} is neither old nor new`);
        }
        if (nothingAfter) continue;
        assert.ok(endFooter(bytes), `${where}: the file ends in a footer`);
        assert.deepEqual(await problems(fs, target, bytes), [], `${where}: check is clean`);
        // Space again: a write into a new block, and still nothing for check to find (no leak where the failed block was).
        const again = new MemoryStore(target, bytes);
        const w = await openChain(target, { openStore: routed(fs, target, again), layerOnly: true });
        await w.write(SIZE - 4096, new Uint8Array(4096).fill(9));
        await w.close();
        const after = again.bytes();
        assert.ok(endFooter(after), `${where}: after a later write, the file ends in a footer`);
        assert.deepEqual(await problems(fs, target, after), [], `${where}: after a later write, check is clean`);
      }
    }
    assert.ok(failures > 0, 'some runs hit the full disk');
  });
}
