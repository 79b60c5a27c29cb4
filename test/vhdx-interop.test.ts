import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { openChain } from '../src/chain/open.js';
import { createImage } from '../src/ops/create.js';
import { vdisk } from './helpers/cli.js';
import { pyvhdiDigest, qemuDigest, qemuImg, qemuIo, requireTool, run, tempDir, vdiskDigest } from './helpers/oracle.js';
import { randInt, randomBytes, rng } from './helpers/random.js';

const MiB = 1 << 20;

/** Write `count` random runs (whole sectors) through the chain; returns nothing, the oracles compare. */
async function scribble(path: string, seed: number, count: number, sector = 512, maxLen = 3 * MiB): Promise<void> {
  const c = await openChain(path);
  try {
    const r = rng(seed);
    for (let i = 0; i < count; i++) {
      const len = randInt(r, 1, Math.floor(maxLen / sector)) * sector;
      const off = randInt(r, 0, Math.floor((c.size - len) / sector)) * sector;
      await c.write(off, randomBytes(r, len));
    }
    // Unaligned writes too: the chain completes partial sectors (copy-up inside this layer or from the parent).
    for (let i = 0; i < 5; i++) {
      const off = randInt(r, 0, c.size - 70000);
      await c.write(off, randomBytes(r, randInt(r, 1, 65536)));
    }
    await c.writeZeroes(randInt(r, 0, c.size / 2), randInt(r, 1, 4 * MiB), { mayUnmap: true });
  } finally {
    await c.close();
  }
}

function qemuCheckClean(path: string): void {
  const r = run('qemu-img', ['check', '-f', 'vhdx', path], { allowFail: true });
  assert.equal(r.status, 0, `qemu-img check: ${r.stdout}${r.stderr}`);
}

for (const subformat of ['dynamic', 'fixed'] as const) {
  test(`qemu-img reads a ${subformat} VHDX written by vdisk identically and finds no errors`, async (t) => {
    if (!requireTool(t, 'qemu-img')) return;
    const d = tempDir();
    try {
      const p = join(d.dir, `${subformat}.vhdx`);
      // 1 MiB blocks and 20 MiB: many blocks, some BAT entries at 4 KiB-aligned positions of the BAT sector.
      await createImage({ path: p, format: 'vhdx', size: 20 * MiB + 512 * 3, options: { subformat, block_size: '1M' } });
      await scribble(p, subformat === 'fixed' ? 11 : 12, 25);
      qemuCheckClean(p);
      assert.deepEqual(await vdiskDigest(p), await qemuDigest(p, 'vhdx'));
    } finally {
      d.cleanup();
    }
  });
}

test('BAT entries at 4 KiB-aligned and unaligned positions of the BAT survive (QEMU issue 727)', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  try {
    const p = join(d.dir, 'bat.vhdx');
    // 1 MiB blocks, 512-byte sectors: chunk ratio 4096, so payload entry b sits at BAT index b + floor(b/4096).
    // Blocks 512 and 1024 start a 4 KiB BAT sector (index*8 % 4096 == 0); 511, 513, 1023 do not.
    await createImage({ path: p, format: 'vhdx', size: 2 * 1024 * MiB, options: { block_size: '1M' } });
    const c = await openChain(p);
    const blocks = [0, 1, 511, 512, 513, 1023, 1024, 2047];
    for (const b of blocks) await c.write(b * MiB + 4096, new Uint8Array(8192).fill((b % 250) + 1));
    await c.close();
    // Reopen: the BAT comes from the file, not memory.
    const c2 = await openChain(p, { readOnly: true });
    for (const b of blocks) {
      const got = new Uint8Array(MiB);
      await c2.read(b * MiB, got);
      assert.ok(got.subarray(4096, 4096 + 8192).every((x) => x === (b % 250) + 1), `block ${b}`);
      assert.ok(got.subarray(0, 4096).every((x) => x === 0));
      const ext = await c2.blockStatus(b * MiB, MiB);
      assert.equal(ext[0].kind, 'data');
    }
    const ext = await c2.blockStatus(2 * MiB, 509 * MiB);
    assert.deepEqual(ext.map((e) => e.kind), ['zero']);
    await c2.close();
    qemuCheckClean(p);
    assert.deepEqual(await vdiskDigest(p), await qemuDigest(p, 'vhdx'));
  } finally {
    d.cleanup();
  }
});

