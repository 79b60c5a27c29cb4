import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { openChain, openLayer } from '../src/chain/open.js';
import { createImage } from '../src/ops/create.js';
import { FaultStore } from './helpers/fault-store.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import { vhdxFormat } from '../src/formats/vhdx/index.js';
import type { BackingTarget, Image } from '../src/formats/types.js';
import { pyvhdiDigest, qemuDigest, qemuIo, requireTool, run, tempDir, vdiskDigest } from './helpers/oracle.js';

const MiB = 1 << 20;
const GiB = 1024 * MiB;

function qemuCheckClean(path: string): void {
  const r = run('qemu-img', ['check', '-f', 'vhdx', path], { allowFail: true });
  assert.equal(r.status, 0, `qemu-img check: ${r.stdout}${r.stderr}`);
}

async function withLayer<T>(path: string, fn: (img: Image) => Promise<T>): Promise<T> {
  const img = await openLayer(path);
  try {
    return await fn(img);
  } finally {
    await img.close();
  }
}

test('resize: grow past the BAT region (the BAT moves), shrink and grow again; qemu-img agrees', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const d = tempDir();
  try {
    const p = join(d.dir, 'r.vhdx');
    await createImage({ path: p, format: 'vhdx', size: 8 * MiB, options: { block_size: '1M' } });
    await withLayer(p, (i) => i.write(MiB, new Uint8Array(MiB).fill(0x11)));
    // 1 MiB blocks: a 1 MiB BAT region holds 131072 entries = 128 GiB; 130 GiB needs a new one.
    await withLayer(p, async (i) => {
      await i.resize!(130 * GiB, {});
      assert.equal(i.size, 130 * GiB);
      await i.write(130 * GiB - MiB, new Uint8Array(MiB).fill(0x22));
    });
    qemuCheckClean(p);
    qemuIo('vhdx', p, `read -P 0x11 ${MiB} ${MiB}`, `read -P 0x22 ${130 * GiB - MiB} ${MiB}`, `read -P 0 ${2 * MiB} ${MiB}`);
    const c = await openChain(p, { readOnly: true });
    assert.equal(c.size, 130 * GiB);
    const got = new Uint8Array(MiB);
    await c.read(130 * GiB - MiB, got);
    assert.ok(got.every((x) => x === 0x22));
    await c.close();

    // Shrink into the middle of a block, then grow: the old tail must read as zeros.
    const s = join(d.dir, 's.vhdx');
    await createImage({ path: s, format: 'vhdx', size: 8 * MiB, options: { block_size: '1M' } });
    await withLayer(s, (i) => i.write(0, new Uint8Array(8 * MiB).fill(0x33)));
    await withLayer(s, async (i) => {
      await assert.rejects(i.resize!(2 * MiB, {}));
      await i.resize!(2 * MiB + 4096, { shrink: true });
    });
    await withLayer(s, (i) => i.resize!(6 * MiB, {}));
    qemuCheckClean(s);
    assert.deepEqual(await vdiskDigest(s), await qemuDigest(s, 'vhdx'));
    const c2 = await openChain(s, { readOnly: true });
    const all = new Uint8Array(6 * MiB);
    await c2.read(0, all);
    assert.ok(all.subarray(0, 2 * MiB + 4096).every((x) => x === 0x33));
    assert.ok(all.subarray(2 * MiB + 4096).every((x) => x === 0));
    await c2.close();

    // A fixed disk stays fully allocated when it grows.
    const f = join(d.dir, 'f.vhdx');
    await createImage({ path: f, format: 'vhdx', size: 4 * MiB, options: { subformat: 'fixed', block_size: '1M' } });
    await withLayer(f, (i) => i.resize!(7 * MiB, {}));
    qemuCheckClean(f);
    const c3 = await openChain(f, { readOnly: true });
    assert.deepEqual((await c3.blockStatus(0, 7 * MiB)).map((e) => e.kind), ['data']);
    await c3.close();
    assert.deepEqual(await vdiskDigest(f), await qemuDigest(f, 'vhdx'));
  } finally {
    d.cleanup();
  }
});

