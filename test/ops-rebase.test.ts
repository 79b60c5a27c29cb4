import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BlockError } from '../src/core/errors.js';
import { openChain, type ChainOpenOptions } from '../src/chain/open.js';
import { rebaseImage } from '../src/ops/rebase.js';
import { COW_FORMATS, CrashFs, chainDigest } from './helpers/ops-fixtures.js';
import { vdisk } from './helpers/cli.js';
import { REPO_ROOT } from './helpers/corpus.js';
import { qemuDigest, qemuImg, qemuIo, RAW_BACKING, requireTool, run, tempDir, vdiskDigest } from './helpers/oracle.js';

const MiB = 1 << 20;
const kind = (k: string) => (e: unknown) => e instanceof BlockError && e.kind === k;
const optsFor = (fs: CrashFs): ChainOpenOptions => ({ openStore: fs.opener(), formats: COW_FORMATS });

function pattern(size: number, seed: number): Uint8Array {
  return new Uint8Array(size).map((_, i) => (i * seed + (i >> 9)) & 0xff);
}

/** old.raw and new.raw differ in a few places; top.toy (over old.raw) holds data of its own. */
async function setup(sameSize = false): Promise<CrashFs> {
  const old = pattern(MiB, 7);
  const neu = old.slice();
  neu.fill(0x99, 10_000, 80_000); // differs where the top defers to its backing
  neu.fill(0x55, 200_000, 220_000); // differs where the top has its own data
  neu.fill(0, 500_000, 700_000); // the new backing is zero where the old one has data
  old.fill(0, 800_000, 900_000);
  neu.fill(0x31, 800_000, 900_000); // the old one is zero where the new one has data
  const fs = await CrashFs.from({
    '/d/old.raw': old,
    '/d/new.raw': neu,
    '/d/big.raw': pattern(2 * MiB, 7),
    '/d/top.toy': { size: MiB, id: 3, backing: 'old.raw', backingFormat: 'raw', sameSize },
  });
  const c = await openChain('/d/top.toy', optsFor(fs));
  await c.write(190_000, pattern(50_000, 13));
  await c.writeZeroes(400_000, 10_000);
  await c.flush();
  await c.close();
  return fs;
}

const backingOf = async (fs: CrashFs) => {
  const c = await openChain('/d/top.toy', optsFor(fs));
  try {
    return c.layers.slice(1).map((l) => l.path);
  } finally {
    await c.close();
  }
};

test('safe rebase copies exactly the differing ranges: the disk is unchanged, now over the new backing', async () => {
  const fs = await setup();
  const before = await chainDigest('/d/top.toy', optsFor(fs));
  const r = await rebaseImage({ path: '/d/top.toy', backing: { path: 'new.raw', format: 'raw' }, openOptions: optsFor(fs), bufferSize: 256 * 1024 });
  assert.deepEqual(await backingOf(fs), ['/d/new.raw']);
  assert.equal(await chainDigest('/d/top.toy', optsFor(fs)), before);
  // Differences where the top defers: 70 000 + 200 000 bytes of data (in 64 KiB granules); zeros are recorded, not copied.
  assert.ok(r.copied >= 270_000 && r.copied <= 270_000 + 4 * 65536, `copied ${r.copied}`);
});

test('rebase -u rewrites only the reference; -b "" flattens', async () => {
  const fs = await setup();
  const newDigest = await chainDigest('/d/new.raw', optsFor(fs));
  const before = await chainDigest('/d/top.toy', optsFor(fs));
  let r = await rebaseImage({ path: '/d/top.toy', backing: { path: 'new.raw', format: 'raw' }, unsafe: true, openOptions: optsFor(fs) });
  assert.equal(r.copied, 0);
  assert.deepEqual(await backingOf(fs), ['/d/new.raw']);
  assert.notEqual(await chainDigest('/d/top.toy', optsFor(fs)), before);
  // Back with -u (the pointer again), then flatten: the image stands alone with the same content.
  await rebaseImage({ path: '/d/top.toy', backing: { path: 'old.raw', format: 'raw' }, unsafe: true, openOptions: optsFor(fs) });
  assert.equal(await chainDigest('/d/top.toy', optsFor(fs)), before);
  r = await rebaseImage({ path: '/d/top.toy', backing: { path: '' }, openOptions: optsFor(fs) });
  assert.equal(r.backing, null);
  assert.deepEqual(await backingOf(fs), []);
  assert.equal(await chainDigest('/d/top.toy', optsFor(fs)), before);
  assert.notEqual(before, newDigest);
});

