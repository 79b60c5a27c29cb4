import { readWholeDisk } from './helpers/oracle.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openChain } from '../src/chain/open.js';
import { FaultStore } from './helpers/fault-store.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import type { Store, StoreOpener } from '../src/io/store.js';
import { createImage } from '../src/ops/create.js';
import { rng, randomBytes } from './helpers/random.js';
import { reordering } from './helpers/stores.js';

/**
 * Crash safety of allocating writes (write order: src/formats/vhd/image.ts).
 * For every mutating operation of "write, then flush", the store crashes at
 * that operation; each disk the crash may leave (only what was flushed,
 * everything, random subsets of the unflushed writes in random order) must
 * open and read, sector by sector, either the old or the new contents.
 */
const MiB = 1 << 20;
const SIZE = 4 * MiB;
const DIR = '/crash';
/** Random subsets tried per crash point: enough that each dangerous reordering (a BAT entry without its bitmap) is drawn. */
const SEEDS = 16;

interface Scenario {
  name: string;
  differencing: boolean;
  /** Unaligned write: partial sectors, an unallocated block and an allocated one. */
  writes: Array<[number, number]>;
  /** Issue all writes at once (sector-aligned, disjoint): several allocations in flight together. */
  concurrent?: boolean;
  /**
   * Instead of writes: one batch through fillBlocks (the native copier's path), the data written
   * through the store here so the crash points cover it: [block, bytes skipped at its start] for new
   * blocks in slot order, then [disk offset, length] written in place into allocated blocks.
   */
  fill?: { blocks: Array<[number, number]>; inPlace: Array<[number, number]> };
}

const SCENARIOS: Scenario[] = [
  { name: 'dynamic: new block + existing block, unaligned', differencing: false, writes: [[MiB - 700, 5000], [3 * MiB + 100, 3000]] },
  { name: 'differencing: new block (partial, parent shows around it) + existing block', differencing: true, writes: [[MiB - 700, 5000], [2 * MiB + 333, 70000]] },
  // Two new blocks, a second write into one of them while its allocation is in flight, and an existing block.
  { name: 'dynamic: concurrent writes, two new blocks', differencing: false, concurrent: true, writes: [[MiB + 4096, 65536], [2 * MiB, 8192], [MiB + 512 * 1024, 4096], [3 * MiB + 8192, 4096]] },
  { name: 'differencing: concurrent writes, two new blocks', differencing: true, concurrent: true, writes: [[0, 4096], [MiB + 1024, 8192], [MiB + 512 * 1024, 512], [2 * MiB + 16384, 4096]] },
  // Whole new blocks: bitmap, data and footer go as one request (writeParts), next to each other in flight.
  { name: 'dynamic: concurrent whole-block writes (bitmap, data and footer in one request)', differencing: false, concurrent: true, writes: [[MiB, MiB], [0, MiB]] },
  { name: 'differencing: whole new block, then one ending at its block end', differencing: true, writes: [[MiB, MiB], [2 * MiB + 4096, MiB - 4096]] },
  { name: 'dynamic: a batch of new blocks filled by a copier (fillBlocks), one partly, and an in-place write', differencing: false, writes: [], fill: { blocks: [[1, 0], [2, 4096]], inPlace: [[65536, 4096]] } },
];

async function prepare(s: Scenario): Promise<{ fs: MemoryFs; top: string }> {
  const fs = new MemoryFs();
  const opener = fs.opener();
  const r = rng(5);
  const base = `${DIR}/base.vhd`;
  await createImage({ path: base, format: 'vhd', size: SIZE, options: { force_size: 'on', block_size: '1M' }, openStore: opener });
  let c = await openChain(base, { openStore: opener });
  await c.write(0, randomBytes(r, SIZE)); // the parent is full of data
  await c.close();
  if (!s.differencing) {
    // Start with blocks 0 (partly) and 3 allocated, 1 and 2 not.
    const fresh = `${DIR}/top.vhd`;
    await createImage({ path: fresh, format: 'vhd', size: SIZE, options: { force_size: 'on', block_size: '1M' }, openStore: opener });
    c = await openChain(fresh, { openStore: opener });
    await c.write(4096, randomBytes(r, 8192));
    await c.write(3 * MiB, randomBytes(r, 4096));
    await c.close();
    return { fs, top: fresh };
  }
  const top = `${DIR}/top.vhd`;
  await createImage({ path: top, format: 'vhd', backing: { path: 'base.vhd', format: 'vhd' }, options: { block_size: '1M' }, openStore: opener });
  c = await openChain(top, { openStore: opener });
  await c.write(2 * MiB + 8192, randomBytes(r, 4096)); // block 2 allocated with a partial bitmap
  await c.close();
  return { fs, top };
}

function opener(fs: MemoryFs, top: string, store: Store): StoreOpener {
  const inner = fs.opener();
  return async (path, o) => (path === top ? store : inner(path, o));
}

function readAll(fs: MemoryFs, top: string, store: Store): Promise<Uint8Array> {
  return readWholeDisk(top, { openStore: opener(fs, top, store), readOnly: true });
}

async function runOp(fs: MemoryFs, top: string, store: Store, s: Scenario): Promise<void> {
  const c = await openChain(top, { openStore: opener(fs, top, store) });
  try {
    const r = rng(99);
    if (s.fill) {
      const { blocks, inPlace } = s.fill;
      await c.top.fillBlocks!(async (w) => {
        for (let k = 0; k < blocks.length; k++) await w.store.write(w.base + k * w.stride + blocks[k][1], randomBytes(r, w.blockSize - blocks[k][1]));
        for (const [off, len] of inPlace) await w.store.write(w.placeOf(Math.floor(off / w.blockSize))! + (off % w.blockSize), randomBytes(r, len));
        return blocks.map(([b]) => b);
      });
    } else if (s.concurrent) await Promise.all(s.writes.map(([off, len]) => c.write(off, randomBytes(r, len), { disjoint: true })));
    else for (const [off, len] of s.writes) await c.write(off, randomBytes(r, len));
    await c.flush();
  } finally {
    await c.close().catch(() => {});
  }
}

