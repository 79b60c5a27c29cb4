import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { vdisk } from './helpers/cli.js';
import { requireTool, tempDir, run, qemuImg, qemuDigest, vdiskDigest } from './helpers/oracle.js';
import { rng, randomBytes, randInt } from './helpers/random.js';

test('raw written by vdisk at random unaligned offsets equals qemu-io writing the same', (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const d = tempDir();
  try {
    const ours = join(d.dir, 'ours.raw');
    const theirs = join(d.dir, 'theirs.raw');
    vdisk('create', '-f', 'raw', ours, '8M');
    qemuImg('create', '-f', 'raw', theirs, '8M');
    const r = rng(42);
    const cmds: string[] = [];
    for (let i = 0; i < 30; i++) {
      const off = randInt(r, 0, (8 << 20) - 70000);
      const len = randInt(r, 1, 65536);
      cmds.push(`write -P 0x${randInt(r, 1, 255).toString(16)} ${off} ${len}`);
    }
    const res = vdisk('io', ...cmds.flatMap((c) => ['-c', c]), ours);
    assert.equal(res.status, 0, res.stderr);
    run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), theirs]);
    assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ours, theirs], { allowFail: true }).status, 0);
  } finally {
    d.cleanup();
  }
});

test('raw convert round trip is identical per qemu-img, and qemu-img map agrees on a written raw file', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  try {
    const src = join(d.dir, 'src.raw');
    writeFileSync(src, randomBytes(rng(7), 3 << 20));
    const out = join(d.dir, 'out.raw');
    assert.equal(vdisk('convert', '-O', 'raw', src, out).status, 0);
    assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, out], { allowFail: true }).status, 0);
    assert.deepEqual(await vdiskDigest(out), await qemuDigest(src, 'raw'));
    const ours = JSON.parse(vdisk('map', '--output=json', src).stdout);
    const theirs = JSON.parse(qemuImg('map', '--output=json', '-f', 'raw', src));
    assert.deepEqual(ours, theirs);
  } finally {
    d.cleanup();
  }
});

test('sparse raw: map reports holes like qemu-img, and convert skips them', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const d = tempDir();
  try {
    const src = join(d.dir, 'sparse.raw');
    qemuImg('create', '-f', 'raw', src, '32M');
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 2M', '-c', 'write -P 0x11 20M 64k', src]);
    const ours = JSON.parse(vdisk('map', '--output=json', src).stdout);
    const theirs = JSON.parse(qemuImg('map', '--output=json', '-f', 'raw', src));
    assert.deepEqual(ours, theirs);
    const out = join(d.dir, 'out.raw');
    assert.equal(vdisk('convert', '-O', 'raw', src, out).status, 0);
    // The copy holds data exactly where the source has non-zero data (qemu-img
    // itself allocates the first 4 KiB of a raw file it creates; we copy no zeros).
    const dataRanges = (m: { start: number; length: number; data: boolean }[]) => m.filter((e) => e.data).map((e) => [e.start, e.length]);
    assert.deepEqual(dataRanges(JSON.parse(qemuImg('map', '--output=json', '-f', 'raw', out))), [
      [1 << 20, 2 << 20],
      [20 << 20, 64 << 10],
    ]);
    assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, out], { allowFail: true }).status, 0);
  } finally {
    d.cleanup();
  }
});