test('bad input: a different-size backing (format requires the same), a loop, a missing file, a format without backing; disk unchanged', async () => {
  const fs = await setup(true);
  const opts = optsFor(fs);
  const before = await chainDigest('/d/top.toy', opts);
  const snapshot = await fs.clone();
  await assert.rejects(rebaseImage({ path: '/d/top.toy', backing: { path: 'big.raw', format: 'raw' }, openOptions: opts }), kind('mismatch'));
  await assert.rejects(rebaseImage({ path: '/d/top.toy', backing: { path: 'big.raw', format: 'raw' }, unsafe: true, openOptions: opts }), kind('mismatch'));
  await assert.rejects(rebaseImage({ path: '/d/top.toy', backing: { path: 'top.toy' }, openOptions: opts }), kind('loop'));
  await assert.rejects(rebaseImage({ path: '/d/top.toy', backing: { path: 'nope.raw' }, openOptions: opts }), kind('not-found'));
  await assert.rejects(rebaseImage({ path: '/d/old.raw', backing: { path: 'new.raw' }, openOptions: opts }), kind('unsupported'));
  assert.equal(await chainDigest('/d/top.toy', opts), before);
  for (const [p, s] of snapshot.stores) assert.deepEqual(await fs.stores.get(p)!.crashImage('all'), await s.crashImage('all'), `${p} untouched`);
});

test('crash at every step of a safe rebase and of a flatten: every file opens and the disk is unchanged', async () => {
  for (const target of ['new.raw', '']) {
    const fs0 = await setup();
    const before = await chainDigest('/d/top.toy', optsFor(fs0));
    const dry = await fs0.clone();
    dry.used = 0;
    await rebaseImage({ path: '/d/top.toy', backing: { path: target, format: 'raw' }, openOptions: optsFor(dry), bufferSize: 512 * 1024 });
    const total = dry.used;
    for (let k = 0; k < total; k++) {
      const fs = await fs0.clone();
      fs.used = 0;
      fs.budget = k;
      await assert.rejects(rebaseImage({ path: '/d/top.toy', backing: { path: target, format: 'raw' }, openOptions: optsFor(fs), bufferSize: 512 * 1024 }), kind('io'));
      for (const [mode, seed] of [['durable', 1], ['all', 1], ['subset', 1]] as const) {
        const after = await fs.clone(mode, seed + k);
        assert.equal(await chainDigest('/d/top.toy', optsFor(after)), before, `crash after ${k} of ${total} operations (${mode} ${seed}) rebasing onto '${target}'`);
      }
    }
  }
});

test('add-cow: rebase, rebase -u and flatten through the CLI; the independent reader agrees', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const { dir, cleanup } = tempDir();
  const reader = (p: string) => run('/usr/bin/python3', [join(REPO_ROOT, 'test', 'oracles', 'addcow_reader.py'), p]).stdout.trim().split(/\s+/)[0];
  try {
    const a = join(dir, 'a.raw');
    const b = join(dir, 'b.raw');
    qemuImg('create', '-f', 'raw', a, '4M');
    qemuIo('raw', a, 'write -P 0x11 0 4M');
    qemuImg('create', '-f', 'raw', b, '4M');
    qemuIo('raw', b, 'write -P 0x11 0 1M', 'write -P 0x22 2M 1M');
    const top = join(dir, 'top.add-cow');
    let r = vdisk('create', '-f', 'add-cow', '-b', 'a.raw', '-F', 'raw', top);
    assert.equal(r.status, 0, r.stderr);
    r = vdisk('io', '--backing-as', 'raw', '-c', 'write -P 0x33 512k 1M', '-c', 'write -z 3M 4096', top);
    assert.equal(r.status, 0, r.stderr);
    const before = await vdiskDigest(top, RAW_BACKING);
    assert.equal(reader(top), before.digest);
    r = vdisk('rebase', '--backing-as', 'raw', '-b', 'b.raw', '-F', 'raw', top);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /rebased onto b\.raw/);
    assert.equal(JSON.parse(vdisk('info', '--output=json', top).stdout)['backing-filename'], 'b.raw');
    assert.equal((await vdiskDigest(top, RAW_BACKING)).digest, before.digest);
    assert.equal(reader(top), before.digest);
    // -u back to a.raw: a.raw differs from b.raw where the top now holds copies, so the content stays.
    r = vdisk('rebase', '--backing-as', 'raw', '-u', '-b', 'a.raw', top);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(reader(top), before.digest);
    r = vdisk('rebase', '--backing-as', 'raw', '-b', '', top);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(vdisk('info', '--output=json', top).stdout)['backing-filename'], undefined);
    assert.equal(reader(top), before.digest);
    // Standing alone, the disk converts to raw and qemu-img reads the same.
    const flat = join(dir, 'flat.raw');
    assert.equal(vdisk('convert', '--backing-as', 'raw', '-O', 'raw', top, flat).status, 0);
    assert.equal((await qemuDigest(flat, 'raw')).digest, before.digest);
    // A backing of another size is refused for a format that needs the same size only; add-cow accepts it.
    const small = join(dir, 'small.raw');
    qemuImg('create', '-f', 'raw', small, '1M');
    r = vdisk('rebase', '--backing-as', 'raw', '-b', 'small.raw', '-F', 'raw', top);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(reader(top), before.digest);
  } finally {
    cleanup();
  }
});
