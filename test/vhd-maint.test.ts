import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { openChain, openLayer } from '../src/chain/open.js';
import { createImage, describeBacking } from '../src/ops/create.js';
import { openFileStore } from '../src/io/file-store.js';
import { FaultStore } from './helpers/fault-store.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import type { StoreOpener } from '../src/io/store.js';
import { vhdFormat } from '../src/formats/vhd/index.js';
import { requireTool, tempDir, run, vdiskDigest, sha256 } from './helpers/oracle.js';
import { rng, randomBytes } from './helpers/random.js';

const MiB = 1 << 20;

async function writeAt(path: string, off: number, data: Uint8Array, ref?: Uint8Array, openStore?: StoreOpener): Promise<void> {
  const c = await openChain(path, { openStore });
  await c.write(off, data);
  ref?.set(data, off);
  await c.close();
}

test('check: a block leaked by a crash is reported and given back with repair; a damaged end footer is rewritten', async () => {
  const fs = new MemoryFs();
  await createImage({ path: '/m/a.vhd', format: 'vhd', size: 8 * MiB, options: { force_size: 'on' }, openStore: fs.opener() });
  await writeAt('/m/a.vhd', 0, new Uint8Array(4096).fill(3), undefined, fs.opener());
  const before = fs.files.get('/m/a.vhd')!.bytes();
  // Crash after the new footer and the data of an allocating write reached the disk, before any BAT update.
  const fault = new FaultStore('/m/a.vhd', before, 2);
  const img = await vhdFormat.open({ store: fault, path: '/m/a.vhd', readOnly: false, openStore: fs.opener(), options: {} });
  await img.write(4 * MiB, new Uint8Array(4096).fill(9)).then(() => img.flush()).catch(() => {});
  const crashed = new MemoryStore('/m/a.vhd', await fault.crashImage('all'));
  fs.files.set('/m/a.vhd', crashed);
  const crashedBytes = crashed.bytes();
  // A read-only open reports the leak and writes nothing.
  let layer = await openLayer('/m/a.vhd', { openStore: fs.opener(), readOnly: true });
  const r1 = await layer.check!({});
  assert.deepEqual(r1.problems.map((p) => p.severity), ['leak']);
  assert.match(r1.problems[0].message, /writable open or check -r leaks gives them back/);
  await layer.close();
  assert.deepEqual(crashed.bytes(), crashedBytes, 'a read-only open never writes');
  // A writable open gives the space back before anything else; its check reports the leak repaired, once.
  layer = await openLayer('/m/a.vhd', { openStore: fs.opener() });
  assert.equal((await crashed.size()), before.length, 'the file is back to its size before the crash');
  const r2 = await layer.check!({ repair: 'leaks' });
  assert.deepEqual(r2.problems.map((p) => [p.severity, p.repaired]), [['leak', true]]);
  assert.match(r2.problems[0].message, /given back when the image was opened writable/);
  assert.deepEqual((await layer.check!({})).problems, []);
  await layer.close();
  layer = await openLayer('/m/a.vhd', { openStore: fs.opener() });
  assert.deepEqual((await layer.check!({})).problems, []);
  await layer.close();

  // Damaged end footer: opens from the copy, check reports, repair 'all' rewrites it.
  const b = crashed.bytes();
  b[b.length - 512] ^= 0xff;
  fs.files.set('/m/a.vhd', new MemoryStore('/m/a.vhd', b));
  layer = await openLayer('/m/a.vhd', { openStore: fs.opener() });
  assert.equal((await layer.check!({})).problems[0].severity, 'corruption');
  assert.equal((await layer.check!({ repair: 'all' })).problems[0].repaired, true);
  await layer.close();
  layer = await openLayer('/m/a.vhd', { openStore: fs.opener(), readOnly: true });
  assert.doesNotMatch(String(layer.info().specific.warnings), /damaged/);
  const got = new Uint8Array(4096);
  await layer.read(0, got);
  assert.ok(got.every((x) => x === 3));
  await layer.close();
});

