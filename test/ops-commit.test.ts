import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BlockError } from '../src/core/errors.js';
import { openChain, type ChainOpenOptions } from '../src/chain/open.js';
import { commitImage } from '../src/ops/commit.js';
import { compareImages } from '../src/ops/compare.js';
import { TOY_FORMATS } from './helpers/toy-format.js';
import { COW_FORMATS, CrashFs, chainDigest } from './helpers/ops-fixtures.js';
import { vdisk } from './helpers/cli.js';
import { pyvhdiDigest, qemuDigest, qemuImg, qemuIo, requireTool, tempDir, vdiskDigest } from './helpers/oracle.js';

const MiB = 1 << 20;
const kind = (k: string) => (e: unknown) => e instanceof BlockError && e.kind === k;

function pattern(size: number, seed: number): Uint8Array {
  return new Uint8Array(size).map((_, i) => (i * seed + (i >> 9)) & 0xff);
}

/** base.raw <- mid.toy <- top.toy, each upper layer holding data and zeroed ranges of its own. */
async function threeLayers(): Promise<CrashFs> {
  const fs = await CrashFs.from({
    '/d/base.raw': pattern(MiB, 7),
    '/d/mid.toy': { size: MiB, id: 2, backing: 'base.raw', backingFormat: 'raw' },
    '/d/top.toy': { size: MiB, id: 3, backing: 'mid.toy', backingFormat: 'toy' },
  });
  const opts = { openStore: fs.opener(), formats: COW_FORMATS };
  const mid = await openChain('/d/mid.toy', opts);
  await mid.write(100_000, pattern(70_000, 3));
  await mid.writeZeroes(600_000, 20_000);
  await mid.flush();
  await mid.close();
  const top = await openChain('/d/top.toy', opts);
  await top.write(150_000, pattern(100_000, 5)); // overlaps mid's data
  await top.write(900_000, pattern(3_000, 11)); // unaligned: copy-up
  await top.writeZeroes(300_000, 40_000); // zeros over the base's data
  await top.flush();
  await top.close();
  return fs;
}

const optsFor = (fs: CrashFs, formats = COW_FORMATS): ChainOpenOptions => ({ openStore: fs.opener(), formats });

test('commit into the direct backing: content unchanged, base holds the disk, top emptied', async () => {
  const fs = await threeLayers();
  const opts = optsFor(fs);
  const before = await chainDigest('/d/top.toy', opts);
  const midView = await chainDigest('/d/mid.toy', opts);
  const r = await commitImage({ path: '/d/top.toy', openOptions: opts });
  assert.equal(r.base, '/d/mid.toy');
  assert.equal(r.emptied, true);
  assert.deepEqual(r.invalidated, []);
  assert.equal(await chainDigest('/d/top.toy', opts), before);
  // mid (with base below it) now shows the whole disk by itself.
  assert.equal(await chainDigest('/d/mid.toy', opts), before);
  assert.notEqual(midView, before);
  const top = await openChain('/d/top.toy', { ...opts, layerOnly: true });
  assert.deepEqual((await top.top.blockStatus(0, MiB)).map((e) => e.kind), ['unallocated']);
  await top.close();
});

test('commit -d keeps the top layer as it was', async () => {
  const fs = await threeLayers();
  const opts = optsFor(fs);
  const topBytes = (await fs.stores.get('/d/top.toy')!.crashImage('all')).slice();
  const before = await chainDigest('/d/top.toy', opts);
  const r = await commitImage({ path: '/d/top.toy', keepTop: true, openOptions: opts });
  assert.equal(r.emptied, false);
  assert.deepEqual(await fs.stores.get('/d/top.toy')!.crashImage('all'), topBytes);
  assert.equal(await chainDigest('/d/mid.toy', opts), before);
});

