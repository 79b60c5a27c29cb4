import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { statSync } from 'node:fs';
import { BlockError } from '../src/core/errors.js';
import { resizeImage } from '../src/ops/resize.js';
import { COW_FORMATS, CrashFs, resizeCalls } from './helpers/ops-fixtures.js';
import { vdisk } from './helpers/cli.js';
import { REPO_ROOT } from './helpers/corpus.js';
import { qemuDigest, qemuImg, qemuIo, RAW_BACKING, requireTool, run, tempDir, vdiskDigest } from './helpers/oracle.js';

const MiB = 1 << 20;
const kind = (k: string) => (e: unknown) => e instanceof BlockError && e.kind === k;

test('raw: grow, shrink with --shrink, relative sizes; qemu-img reads the same', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'a.raw');
    qemuImg('create', '-f', 'raw', img, '4M');
    qemuIo('raw', img, 'write -P 0x61 0 4M');
    let r = vdisk('resize', img, '+2M');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(img).size, 6 * MiB);
    const grown = await vdiskDigest(img);
    assert.equal((await qemuDigest(img, 'raw')).digest, grown.digest);
    qemuIo('raw', img, 'read -P 0x61 0 4M', 'read -P 0 4M 2M');
    // Shrinking needs --shrink; nothing changes without it.
    r = vdisk('resize', img, '-1M');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /needs --shrink/);
    assert.equal((await vdiskDigest(img)).digest, grown.digest);
    r = vdisk('resize', img, '3M');
    assert.equal(r.status, 1);
    r = vdisk('resize', '--shrink', img, '-3M');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(img).size, 3 * MiB);
    qemuIo('raw', img, 'read -P 0x61 0 3M');
    r = vdisk('resize', img, '1000k');
    assert.equal(r.status, 1, 'shrink refused');
    r = vdisk('resize', img, 'lots');
    assert.equal(r.status, 1);
  } finally {
    cleanup();
  }
});

test('add-cow: grow and shrink keep the data; sizes past the limit are refused', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  const reader = (p: string) => run('/usr/bin/python3', [join(REPO_ROOT, 'test', 'oracles', 'addcow_reader.py'), p]).stdout.trim().split(/\s+/);
  try {
    const base = join(dir, 'base.raw');
    qemuImg('create', '-f', 'raw', base, '2M');
    qemuIo('raw', base, 'write -P 0x21 0 2M');
    const top = join(dir, 't.add-cow');
    assert.equal(vdisk('create', '-f', 'add-cow', '-b', 'base.raw', '-F', 'raw', top).status, 0);
    assert.equal(vdisk('io', '--backing-as', 'raw', '-c', 'write -P 0x43 1M 512k', top).status, 0);
    const before = await vdiskDigest(top, RAW_BACKING);
    let r = vdisk('resize', '--backing-as', 'raw', top, '4M');
    assert.equal(r.status, 0, r.stderr);
    const [d4, s4] = reader(top);
    assert.equal(Number(s4), 4 * MiB);
    assert.equal((await vdiskDigest(top, RAW_BACKING)).digest, d4);
    // The first 2 MiB are as before; past the backing's end the disk reads zeros.
    const back = join(dir, 'back.raw');
    assert.equal(vdisk('convert', '--backing-as', 'raw', '-O', 'raw', top, back).status, 0);
    qemuIo('raw', back, 'read -P 0 2M 2M');
    r = vdisk('resize', '--backing-as', 'raw', top, '3T');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /larger than the add-cow format allows/);
    assert.equal(reader(top)[0], d4);
    r = vdisk('resize', '--backing-as', 'raw', '--shrink', top, '2M');
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(reader(top), [before.digest, String(2 * MiB)]);
    assert.equal((await vdiskDigest(top, RAW_BACKING)).digest, before.digest);
  } finally {
    cleanup();
  }
});

test('a differencing layer takes only its parent size; bad sizes never reach the format', async () => {
  const fs = await CrashFs.from({
    '/d/base.raw': new Uint8Array(2 * MiB),
    '/d/top.toy': { size: MiB, id: 3, backing: 'base.raw', backingFormat: 'raw', sameSize: true },
  });
  const opts = { openStore: fs.opener(), formats: COW_FORMATS };
  resizeCalls.length = 0;
  await assert.rejects(resizeImage({ path: '/d/top.toy', size: 3 * MiB, openOptions: opts }), kind('mismatch'));
  await assert.rejects(resizeImage({ path: '/d/top.toy', size: 1000, openOptions: opts }), kind('invalid-argument'));
  await assert.rejects(resizeImage({ path: '/d/top.toy', size: 2 ** 41, openOptions: opts }), kind('out-of-range'));
  await assert.rejects(resizeImage({ path: '/d/top.toy', size: { delta: -512 }, openOptions: opts }), kind('invalid-argument'));
  assert.deepEqual(resizeCalls, []);
  await resizeImage({ path: '/d/top.toy', size: { delta: MiB }, openOptions: opts });
  assert.deepEqual(resizeCalls, [2 * MiB]);
  // The parent missing: the child cannot learn the size it must take.
  const lone = await fs.clone();
  lone.stores.delete('/d/base.raw');
  await assert.rejects(resizeImage({ path: '/d/top.toy', size: 2 * MiB, openOptions: { ...opts, openStore: lone.opener() } }), kind('not-found'));
});
