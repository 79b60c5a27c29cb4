import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { createImage } from '../src/ops/create.js';
import { imageInfo } from '../src/ops/info.js';
import { resizeImage } from '../src/ops/resize.js';
import { vdisk } from './helpers/cli.js';
import { requireTool, run, tempDir, qemuImg } from './helpers/oracle.js';

/*
 * Issue 19, items 1 and 2: every VHD vdisk writes reads at vdisk's size in
 * qemu-img (which sizes a VHD by its CHS geometry unless the creator is one
 * it knows or the geometry is the maximum) and in libvhdi (which reads the
 * original size), whether the size is one a CHS geometry spells or not.
 */

const MiB = 1 << 20;
const GiB = 1 << 30;

function libvhdiSize(path: string): number {
  const script = 'import sys, pyvhdi\nf = pyvhdi.file()\nf.open(sys.argv[1])\nprint(f.get_media_size())';
  return Number(run('/usr/bin/python3', ['-c', script, path]).stdout.trim());
}

function qemuSize(path: string): number {
  return Number(JSON.parse(qemuImg('info', '--output=json', '-f', 'vpc', path))['virtual-size']);
}

async function vdiskSize(path: string): Promise<number> {
  return (await imageInfo(path))[0]['virtual-size'];
}

/** The three readers agree, on `expected`. */
async function agree(path: string, expected: number): Promise<void> {
  assert.equal(await vdiskSize(path), expected, `vdisk size of ${path}`);
  assert.equal(qemuSize(path), expected, `qemu-img size of ${path}`);
  assert.equal(libvhdiSize(path), expected, `libvhdi size of ${path}`);
}

/** A raw file of `size` bytes with data at its start, middle and last sector. */
function rawWithData(path: string, size: number): void {
  const fd = openSync(path, 'w');
  try {
    for (const at of [0, Math.floor(size / 1024) * 512, size - 512]) writeSync(fd, Buffer.alloc(512, (at % 251) + 1), 0, 512, at);
  } finally {
    closeSync(fd);
  }
}

// 10 MiB and 1e9 bytes are not CHS-exact (the appendix geometry gives 10 483 712 and
// 999 677 952 bytes); 10 514 432 is (20 536 sectors = 1 024 × 4 × ... as vdisk rounds 10M);
// 200 GiB lies past the largest geometry (about 127 GiB).
const SIZES = [10 * MiB, 1_000_000_000, 10_514_432, 200 * GiB];

test('create: sizes with and without force_size read the same in vdisk, qemu-img and libvhdi', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'pyvhdi')) return;
  const tmp = tempDir();
  try {
    for (const size of SIZES) {
      for (const subformat of ['dynamic', 'fixed']) {
        if (subformat === 'fixed' && size > GiB) continue; // a sparse 200 GiB fixed file is fine, but adds nothing here
        const forced = join(tmp.dir, `f-${subformat}-${size}.vhd`);
        const r = await createImage({ path: forced, format: 'vhd', size, options: { subformat, force_size: 'on' } });
        assert.equal(r.size, size);
        await agree(forced, size);
        const rounded = join(tmp.dir, `r-${subformat}-${size}.vhd`);
        const q = await createImage({ path: rounded, format: 'vhd', size, options: { subformat } });
        assert.ok(q.size >= size);
        await agree(rounded, q.size);
      }
    }
  } finally {
    tmp.cleanup();
  }
});