for (const s of SCENARIOS) {
  test(`crash at every step of an allocating write: ${s.name}`, async () => {
    const { fs, top } = await prepare(s);
    const initial = fs.files.get(top)!.bytes();
    const oldDisk = await readAll(fs, top, new MemoryStore(top, initial));

    const dry = new FaultStore(top, initial);
    await runOp(fs, top, dry, s);
    const steps = dry.operations;
    const newDisk = await readAll(fs, top, new MemoryStore(top, (await dry.crashImage('all'))));
    assert.ok(steps >= 6, `an allocating write and flush take several steps (${steps})`);
    // Without a crash the disk holds exactly the old contents with the writes applied (the same bytes runOp draws).
    const model = oldDisk.slice();
    const r = rng(99);
    for (const [off, len] of s.writes) model.set(randomBytes(r, len), off);
    for (const [b, skip] of s.fill?.blocks ?? []) model.set(randomBytes(r, MiB - skip), b * MiB + skip);
    for (const [off, len] of s.fill?.inPlace ?? []) model.set(randomBytes(r, len), off);
    assert.ok(equal(newDisk, model), 'without a crash, every write reads back');

    let images = 0;
    for (let k = 0; k <= steps; k++) {
      const fault = new FaultStore(top, initial, k);
      await runOp(fs, top, fault, s).catch((e) => {
        if (!fault.crashed) throw e;
      });
      const candidates: Array<[string, Uint8Array]> = [['durable', await fault.crashImage('durable')], ['all', await fault.crashImage('all')]];
      for (let seed = 1; seed <= SEEDS; seed++) candidates.push([`subset ${seed}`, await fault.crashImage('subset', seed)]);
      for (const [mode, bytes] of candidates) {
        const got = await readAll(fs, top, new MemoryStore(top, bytes));
        for (let off = 0; off < SIZE; off += 512) {
          const g = got.subarray(off, off + 512);
          const ok = equal(g, oldDisk.subarray(off, off + 512)) || equal(g, newDisk.subarray(off, off + 512));
          if (!ok) assert.fail(`crash at step ${k} (${mode}): sector ${off / 512} is neither old nor new`);
        }
        if (mode.startsWith('subset') && mode !== 'subset 1') {
          images++;
          continue;
        }
        // The image stays usable: a read-write open, a write into a new block, and a clean reopen.
        const store = new MemoryStore(top, bytes);
        const c = await openChain(top, { openStore: opener(fs, top, store) });
        await c.write(SIZE - 4096, new Uint8Array(4096).fill(7));
        await c.close();
        const after = await readAll(fs, top, store);
        assert.ok(after.subarray(SIZE - 4096).every((b) => b === 7), `crash at step ${k} (${mode}): write after reopen`);
        assert.deepEqual(after.subarray(0, SIZE - 4096), got.subarray(0, SIZE - 4096));
        images++;
      }
    }
    assert.equal(images, (steps + 1) * (2 + SEEDS));
  });
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

test('allocations in flight together: whatever order their writes land in, every new block keeps its bitmap', async () => {
  for (const differencing of [false, true]) {
    for (let seed = 1; seed <= 40; seed++) {
      const s: Scenario = { name: '', differencing, writes: [] };
      const { fs, top } = await prepare(s);
      const initial = fs.files.get(top)!.bytes();
      const oldDisk = await readAll(fs, top, new MemoryStore(top, initial));
      const target = new MemoryStore(top, initial);
      const store = reordering(target, rng(seed));
      // All at once: a new block written from its first sector (its bitmap goes with
      // the data, over the sector where the allocation before it, still in flight,
      // writes its footer), the allocation before it, and an allocated block.
      // Differencing: one write across the end of new block 0 and the start of new block 1.
      const r = rng(1000 + seed);
      const writes: Array<[number, Uint8Array]> = differencing
        ? [[MiB - 4096, randomBytes(r, 12288)], [3 * MiB - 8192, randomBytes(r, 8192)]]
        : [[MiB + MiB / 2, randomBytes(r, MiB / 2)], [2 * MiB, randomBytes(r, MiB)], [0, randomBytes(r, 4096)]];
      const c = await openChain(top, { openStore: opener(fs, top, store) });
      await Promise.all(writes.map(([off, data]) => c.write(off, data, { disjoint: true })));
      await c.close();
      const model = oldDisk.slice();
      for (const [off, data] of writes) model.set(data, off);
      const got = await readAll(fs, top, new MemoryStore(top, target.bytes()));
      assert.ok(equal(got, model), `${differencing ? 'differencing' : 'dynamic'}, seed ${seed}: the disk reads back`);
      // Every allocated block's bitmap on disk: all set for a dynamic disk.
      const file = target.bytes();
      const view = new DataView(file.buffer, file.byteOffset);
      const table = Number(view.getBigUint64(512 + 16));
      const entries = view.getUint32(512 + 28);
      for (let b = 0; b < entries; b++) {
        const sector = view.getUint32(table + 4 * b);
        if (sector === 0xffffffff || differencing) continue;
        const bits = file.subarray(sector * 512, sector * 512 + 256);
        assert.ok(bits.every((x) => x === 0xff), `dynamic, seed ${seed}: block ${b}'s bitmap is whole (${Buffer.from(bits.subarray(0, 8)).toString('hex')}...)`);
      }
    }
  }
});
