import { readWholeDisk } from './helpers/oracle.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openChain } from '../src/chain/open.js';
import { FaultStore } from './helpers/fault-store.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import { createImage } from '../src/ops/create.js';
import { vhdxFormat } from '../src/formats/vhdx/index.js';
import type { Image } from '../src/formats/types.js';
import { rng, randomBytes } from './helpers/random.js';

const MiB = 1 << 20;
const PARENT = '/d/parent.vhdx';
const TOP = '/d/top.vhdx';

interface Scenario {
  name: string;
  differencing: boolean;
  sector: number;
  /** The write under test, through the layer (whole sectors). */
  op: (img: Image) => Promise<void>;
}

async function setup(s: Scenario): Promise<MemoryFs> {
  const fs = new MemoryFs();
  const openStore = fs.opener();
  const size = 8 * MiB;
  const lss = String(s.sector);
  if (s.differencing) {
    await createImage({ path: PARENT, format: 'vhdx', size, options: { block_size: '1M', logical_sector_size: lss }, openStore });
    const p = await openChain(PARENT, { openStore });
    await p.write(0, randomBytes(rng(1), size));
    await p.close();
    await createImage({ path: TOP, format: 'vhdx', backing: { path: PARENT }, options: { block_size: '1M' }, openStore });
  } else {
    await createImage({ path: TOP, format: 'vhdx', size, options: { block_size: '1M', logical_sector_size: lss }, openStore });
  }
  // Some existing data in the top layer: block 0 (an in-place overwrite target).
  const c = await openChain(TOP, { openStore });
  await c.write(0, randomBytes(rng(2), MiB));
  await c.close();
  return fs;
}

function diskBytes(fs: MemoryFs, readOnly: boolean): Promise<Uint8Array> {
  return readWholeDisk(TOP, { openStore: fs.opener(), readOnly });
}

async function runOp(fs: MemoryFs, bytes: Uint8Array, s: Scenario, failAfter: number): Promise<FaultStore> {
  const store = new FaultStore(TOP, bytes, failAfter);
  try {
    const img = await vhdxFormat.open({ store, path: TOP, readOnly: false, openStore: fs.opener(), options: {} });
    await s.op(img);
    await img.close();
  } catch (e) {
    if (!store.crashed) throw e;
  }
  return store;
}

const scenarios: Scenario[] = [
  {
    name: 'dynamic: allocating write spanning two new blocks plus an in-place overwrite',
    differencing: false,
    sector: 512,
    op: async (img) => {
      await img.write(MiB - 4096, randomBytes(rng(3), 4096 + MiB + 8192)); // block 0 tail, all of block 1, block 2 head
      await img.writeZeroes(5 * MiB, MiB); // whole block -> ZERO state through the log
    },
  },
  {
    name: 'differencing: partial writes (new sector bitmap block, PARTIALLY_PRESENT) and a whole-block write',
    differencing: true,
    sector: 512,
    op: async (img) => {
      await img.write(2 * MiB + 512 * 7, randomBytes(rng(4), 512 * 5));
      await img.write(3 * MiB, randomBytes(rng(5), MiB));
      await img.write(2 * MiB + 8192, randomBytes(rng(6), 4096)); // into the now PARTIALLY_PRESENT block
      await img.writeZeroes(6 * MiB, MiB);
    },
  },
  {
    name: 'differencing with 4096-byte sectors',
    differencing: true,
    sector: 4096,
    op: async (img) => {
      await img.write(4 * MiB + 4096 * 3, randomBytes(rng(7), 4096 * 2));
    },
  },
];

for (const s of scenarios) {
  test(`crash at every mutating operation: ${s.name} — every sector reads old or new`, async () => {
    const fs = await setup(s);
    const initial = fs.files.get(TOP)!.bytes();
    const oldDisk = await diskBytes(fs, true);
    const full = await runOp(fs, initial, s, Infinity);
    const total = full.operations;
    fs.files.set(TOP, new MemoryStore(TOP, await full.crashImage('all')));
    const newDisk = await diskBytes(fs, true);
    assert.ok(total > 8, `the operation has ${total} steps`);
    assert.notDeepEqual(oldDisk, newDisk);
    const sector = s.sector;
    let checked = 0;
    for (let k = 0; k < total; k++) {
      const crashed = await runOp(fs, initial, s, k);
      assert.ok(crashed.crashed);
      for (const mode of ['durable', 'all', 'subset1', 'subset2', 'subset3'] as const) {
        const image = mode === "durable" || mode === "all" ? await crashed.crashImage(mode) : await crashed.crashImage("subset", Number(mode.slice(6)) + k * 7);
        for (const readOnly of [true, false]) {
          fs.files.set(TOP, new MemoryStore(TOP, image));
          const got = await diskBytes(fs, readOnly);
          for (let o = 0; o < got.length; o += sector) {
            const g = got.subarray(o, o + sector);
            const isOld = Buffer.compare(g, oldDisk.subarray(o, o + sector)) === 0;
            if (!isOld && Buffer.compare(g, newDisk.subarray(o, o + sector)) !== 0) {
              assert.fail(`crash after ${k} of ${total} operations (${mode}, ${readOnly ? 'read-only' : 'read-write'} reopen): sector at ${o} is neither old nor new`);
            }
          }
          checked++;
        }
        // A read-only reopen must not change the crashed file.
        fs.files.set(TOP, new MemoryStore(TOP, image));
        await diskBytes(fs, true);
        assert.deepEqual(fs.files.get(TOP)!.bytes(), image);
      }
    }
    assert.ok(checked >= total * 10);
  });
}