test('convert raw -> vhd with and without force_size: qemu-img compare finds the copy identical, all readers agree on its size', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'pyvhdi')) return;
  const tmp = tempDir();
  try {
    for (const size of [1_000_000_000, 10_514_432, 10 * MiB + 512]) {
      const raw = join(tmp.dir, `src-${size}.raw`);
      rawWithData(raw, size);
      for (const [name, o] of [
        ['fixed-forced', 'subformat=fixed,force_size=on'],
        ['dynamic-forced', 'force_size=on'],
        ['fixed', 'subformat=fixed'],
        ['dynamic', 'subformat=dynamic'],
      ]) {
        const out = join(tmp.dir, `${name}-${size}.vhd`);
        const r = vdisk('convert', '-f', 'raw', '-O', 'vhd', '-o', o, raw, out);
        assert.equal(r.status, 0, r.stderr);
        const got = await vdiskSize(out);
        if (o.includes('force_size')) assert.equal(got, size);
        await agree(out, got);
        // Identical where both have the disk; a CHS-rounded copy is longer, its tail zeros (compare says so and passes).
        const cmp = run('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, out], { allowFail: true });
        assert.equal(cmp.status, 0, `${name} ${size}: ${cmp.stdout}${cmp.stderr}`);
      }
    }
  } finally {
    tmp.cleanup();
  }
});

test('resize: the new size (CHS-exact or not) is what every reader sees, the original size follows it', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'pyvhdi')) return;
  const tmp = tempDir();
  try {
    for (const subformat of ['dynamic', 'fixed']) {
      const p = join(tmp.dir, `${subformat}.vhd`);
      await createImage({ path: p, format: 'vhd', size: 10 * MiB, options: { subformat, force_size: 'on' } });
      for (const size of [20_000_256, 10_514_432, 64 * MiB, 40 * MiB + 4096]) {
        await resizeImage({ path: p, size, shrink: true });
        await agree(p, size);
        const f = readFileSync(p).subarray(statSync(p).size - 512);
        assert.equal(f.readBigUInt64BE(40), BigInt(size), 'original size');
        assert.equal(f.readBigUInt64BE(48), BigInt(size), 'current size');
      }
    }
  } finally {
    tmp.cleanup();
  }
});

test('fixed VHDs go past 2040 GiB (to 32 TiB); dynamic and differencing stop there; info says Hyper-V stops at 2040 GiB', async (t) => {
  if (!requireTool(t, 'pyvhdi')) return;
  const tmp = tempDir();
  try {
    const big = join(tmp.dir, 'big.vhd');
    const r = vdisk('create', '-f', 'vhd', '-o', 'subformat=fixed', big, '3T');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(await vdiskSize(big), 3 * 2 ** 40);
    assert.equal(libvhdiSize(big), 3 * 2 ** 40);
    const info = vdisk('info', big);
    assert.match(info.stdout, /Hyper-V attaches fixed VHDs only up to 2040 GiB/);
    // Growing a fixed disk past 2040 GiB too.
    const grow = join(tmp.dir, 'grow.vhd');
    await createImage({ path: grow, format: 'vhd', size: 10 * MiB, options: { subformat: 'fixed', force_size: 'on' } });
    await resizeImage({ path: grow, size: 2041 * GiB });
    assert.equal(libvhdiSize(grow), 2041 * GiB);

    const dyn = vdisk('create', '-f', 'vhd', join(tmp.dir, 'dyn.vhd'), '2041G');
    assert.notEqual(dyn.status, 0);
    assert.match(dyn.stderr, /dynamic VHD holds at most 2040 GiB/);
    const small = join(tmp.dir, 'small.vhd');
    await createImage({ path: small, format: 'vhd', size: 10 * MiB });
    await assert.rejects(resizeImage({ path: small, size: 2041 * GiB }), (e: Error) => /dynamic VHD holds at most 2040 GiB/.test(e.message));
    const huge = vdisk('create', '-f', 'vhd', '-o', 'subformat=fixed', join(tmp.dir, 'huge.vhd'), '33T');
    assert.notEqual(huge.status, 0);
    assert.match(huge.stderr, /larger than the vhd format allows \(35184372088832 bytes\)/);
    // The help of create says it too.
    assert.match(vdisk('create', '--help').stdout + vdisk('help', 'create').stdout, /2040 GiB/);
  } finally {
    tmp.cleanup();
  }
});
