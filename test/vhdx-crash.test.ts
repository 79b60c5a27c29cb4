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
import { CrashFs, chainDigest } from './helpers/ops-fixtures.js';
import { DiskFullStore } from './helpers/stores.js';
import { commitImage } from '../src/ops/commit.js';
import { BlockError, isBlockError } from '../src/core/errors.js';
import { openLayer } from '../src/chain/open.js';
import { openFileStore } from '../src/io/file-store.js';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { pyvhdiDigest, requireTool, run, tempDir, vdiskDigest } from './helpers/oracle.js';
import { vdisk } from './helpers/cli.js';
import type { Store, StoreOpener } from '../src/io/store.js';

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
    // The native copier's path (Image.fillBlocks), with the data written through the store here so
    // the crash points cover it: data into slots and in place, then one group commit of every BAT entry.
    name: 'dynamic: a batch of new blocks filled by a copier (fillBlocks), one group commit',
    differencing: false,
    sector: 512,
    op: async (img) => {
      await img.fillBlocks!(async (where) => {
        const blocks = [2, 3, 6, 7];
        for (let k = 0; k < blocks.length; k++) {
          const skip = k === 1 ? 4096 : 0; // a block only partly written: the rest of its fresh space reads as zeros
          await where.store.write(where.base + k * where.stride + skip, randomBytes(rng(20 + k), MiB - skip));
        }
        await where.store.write(where.placeOf(0)! + 8192, randomBytes(rng(30), 4096)); // in place
        return blocks;
      });
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

/*
 * commit into a VHDX parent. Writing the parent changes its DataWriteGuid
 * (2.2.2), which the child names as parent_linkage: without care the child
 * then opens only with --ignore-parent-id. commit first records the
 * parent's next DataWriteGuid in the child as parent_linkage2 (2.6.2.6.3),
 * so at every step the chain opens as it is, and reads the same disk.
 */
const CPARENT = '/c/parent.vhdx';
const CTOP = '/c/top.vhdx';

async function commitChain(): Promise<{ parent: Uint8Array; top: Uint8Array }> {
  const fs = new MemoryFs();
  const openStore = fs.opener();
  await createImage({ path: CPARENT, format: 'vhdx', size: 8 * MiB, options: { block_size: '1M' }, openStore });
  let c = await openChain(CPARENT, { openStore });
  await c.write(0, randomBytes(rng(11), 3 * MiB));
  await c.close();
  await createImage({ path: CTOP, format: 'vhdx', backing: { path: 'parent.vhdx', format: 'vhdx' }, options: { block_size: '1M' }, openStore });
  c = await openChain(CTOP, { openStore });
  await c.write(MiB + 4096, randomBytes(rng(12), 8192));
  await c.write(4 * MiB, randomBytes(rng(13), MiB + 4096));
  await c.close();
  return { parent: fs.files.get(CPARENT)!.bytes(), top: fs.files.get(CTOP)!.bytes() };
}

async function chainSha(openStore: StoreOpener, path = CTOP): Promise<string> {
  // No ignoreParentId: the child must accept its parent as it is.
  return chainDigest(path, { openStore, formats: [vhdxFormat] });
}

async function locatorOf(openStore: StoreOpener): Promise<Record<string, string>> {
  const c = await openChain(CTOP, { openStore, readOnly: true, layerOnly: true });
  try {
    return c.top.info!().specific['parent-locator'] as Record<string, string>;
  } finally {
    await c.close();
  }
}

test('commit into a VHDX parent, crash at every step: the chain opens without --ignore-parent-id and reads the same disk', async (t) => {
  const libvhdi = requireTool(t, 'pyvhdi');
  let libvhdiOpened = 0;
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const files = await commitChain();
  const fs0 = await CrashFs.from({ [CPARENT]: files.parent, [CTOP]: files.top });
  const before = await chainSha(fs0.opener());
  const dry = await fs0.clone();
  dry.used = 0;
  await commitImage({ path: CTOP, keepTop: true, openOptions: { openStore: dry.opener() } });
  const total = dry.used;
  assert.ok(total > 10, `commit did ${total} operations`);
  // Done: the parent holds the disk, and the child names only its final DataWriteGuid.
  assert.equal(await chainSha(dry.opener(), CPARENT), before);
  assert.equal((await locatorOf(dry.opener())).parent_linkage2, undefined, 'parent_linkage2 is dropped once the commit is done');
  let opened = 0;
  for (let k = 0; k < total; k++) {
    const fs = await fs0.clone();
    fs.used = 0;
    fs.budget = k;
    await assert.rejects(commitImage({ path: CTOP, keepTop: true, openOptions: { openStore: fs.opener() } }), (e: unknown) => isBlockError(e, 'io'));
    for (const [mode, seed] of [['durable', 1], ['all', 1], ['subset', 1]] as const) {
      const after = await fs.clone(mode, seed + k);
      assert.equal(await chainSha(after.opener()), before, `crash after ${k} of ${total} operations (${mode} ${seed})`);
      opened++;
      if (mode === 'all' && libvhdi) {
        // libvhdi compares parent_linkage alone: it opens the chain wherever the parent has the DataWriteGuid parent_linkage names.
        const named = (await locatorOf(after.opener())).parent_linkage.replace(/[{}]/g, '').toLowerCase();
        const parentNow = await openLayer(CPARENT, { openStore: after.opener(), readOnly: true, formats: [vhdxFormat] });
        const matches = parentNow.identity === named;
        await parentNow.close();
        writeFileSync(join(tmp.dir, 'top.vhdx'), await after.stores.get(CTOP)!.crashImage('all'));
        writeFileSync(join(tmp.dir, 'parent.vhdx'), await after.stores.get(CPARENT)!.crashImage('all'));
        if (matches) {
          assert.equal(pyvhdiDigest([join(tmp.dir, 'top.vhdx'), join(tmp.dir, 'parent.vhdx')]).digest, before, `crash after ${k}: libvhdi reads the same disk`);
          libvhdiOpened++;
        }
      }
    }
    // And the commit, run again on what the crash left, completes (every fourth point: a whole commit each).
    if (k % 4 !== 0) continue;
    const again = await fs.clone('durable');
    await commitImage({ path: CTOP, keepTop: true, openOptions: { openStore: again.opener() } });
    assert.equal(await chainSha(again.opener(), CPARENT), before, `crash after ${k}: commit again`);
  }
  assert.equal(opened, total * 3);
  // Only the crash points before the parent's first write (its DataWriteGuid not yet changed) are closed to libvhdi.
  if (libvhdi) assert.ok(libvhdiOpened >= total - 6, `libvhdi opened the chain after ${libvhdiOpened} of ${total} crash points`);
  t.diagnostic(`libvhdi opened the chain after ${libvhdiOpened} of ${total} crash points`);
});

test('commit into a VHDX parent on a full disk, at every write: the chain opens without --ignore-parent-id and reads the same disk', async () => {
  const files = await commitChain();
  const route = (parent: Store, top: MemoryStore): StoreOpener => async (path) => (path === CPARENT ? parent : top);
  const before = await chainSha(route(new MemoryStore(CPARENT, files.parent), new MemoryStore(CTOP, files.top)));
  const dry = new DiskFullStore(CPARENT, files.parent);
  await commitImage({ path: CTOP, keepTop: true, openOptions: { openStore: route(dry, new MemoryStore(CTOP, files.top)) } });
  const writes = dry.writeCount;
  let failed = 0;
  for (let k = 0; k < writes; k++) {
    const parent = new DiskFullStore(CPARENT, files.parent, k);
    const top = new MemoryStore(CTOP, files.top);
    const error = await commitImage({ path: CTOP, keepTop: true, openOptions: { openStore: route(parent, top) } }).then(() => undefined, (e: unknown) => e);
    if (parent.failed) {
      failed++;
      assert.ok(isBlockError(error, 'io') && /no space left/.test(error.message), `full at write ${k}: ${String(error)}`);
    }
    assert.equal(await chainSha(route(new MemoryStore(CPARENT, parent.bytes()), new MemoryStore(CTOP, top.bytes()))), before, `full at write ${k} of ${writes}`);
  }
  assert.ok(failed > 0);
});

test('a VHDX commit stopped by an error: vdisk, libvhdi and qemu-img open the files, the child names the parent as it is', async (t) => {
  if (!requireTool(t, 'pyvhdi') || !requireTool(t, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  try {
    const parent = join(dir, 'parent.vhdx');
    const top = join(dir, 'top.vhdx');
    await createImage({ path: parent, format: 'vhdx', size: 8 * MiB, options: { block_size: '1M' } });
    let c = await openChain(parent);
    await c.write(0, randomBytes(rng(21), 2 * MiB));
    await c.close();
    await createImage({ path: top, format: 'vhdx', backing: { path: 'parent.vhdx', format: 'vhdx' }, options: { block_size: '1M' } });
    c = await openChain(top);
    await c.write(3 * MiB + 4096, randomBytes(rng(22), 8192));
    await c.write(5 * MiB + 512, randomBytes(rng(23), 4096));
    await c.close();
    const before = await vdiskDigest(top);
    assert.equal(pyvhdiDigest([top, parent]).digest, before.digest, 'libvhdi reads the chain before the commit');
    // The parent's disk fills after a few writes: the commit stops with the parent's DataWriteGuid changed.
    let writes = 0;
    const openStore: StoreOpener = async (path, o) => {
      const s = await openFileStore(path, o);
      if (path !== parent || o.readOnly) return s;
      return new Proxy(s, {
        get(target, k, recv) {
          if (k === 'write' || k === 'writev') {
            const f = Reflect.get(target, k, recv) as (...a: unknown[]) => Promise<void>;
            return async (...a: unknown[]) => {
              if (++writes > 4) throw new BlockError('io', 'no space left on device', { path });
              return f.apply(target, a);
            };
          }
          const v = Reflect.get(target, k, recv);
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
    };
    await assert.rejects(commitImage({ path: top, keepTop: true, openOptions: { openStore } }), /no space left/);
    // After the error the child names the parent as it now is, with no second identity left.
    const child = await openLayer(top, { readOnly: true });
    const loc = child.info!().specific['parent-locator'] as Record<string, string>;
    await child.close();
    const p = await openLayer(parent, { readOnly: true });
    assert.equal(loc.parent_linkage2, undefined);
    assert.equal(loc.parent_linkage.replace(/[{}]/g, '').toLowerCase(), p.identity, 'the child names the parent\'s new DataWriteGuid');
    await p.close();
    assert.equal((await vdiskDigest(top)).digest, before.digest, 'vdisk opens the chain without --ignore-parent-id');
    assert.equal(vdisk('check', top).status, 0);
    assert.equal(pyvhdiDigest([top, parent]).digest, before.digest, 'libvhdi reads the same disk');
    run('qemu-img', ['check', '-f', 'vhdx', parent]);
  } finally {
    cleanup();
  }
});