test('commit -b BASE through an intermediate layer: top re-pointed at BASE and emptied, the middle reported invalid', async () => {
  const fs = await threeLayers();
  const opts = optsFor(fs);
  const before = await chainDigest('/d/top.toy', opts);
  const r = await commitImage({ path: '/d/top.toy', base: '/d/base.raw', openOptions: opts });
  assert.equal(r.base, '/d/base.raw');
  assert.equal(r.relinked, true);
  assert.equal(r.emptied, true);
  assert.deepEqual(r.invalidated, ['/d/mid.toy']);
  const c = await openChain('/d/top.toy', opts);
  assert.deepEqual(c.layers.map((l) => l.path), ['/d/top.toy', '/d/base.raw']);
  await c.close();
  assert.equal(await chainDigest('/d/top.toy', opts), before);
  assert.equal(await chainDigest('/d/base.raw', opts), before);
});

test('commit -b without a way to re-point the top keeps the top (like qemu-img: -b implies -d)', async () => {
  const fs = await threeLayers();
  const opts = optsFor(fs, TOY_FORMATS); // the plain toy format has no setBacking
  const before = await chainDigest('/d/top.toy', opts);
  const r = await commitImage({ path: '/d/top.toy', base: '/d/base.raw', openOptions: opts });
  assert.equal(r.relinked, false);
  assert.equal(r.emptied, false);
  assert.match(r.notes.join(' '), /-b implies -d/);
  assert.equal(await chainDigest('/d/top.toy', opts), before);
  assert.equal(await chainDigest('/d/base.raw', opts), before);
});

test('bad input: no backing, BASE not in the chain, read-only or missing base; the disk is unchanged', async () => {
  const fs = await threeLayers();
  const opts = optsFor(fs);
  const before = await chainDigest('/d/top.toy', opts);
  await assert.rejects(commitImage({ path: '/d/base.raw', openOptions: opts }), kind('invalid-argument'));
  await assert.rejects(commitImage({ path: '/d/top.toy', base: '/d/other.raw', openOptions: opts }), (e: unknown) => kind('not-found')(e) && /not in the backing chain/.test((e as Error).message));
  await assert.rejects(commitImage({ path: '/d/top.toy', base: '/d/top.toy', openOptions: opts }), kind('invalid-argument'));
  // A base on a read-only medium: the open for writing is refused before anything is written.
  const inner = fs.opener();
  const roOpener: typeof inner = async (p, o) => {
    if (p === '/d/mid.toy' && !o.readOnly) throw new BlockError('read-only', 'read-only file system', { path: p });
    return inner(p, o);
  };
  const used = fs.used;
  await assert.rejects(commitImage({ path: '/d/top.toy', openOptions: { ...opts, openStore: roOpener } }), kind('read-only'));
  assert.equal(fs.used, used, 'nothing was written');
  // A missing base.
  const gone = await fs.clone();
  gone.stores.delete('/d/base.raw');
  await assert.rejects(commitImage({ path: '/d/top.toy', openOptions: optsFor(gone) }), kind('not-found'));
  assert.equal(await chainDigest('/d/top.toy', opts), before);
});

test('crash at every step of commit (with and without -b): every file opens and the disk is unchanged', async () => {
  for (const base of [undefined, '/d/base.raw']) {
    const fs0 = await threeLayers();
    const before = await chainDigest('/d/top.toy', optsFor(fs0));
    // Count the mutating operations of a full commit.
    const dry = await fs0.clone();
    dry.used = 0;
    await commitImage({ path: '/d/top.toy', base, openOptions: optsFor(dry) });
    const total = dry.used;
    assert.ok(total > 5, `commit did ${total} operations`);
    for (let k = 0; k < total; k++) {
      const fs = await fs0.clone();
      fs.used = 0;
      fs.budget = k;
      await assert.rejects(commitImage({ path: '/d/top.toy', base, openOptions: optsFor(fs) }), kind('io'));
      for (const [mode, seed] of [['durable', 1], ['all', 1], ['subset', 1], ['subset', 2], ['subset', 3]] as const) {
        const after = await fs.clone(mode, seed + k);
        const o = optsFor(after);
        assert.equal(await chainDigest('/d/top.toy', o), before, `crash after ${k} of ${total} operations (${mode} ${seed}), base ${base ?? 'default'}`);
        for (const p of ['/d/mid.toy', '/d/base.raw']) await (await openChain(p, { ...o, layerOnly: true })).close();
      }
    }
  }
});

