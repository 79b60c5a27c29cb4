import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openChain } from '../src/chain/open.js';
import type { Chain } from '../src/chain/chain.js';
import { MemoryFs } from '../src/io/memory-store.js';
import type { Store, StoreOpener } from '../src/io/store.js';
import { createImage } from '../src/ops/create.js';
import { randInt, randomBytes, rng } from './helpers/random.js';
import { reordering } from './helpers/stores.js';

/**
 * VHD writes land outside the image lock, several at once (class comment of
 * src/formats/vhd/image.ts), and so do VHDX writes into blocks that already
 * hold data (src/formats/vhdx/image.ts): these tests hold both to what a
 * serial writer would give — contents, layout in call order, metadata that
 * checks clean — and VHD to the bitmap race a concurrent read used to win.
 */
const MiB = 1 << 20;
const SIZE = 64 * MiB;

/** A store whose reads/writes matching `slow` wait `ms` first (to force an interleaving). */
function slowed(inner: Store, slow: (op: 'read' | 'write', offset: number) => boolean, ms: number): Store {
  return new Proxy(inner, {
    get(t, k, recv) {
      if (k === 'read' || k === 'write') {
        return async (offset: number, buf: Uint8Array) => {
          if (slow(k, offset)) await new Promise((r) => setTimeout(r, ms));
          return k === 'read' ? t.read(offset, buf) : t.write(offset, buf);
        };
      }
      const v = Reflect.get(t, k, recv);
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
}

/**
 * Up to 16 disjoint sector-aligned writes of up to `maxSectors` sectors,
 * issued at once and applied to `model`; with `snap`, a third of them start
 * at a multiple of it (a block's first sector, where a new block's bitmap
 * goes with its data).
 */
function disjointWrites(c: Chain, model: Uint8Array, r: () => number, maxSectors: number, snap?: number): Promise<void>[] {
  const taken: Array<[number, number]> = [];
  const work: Promise<void>[] = [];
  for (let i = 0; i < 16; i++) {
    const len = randInt(r, 1, maxSectors) * 512;
    let at = randInt(r, 0, SIZE / 512 - 1) * 512;
    if (snap && r() < 1 / 3) at -= at % snap;
    const off = Math.min(SIZE - len, at);
    if (taken.some(([a, z]) => off < z && off + len > a)) continue;
    taken.push([off, off + len]);
    const d = randomBytes(r, len);
    model.set(d, off);
    work.push(c.write(off, d, { disjoint: true }));
  }
  return work;
}

/** `c` reads as `model`, and so does `top` reopened (then closed); its check reports nothing but information. */
async function assertModel(c: Chain, top: string, openStore: StoreOpener, model: Uint8Array): Promise<void> {
  const got = new Uint8Array(SIZE);
  await c.read(0, got);
  assert.ok(Buffer.compare(got, model) === 0, 'contents while open');
  await c.close();
  // backingFormats: an add-cow over raw says so (add-cow records no backing format); the other formats record theirs.
  const again = await openChain(top, { openStore, readOnly: true, backingFormats: ['raw'] });
  try {
    await again.read(0, got);
    assert.ok(Buffer.compare(got, model) === 0, 'contents after reopening');
    const checked = await again.top.check!({});
    assert.deepEqual(checked.problems.filter((p) => p.severity !== 'info'), [], 'check finds nothing');
  } finally {
    await again.close();
  }
}

async function setup(differencing: boolean): Promise<{ fs: MemoryFs; top: string; model: Uint8Array }> {
  const fs = new MemoryFs();
  const openStore = fs.opener();
  const r = rng(11);
  const model = new Uint8Array(SIZE);
  if (!differencing) {
    await createImage({ path: '/c/top.vhd', format: 'vhd', size: SIZE, options: { force_size: 'on' }, openStore });
    return { fs, top: '/c/top.vhd', model };
  }
  await createImage({ path: '/c/base.vhd', format: 'vhd', size: SIZE, options: { force_size: 'on' }, openStore });
  const base = await openChain('/c/base.vhd', { openStore });
  for (let off = 0; off < SIZE; off += 8 * MiB) {
    const d = randomBytes(r, 3 * MiB);
    await base.write(off, d);
    model.set(d, off);
  }
  await base.close();
  await createImage({ path: '/c/top.vhd', format: 'vhd', backing: { path: 'base.vhd', format: 'vhd' }, openStore });
  return { fs, top: '/c/top.vhd', model };
}

for (const differencing of [false, true]) {
  const kind = differencing ? 'differencing' : 'dynamic';

  test(`${kind} VHD: batches of concurrent disjoint writes read back as a serial model, before and after reopening, and check clean`, async () => {
    const { fs, top, model } = await setup(differencing);
    const openStore = fs.opener();
    const r = rng(differencing ? 3 : 2);
    const c = await openChain(top, { openStore });
    // Many writes share blocks (2 MiB), some cross block ends.
    for (let batch = 0; batch < 12; batch++) {
      await Promise.all(disjointWrites(c, model, r, 600));
      if (batch % 4 === 3) await c.flush();
    }
    await assertModel(c, top, openStore, model);
  });
}

test('dynamic VHD: blocks are placed in the order writes are called, whatever order they land in', async () => {
  const { fs, top } = await setup(false);
  const inner = fs.opener();
  // The first data write issued is the slowest to land.
  let first = true;
  const openStore: StoreOpener = async (path, o) => {
    const s = await inner(path, o);
    if (path !== top) return s;
    return slowed(s, (op) => {
      if (op !== 'write' || !first) return false;
      first = false;
      return true;
    }, 30);
  };
  const c = await openChain(top, { openStore });
  const blocks = [5, 2, 9, 0];
  const landed: number[] = [];
  await Promise.all(blocks.map((b) => c.write(b * 2 * MiB, new Uint8Array(4096).fill(b + 1), { disjoint: true }).then(() => landed.push(b))));
  assert.notDeepEqual(landed, blocks, 'the writes landed out of call order');
  const hosts: number[] = [];
  for (const b of blocks) {
    const [e] = await c.blockStatus(b * 2 * MiB, 4096);
    assert.equal(e!.kind, 'data');
    hosts.push(e!.hostOffset!);
  }
  assert.deepEqual([...hosts].sort((a, b) => a - b), hosts, `host offsets follow call order: ${hosts}`);
  await c.close();
});

test('differencing VHD: a read loading a bitmap cannot undo the bits a concurrent write set', async () => {
  const { fs, top, model } = await setup(true);
  const plain = fs.opener();
  let c = await openChain(top, { openStore: plain });
  const a = new Uint8Array(4096).fill(0xaa);
  await c.write(0, a); // block 0 allocated; its bitmap on disk has sectors 0-7 set
  model.set(a, 0);
  const [e] = await c.top.blockStatus(0, 512);
  const bitmapAt = e!.hostOffset! - 512; // a 2 MiB block has a one-sector bitmap just before its data
  await c.close();

  // Reopen (cold bitmap cache): the first bitmap read is held back while a write to the same block finishes.
  let held = false;
  const openStore: StoreOpener = async (path, o) => {
    const s = await plain(path, o);
    if (path !== top) return s;
    return slowed(s, (op, offset) => {
      if (op !== 'read' || offset !== bitmapAt || held) return false;
      held = true;
      return true;
    }, 40);
  };
  c = await openChain(top, { openStore });
  const readBuf = new Uint8Array(8192);
  const reading = c.read(0, readBuf);
  const b = new Uint8Array(4096).fill(0xbb);
  await c.write(MiB, b, { disjoint: true });
  model.set(b, MiB);
  await reading;
  assert.ok(held, 'the read was the one held back');
  await c.close();

  const again = await openChain(top, { openStore: plain, readOnly: true });
  const got = new Uint8Array(SIZE);
  await again.read(0, got);
  await again.close();
  assert.ok(Buffer.compare(got.subarray(MiB, MiB + 4096), b) === 0, 'the concurrent write survives (its bits were kept)');
  assert.ok(Buffer.compare(got, model) === 0);
});

for (const differencing of [false, true]) {
  const kind = differencing ? 'differencing' : 'dynamic';
  test(`${kind} VHDX: concurrent disjoint writes, many into blocks that already hold data, read back as a serial model and check clean`, async () => {
    const fs = new MemoryFs();
    const openStore = fs.opener();
    const r = rng(differencing ? 21 : 20);
    const model = new Uint8Array(SIZE);
    const top = '/x/top.vhdx';
    if (differencing) {
      await createImage({ path: '/x/base.vhdx', format: 'vhdx', size: SIZE, options: { block_size: '1M' }, openStore });
      const base = await openChain('/x/base.vhdx', { openStore });
      for (let off = 0; off < SIZE; off += 4 * MiB) {
        const d = randomBytes(r, MiB + 4096);
        await base.write(off, d);
        model.set(d, off);
      }
      await base.close();
      await createImage({ path: top, format: 'vhdx', backing: { path: 'base.vhdx', format: 'vhdx' }, options: { block_size: '1M' }, openStore });
    } else await createImage({ path: top, format: 'vhdx', size: SIZE, options: { block_size: '1M' }, openStore });

    const c = await openChain(top, { openStore });
    // Whole 1 MiB blocks first (FULLY_PRESENT), so the batches below mostly write in place beside new allocations.
    for (let b = 0; b < SIZE / MiB; b += 3) {
      const d = randomBytes(r, MiB);
      model.set(d, b * MiB);
      await c.write(b * MiB, d);
    }
    for (let batch = 0; batch < 10; batch++) {
      // A flush issued with the writes still in flight must not return before they land.
      await Promise.all([...disjointWrites(c, model, r, 300), c.flush()]);
    }
    await assertModel(c, top, openStore, model);
  });
}

test('VHDX: flush and close wait for writes landing outside the lock', async () => {
  const fs = new MemoryFs();
  const inner = fs.opener();
  const top = '/y/a.vhdx';
  await createImage({ path: top, format: 'vhdx', size: SIZE, options: { block_size: '1M' }, openStore: inner });
  let c = await openChain(top, { openStore: inner });
  await c.write(0, new Uint8Array(MiB).fill(1)); // block 0 FULLY_PRESENT
  await c.close();
  // 4 KiB writes (the in-place ones below) take 40 ms to land.
  const openStore: StoreOpener = async (path, o) => slowed(await inner(path, o), (op, _offset) => op === 'write', 40);
  c = await openChain(top, { openStore });
  await c.write(8192, new Uint8Array(4096).fill(2)); // the first write also updates the headers; let it finish
  let landed = false;
  const writing = c.write(4096, new Uint8Array(4096).fill(3)).then(() => (landed = true));
  await new Promise((r) => setImmediate(r));
  await c.flush();
  assert.ok(landed, 'flush returned only after the write in flight had landed');
  await writing;
  const tail = c.write(65536, new Uint8Array(4096).fill(4)).then(() => (landed = true));
  landed = false;
  await c.close();
  assert.ok(landed, 'close returned only after the write in flight had landed');
  await tail;
  const again = await openChain(top, { openStore: inner, readOnly: true });
  const got = new Uint8Array(69632);
  await again.read(0, got);
  await again.close();
  assert.ok(got.subarray(4096, 8192).every((x) => x === 3) && got.subarray(65536).every((x) => x === 4));
});

/**
 * Every writable format, alone and over a backing file, with its writes
 * landing in random order (helpers/stores.ts): batches of concurrent
 * disjoint writes, flushes between, then a reopen from what landed must
 * read as the serial model and check clean. (A VHD bitmap sector once
 * took the previous allocation's footer when the two landed the wrong way
 * round; vhd-crash.test.ts has that case on its own.)
 */
for (const format of ['vhd', 'vhdx', 'add-cow'] as const) {
  for (const backed of [false, true]) {
    test(`${format}${backed ? ' over a backing file' : ''}: concurrent writes landing in any order read back as a serial model and check clean`, async () => {
      for (let seed = 1; seed <= 4; seed++) {
        const fs = new MemoryFs();
        const plain = fs.opener();
        const model = new Uint8Array(SIZE);
        const top = `/r/top.${format}`;
        const options: Record<string, string> = format === 'vhd' ? { force_size: 'on' } : {};
        if (backed) {
          const baseFormat = format === 'add-cow' ? 'raw' : format;
          const base = `/r/base.${baseFormat}`;
          await createImage({ path: base, format: baseFormat, size: SIZE, options, openStore: plain });
          const b = await openChain(base, { openStore: plain });
          const r0 = rng(seed);
          for (let off = 0; off < SIZE; off += 8 * MiB) {
            const d = randomBytes(r0, 3 * MiB);
            await b.write(off, d);
            model.set(d, off);
          }
          await b.close();
          await createImage({ path: top, format, backing: { path: `base.${baseFormat}`, format: baseFormat }, openStore: plain });
        } else {
          await createImage({ path: top, format, size: SIZE, options, openStore: plain });
        }
        const r = rng(100 + seed);
        const openStore: StoreOpener = async (path, o) => {
          const s = await plain(path, o);
          return path === top && !o.readOnly ? reordering(s, r) : s;
        };
        const c = await openChain(top, { openStore, backingFormats: ['raw'] });
        for (let batch = 0; batch < 6; batch++) {
          await Promise.all(disjointWrites(c, model, r, 600, MiB));
          if (batch % 3 === 2) await c.flush();
        }
        await assertModel(c, top, plain, model);
      }
    });
  }
}