for (const subformat of ['dynamic', 'fixed']) {
  test(`resize ${subformat}: grow (moving the BAT when it is too small), shrink only when asked; qemu-img agrees`, async (t) => {
    const d = tempDir();
    try {
      const path = join(d.dir, 'r.vhd');
      await createImage({ path, format: 'vhd', size: 6 * MiB, options: { subformat, force_size: 'on' } });
      const ref = new Uint8Array(24 * MiB);
      const r = rng(4);
      await writeAt(path, 5 * MiB, randomBytes(r, MiB), ref);
      let img = await openLayer(path);
      await img.resize!(24 * MiB, {}); // 3 -> 12 blocks: the BAT (one sector, 128 entries) has room; sizes past it move it below
      await img.close();
      await writeAt(path, 20 * MiB - 100 * 512, randomBytes(r, 200 * 512), ref);
      img = await openLayer(path);
      await assert.rejects(img.resize!(4 * MiB, {}), /shrink/);
      await img.resize!(300 * MiB, {}); // 150 blocks: more than one BAT sector holds
      await img.close();
      const big = new Uint8Array(300 * MiB);
      big.set(ref);
      assert.equal((await vdiskDigest(path)).digest, sha256(big));
      img = await openLayer(path);
      await img.resize!(5 * MiB + 512, { shrink: true });
      await img.resize!(8 * MiB, {});
      await img.close();
      const expect = new Uint8Array(8 * MiB);
      expect.set(ref.subarray(0, 5 * MiB + 512));
      assert.equal((await vdiskDigest(path)).digest, sha256(expect), 'the grown part after a shrink reads as zeros');
      if (requireTool(t, 'qemu-img')) {
        const rawPath = join(d.dir, 'ref.raw');
        writeFileSync(rawPath, expect);
        // qemu-img takes the size of this force_size image from CHS (smaller); compare that much.
        const cmp = run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', path, rawPath], { allowFail: true });
        assert.ok(cmp.status === 0 || /size mismatch/i.test(cmp.stdout + cmp.stderr), cmp.stdout + cmp.stderr);
        assert.doesNotMatch(cmp.stdout, /Content mismatch/);
      }
      const layer = await openLayer(path, { readOnly: true });
      assert.equal((await layer.check!({})).problems.filter((p) => p.severity === 'corruption').length, 0);
      await layer.close();
    } finally {
      d.cleanup();
    }
  });
}

test('setBacking rewrites parent UUID, time stamp, unicode name and locators; the chain then resolves the new parent', async () => {
  const d = tempDir();
  try {
    const a = join(d.dir, 'a.vhd');
    await createImage({ path: a, format: 'vhd', size: 4 * MiB, options: { force_size: 'on' } });
    await writeAt(a, 0, new Uint8Array(MiB).fill(5));
    const child = join(d.dir, 'child.vhd');
    await createImage({ path: child, format: 'vhd', backing: { path: 'a.vhd', format: 'vhd' } });
    await writeAt(child, 512, new Uint8Array(512).fill(6));
    const b = join(d.dir, 'sub', 'b.vhd');
    run('mkdir', ['-p', join(d.dir, 'sub')]);
    copyFileSync(a, b);
    const before = await vdiskDigest(child);
    const target = await describeBacking(child, { path: 'sub/b.vhd', format: 'vhd' }, openFileStore);
    const img = await openLayer(child);
    await img.setBacking!(target.target);
    await target.close();
    await img.close();
    const chain = await openChain(child, { readOnly: true });
    assert.equal(chain.layers[1].path, b);
    const info = chain.top.info().specific.parent as { 'unicode-name': string; locators: Array<{ platform: string; path: string }>; timestamp: string };
    assert.equal(info['unicode-name'], 'b.vhd');
    assert.deepEqual(info.locators.map((l) => [l.platform, l.path]), [['W2ku', b], ['W2ru', '.\\sub\\b.vhd']]);
    assert.equal(Math.floor(new Date(info.timestamp).getTime() / 1000), Math.floor(statSync(b).mtimeMs / 1000));
    await chain.close();
    assert.deepEqual(await vdiskDigest(child), before);
    const layer = await openLayer(child, { readOnly: true });
    assert.equal((await layer.check!({})).problems.filter((p) => p.severity === 'corruption').length, 0);
    await layer.close();
  } finally {
    d.cleanup();
  }
});