test('VHD: commit a differencing disk into its parent; qemu-img and libvhdi agree on the result', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'pyvhdi')) return;
  const { dir, cleanup } = tempDir();
  try {
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    qemuImg('create', '-f', 'vpc', '-o', 'subformat=dynamic', base, '8M');
    qemuIo('vpc', base, 'write -P 0x5a 0 3M', 'write -P 0x11 5M 1M');
    let r = vdisk('create', '-f', 'vhd', '-b', 'base.vhd', child);
    assert.equal(r.status, 0, r.stderr);
    r = vdisk('io', '-c', 'write -P 0x77 1M 2M', '-c', 'write -z 5M 4096', '-c', 'write -P 0x42 7340000 3000', child);
    assert.equal(r.status, 0, r.stderr);
    const before = await vdiskDigest(child);
    assert.equal(pyvhdiDigest([child, base]).digest, before.digest);
    r = vdisk('commit', child);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Image committed/);
    assert.equal((await vdiskDigest(child)).digest, before.digest);
    assert.equal((await vdiskDigest(base)).digest, before.digest);
    assert.equal((await qemuDigest(base, 'vpc')).digest, before.digest);
    assert.equal(pyvhdiDigest([child, base]).digest, before.digest);
    assert.equal(pyvhdiDigest([base]).digest, before.digest);
    assert.equal((await compareImages(child, base)).identical, true);
  } finally {
    cleanup();
  }
});

test('CLI commit: errors are one line, the chain unchanged', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const raw = join(dir, 'a.raw');
    vdisk('create', '-f', 'raw', raw, '1M');
    const r = vdisk('commit', raw);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^vdisk: image has no backing file/);
    const missing = vdisk('commit', join(dir, 'nope.vhd'));
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /^vdisk: /);
  } finally {
    cleanup();
  }
});

test('commit -t unsafe: every file written is opened without syncs (qemu-img cache=unsafe), the default syncs; the same disk either way', async () => {
  for (const cache of [undefined, 'writeback', 'unsafe'] as const) {
    const fs = await threeLayers();
    const opts = optsFor(fs);
    const before = await chainDigest('/d/top.toy', opts);
    const writable: (boolean | undefined)[] = [];
    const inner = fs.opener();
    const openStore: ChainOpenOptions['openStore'] = (p, o) => {
      if (!o.readOnly) writable.push(o.noSync);
      return inner(p, o);
    };
    const r = await commitImage({ path: '/d/top.toy', cache, openOptions: { ...opts, openStore } });
    assert.equal(r.emptied, true);
    assert.ok(writable.length >= 2, 'the base and the top are opened for writing');
    assert.deepEqual(new Set(writable), new Set([cache === 'unsafe' ? true : undefined]), `cache ${cache}`);
    assert.equal(await chainDigest('/d/top.toy', opts), before);
    assert.equal(await chainDigest('/d/mid.toy', opts), before);
  }
  const fs = await threeLayers();
  await assert.rejects(commitImage({ path: '/d/top.toy', cache: 'none' as 'unsafe', openOptions: optsFor(fs) }), kind('invalid-argument'));
});

test('CLI commit -t unsafe into a VHD parent: qemu-img reads the same disk; a bad mode is refused', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  try {
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    qemuImg('create', '-f', 'vpc', '-o', 'subformat=dynamic', base, '8M');
    qemuIo('vpc', base, 'write -P 0x5a 0 3M');
    let r = vdisk('create', '-f', 'vhd', '-b', 'base.vhd', child);
    assert.equal(r.status, 0, r.stderr);
    r = vdisk('io', '-c', 'write -P 0x77 2M 4M', child);
    assert.equal(r.status, 0, r.stderr);
    const before = await vdiskDigest(child);
    r = vdisk('commit', '-t', 'none', child);
    assert.equal(r.status, 2); // a usage error
    r = vdisk('commit', '-q', '-d', '-t', 'unsafe', child);
    assert.equal(r.status, 0, r.stderr);
    assert.equal((await qemuDigest(base, 'vpc')).digest, before.digest);
    assert.equal((await vdiskDigest(child)).digest, before.digest);
  } finally {
    cleanup();
  }
});