test('vdisk reads what qemu-img creates and qemu-io writes', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const d = tempDir();
  try {
    for (const [name, opts] of [
      ['dyn.vhdx', 'subformat=dynamic,block_size=1M'],
      ['fixed.vhdx', 'subformat=fixed'],
      ['default.vhdx', 'subformat=dynamic'],
    ] as const) {
      const p = join(d.dir, name);
      qemuImg('create', '-f', 'vhdx', '-o', opts, p, '40M');
      const r = rng(name.length);
      const cmds: string[] = [];
      for (let i = 0; i < 20; i++) {
        const off = randInt(r, 0, 39 * 2048) * 512;
        cmds.push(`write -P 0x${randInt(r, 1, 255).toString(16)} ${off} ${randInt(r, 1, 1024) * 512}`);
      }
      cmds.push('write -z 0 1M');
      qemuIo('vhdx', p, ...cmds);
      assert.deepEqual(await vdiskDigest(p), await qemuDigest(p, 'vhdx'), name);
    }
  } finally {
    d.cleanup();
  }
});

test('libvhdi reads vdisk differencing chains of depth 1, 2 and 5 identically', async (t) => {
  if (!requireTool(t, 'pyvhdi')) return;
  const d = tempDir();
  try {
    const size = 24 * MiB;
    const files = [join(d.dir, 'base.vhdx')];
    await createImage({ path: files[0], format: 'vhdx', size, options: { block_size: '1M' } });
    await scribble(files[0], 100, 8);
    for (let depth = 1; depth <= 5; depth++) {
      const child = join(d.dir, `child${depth}.vhdx`);
      // Relative parent name, as the CLI passes it: resolved against the child's folder.
      await createImage({ path: child, format: 'vhdx', backing: { path: files[files.length - 1].split('/').pop()! } });
      await scribble(child, 100 + depth, 6, 512, MiB);
      files.push(child);
      if (depth === 1 || depth === 2 || depth === 5) {
        const chain = [...files].reverse();
        assert.deepEqual(await vdiskDigest(child), pyvhdiDigest(chain), `depth ${depth}`);
      }
    }
    const info = JSON.parse(vdisk('info', '--output=json', files[5]).stdout);
    assert.equal(info['backing-filename'], '.\\child4.vhdx');
  } finally {
    d.cleanup();
  }
});

test('libvhdi reads 4096-byte-sector VHDX images (base and differencing) identically', async (t) => {
  if (!requireTool(t, 'pyvhdi')) return;
  const d = tempDir();
  try {
    const base = join(d.dir, 'base4k.vhdx');
    const child = join(d.dir, 'child4k.vhdx');
    await createImage({ path: base, format: 'vhdx', size: 16 * MiB, options: { logical_sector_size: '4096', block_size: '1M' } });
    await scribble(base, 7, 8, 4096);
    assert.deepEqual(await vdiskDigest(base), pyvhdiDigest([base]));
    await createImage({ path: child, format: 'vhdx', backing: { path: base } });
    const c = await openChain(child, { readOnly: true });
    assert.equal(c.top.logicalSectorSize, 4096);
    await c.close();
    await scribble(child, 8, 8, 4096, MiB);
    assert.deepEqual(await vdiskDigest(child), pyvhdiDigest([child, base]));
  } finally {
    d.cleanup();
  }
});

test('vdisk create -f vhdx via the CLI, with -b, and refuses sizes above 64 TiB', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  try {
    const p = join(d.dir, 'cli.vhdx');
    let r = vdisk('create', '-f', 'vhdx', '-o', 'subformat=fixed,block_size=1M', p, '8M');
    assert.equal(r.status, 0, r.stderr);
    const qi = JSON.parse(qemuImg('info', '--output=json', p));
    assert.equal(qi.format, 'vhdx');
    assert.equal(qi['virtual-size'], 8 * MiB);
    r = vdisk('create', '-f', 'vhdx', join(d.dir, 'huge.vhdx'), '65T');
    assert.notEqual(r.status, 0);
    r = vdisk('create', '-f', 'vhdx', join(d.dir, 'max.vhdx'), '64T');
    assert.equal(r.status, 0, r.stderr);
    r = vdisk('create', '-f', 'vhdx', '-b', 'cli.vhdx', '-F', 'vhdx', join(d.dir, 'kid.vhdx'));
    assert.equal(r.status, 0, r.stderr);
    const kid = readFileSync(join(d.dir, 'kid.vhdx'));
    assert.ok(kid.includes(Buffer.from('parent_linkage', 'utf16le')));
    assert.ok(kid.includes(Buffer.from('relative_path', 'utf16le')));
    assert.ok(kid.includes(Buffer.from('absolute_win32_path', 'utf16le')));
  } finally {
    d.cleanup();
  }
});