test('setBacking rewrites the parent locator (moved when it grows); libvhdi reads the rebased chain', async (t) => {
  if (!requireTool(t, 'pyvhdi')) return;
  const d = tempDir();
  try {
    const p1 = join(d.dir, 'p1.vhdx');
    const far = join(d.dir, 'a-much-longer-folder-name-so-the-locator-grows'.repeat(3));
    mkdirSync(far);
    const p2 = join(far, 'p2.vhdx');
    const child = join(d.dir, 'c.vhdx');
    for (const p of [p1, p2]) {
      await createImage({ path: p, format: 'vhdx', size: 6 * MiB, options: { block_size: '1M' } });
      await withLayer(p, (i) => i.write(0, new Uint8Array(6 * MiB).fill(p === p1 ? 1 : 2)));
    }
    await createImage({ path: child, format: 'vhdx', backing: { path: 'p1.vhdx' } });
    await withLayer(child, (i) => i.write(MiB + 512, new Uint8Array(1024).fill(9)));
    const parent = await openLayer(p2, { readOnly: true });
    const target: BackingTarget = { path: p2, absolutePath: p2, format: 'vhdx', size: parent.size, identity: parent.identity, image: parent, mtime: new Date() };
    await withLayer(child, async (i) => {
      await i.setBacking!(target);
      assert.equal(i.backing!.expectedId, parent.identity);
    });
    await parent.close();
    const c = await openChain(child, { readOnly: true });
    assert.equal(c.layers[1].path, p2);
    await c.close();
    assert.deepEqual(await vdiskDigest(child), pyvhdiDigest([child, p2]));
    await withLayer(p1, async (i) => assert.rejects(i.setBacking!(target), (e: { kind?: string }) => e.kind === 'unsupported'));
  } finally {
    d.cleanup();
  }
});

test('check: clean images are clean; space left by a crash is a leak that repair cuts off', async () => {
  const fs = new MemoryFs();
  const openStore = fs.opener();
  await createImage({ path: '/d/x.vhdx', format: 'vhdx', size: 8 * MiB, options: { block_size: '1M' }, openStore });
  const fresh = await openLayer('/d/x.vhdx', { openStore, readOnly: true });
  assert.deepEqual((await fresh.check!({})).problems, []);
  await fresh.close();
  // Crash after the new block's data is written and flushed but before the log entry: the block leaks.
  const initial = fs.files.get('/d/x.vhdx')!.bytes();
  let leaked: Uint8Array | null = null;
  for (let k = 1; k < 40 && !leaked; k++) {
    const store = new FaultStore('/d/x.vhdx', initial, k);
    try {
      const img = await vhdxFormat.open({ store, path: '/d/x.vhdx', readOnly: false, openStore, options: {} });
      await img.write(3 * MiB, new Uint8Array(4096).fill(5));
      await img.close();
    } catch {
      const bytes = await store.crashImage('durable');
      fs.files.set('/d/x.vhdx', new MemoryStore('/d/x.vhdx', bytes));
      const img = await openLayer('/d/x.vhdx', { openStore, readOnly: true });
      const r = await img.check!({});
      await img.close();
      if (r.problems.some((p) => p.severity === 'leak')) leaked = bytes;
    }
  }
  assert.ok(leaked, 'some crash point leaves a leaked block');
  fs.files.set('/d/x.vhdx', new MemoryStore('/d/x.vhdx', leaked!));
  const img = await openLayer('/d/x.vhdx', { openStore });
  const r = await img.check!({ repair: 'leaks' });
  assert.ok(r.problems.some((p) => p.severity === 'leak' && p.repaired));
  assert.deepEqual((await img.check!({})).problems.filter((p) => p.severity !== 'info'), []);
  await img.close();
});
