import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { BlockError } from '../src/core/errors.js';
import { openChain } from '../src/chain/open.js';
import { MemoryFs } from '../src/io/memory-store.js';
import { createImage } from '../src/ops/create.js';
import { rebaseImage } from '../src/ops/rebase.js';
import { CrashFs, chainDigest } from './helpers/ops-fixtures.js';
import { vdisk } from './helpers/cli.js';
import { pyvhdiDigest, qemuImg, requireTool, tempDir } from './helpers/oracle.js';
import { rng, randomBytes } from './helpers/random.js';

/*
 * rebase -b "" on a differencing VHD: flattened in place into a dynamic VHD
 * (src/formats/vhd/flatten.ts). Crash-safe: a crash at any step leaves a
 * valid disk — still differencing, or already dynamic — showing the same
 * content, and running the rebase again finishes it.
 */

const MiB = 1 << 20;
const SIZE = 4 * MiB;

/**
 * The footer's disk type field (VHD spec: offset 60, big-endian; 3 dynamic,
 * 4 differencing): the footer at the end, or (a crash mid-allocation can
 * leave the last sector something else) its copy at offset 0, as readers take it.
 */
function diskType(bytes: Uint8Array): number {
  const end = bytes.length - 512;
  const at = Buffer.from(bytes.subarray(end, end + 8)).toString('latin1') === 'conectix' ? end : 0;
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(at + 60);
}

/** base.vhd full of data but for zero stretches; child.vhd over it with blocks of its own, partly present, and stale data under clear bits (a discard). */
async function setup(): Promise<CrashFs> {
  const mem = new MemoryFs();
  const openStore = mem.opener();
  const r = rng(17);
  await createImage({ path: '/d/base.vhd', format: 'vhd', size: SIZE, options: { force_size: 'on', block_size: '1M' }, openStore });
  let c = await openChain('/d/base.vhd', { openStore });
  await c.write(0, randomBytes(r, SIZE));
  await c.writeZeroes(MiB + 4096, 300_000 - (300_000 % 512)); // zero in the parent where the child defers
  await c.writeZeroes(3 * MiB, MiB); // a block that is zero in the parent and absent in the child
  await c.close();
  await createImage({ path: '/d/child.vhd', format: 'vhd', backing: { path: 'base.vhd', format: 'vhd' }, options: { block_size: '1M' }, openStore });
  c = await openChain('/d/child.vhd', { openStore });
  await c.write(MiB, randomBytes(r, 4096)); // block 1: partly present
  await c.write(MiB + 400_384, randomBytes(r, 8192));
  await c.write(2 * MiB, randomBytes(r, MiB)); // block 2: whole
  await c.trim(2 * MiB + 65536, 131072); // its bits cleared again, its data left behind (stale)
  await c.close();
  return CrashFs.from({ '/d/base.vhd': mem.files.get('/d/base.vhd')!.bytes(), '/d/child.vhd': mem.files.get('/d/child.vhd')!.bytes() });
}

const flatten = (fs: CrashFs) => rebaseImage({ path: '/d/child.vhd', backing: null, openOptions: { openStore: fs.opener() } });

async function layers(fs: CrashFs): Promise<number> {
  const c = await openChain('/d/child.vhd', { openStore: fs.opener(), readOnly: true });
  try {
    return c.layers.length;
  } finally {
    await c.close();
  }
}

test('rebase -b "" flattens a differencing VHD into a dynamic one in place; it no longer needs its parent', async () => {
  const fs = await setup();
  const before = await chainDigest('/d/child.vhd', { openStore: fs.opener() });
  assert.equal(diskType(await fs.stores.get('/d/child.vhd')!.crashImage('all')), 4);
  const r = await flatten(fs);
  assert.equal(r.backing, null);
  const after = await fs.clone();
  const bytes = await after.stores.get('/d/child.vhd')!.crashImage('all');
  assert.equal(diskType(bytes), 3, 'dynamic now');
  assert.equal(new DataView(bytes.buffer, bytes.byteOffset).getUint32(60), 3, 'the footer copy at 0 too');
  after.stores.delete('/d/base.vhd');
  assert.equal(await layers(after), 1);
  assert.equal(await chainDigest('/d/child.vhd', { openStore: after.opener() }), before, 'the same disk, without the parent');
});

test('crash at every step of a VHD flatten: each image opens and shows the same disk, and a second run finishes it', async () => {
  const fs0 = await setup();
  const before = await chainDigest('/d/child.vhd', { openStore: fs0.opener() });
  const dry = await fs0.clone();
  dry.used = 0;
  await flatten(dry);
  const total = dry.used;
  assert.ok(total >= 8, `copy, zero, bitmaps, footers: several steps (${total})`);
  let switched = 0;
  for (let k = 0; k < total; k++) {
    const fs = await fs0.clone();
    fs.used = 0;
    fs.budget = k;
    await assert.rejects(flatten(fs), (e) => e instanceof BlockError && e.kind === 'io');
    for (const [mode, seed] of [['durable', 1], ['all', 1], ['subset', 1], ['subset', 2]] as const) {
      const after = await fs.clone(mode, seed + k);
      const what = `crash after ${k} of ${total} operations (${mode} ${seed})`;
      assert.equal(await chainDigest('/d/child.vhd', { openStore: after.opener() }), before, what);
      const type = diskType(await after.stores.get('/d/child.vhd')!.crashImage('all'));
      assert.ok(type === 3 || type === 4, what);
      if (type === 3) {
        switched++;
        // Dynamic already: it stands alone.
        const alone = await after.clone();
        alone.stores.delete('/d/base.vhd');
        assert.equal(await chainDigest('/d/child.vhd', { openStore: alone.opener() }), before, `${what}: without the parent`);
      }
      if (mode === 'subset') continue;
      // Running it again finishes the job.
      const again = await after.clone();
      await flatten(again);
      assert.equal(diskType(await again.stores.get('/d/child.vhd')!.crashImage('all')), 3, `${what}: rerun`);
      again.stores.delete('/d/base.vhd');
      assert.equal(await chainDigest('/d/child.vhd', { openStore: again.opener() }), before, `${what}: rerun, without the parent`);
    }
  }
  assert.ok(switched > 0, 'some crashes come after the switch');
});

test('CLI: rebase -b "" on a differencing VHD; qemu-img and libvhdi read the flattened disk as the chain read before', (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'pyvhdi')) return;
  const d = tempDir();
  try {
    const base = join(d.dir, 'base.vhd');
    const child = join(d.dir, 'child.vhd');
    const ok = (r: { status: number; stderr: string }) => assert.equal(r.status, 0, r.stderr);
    ok(vdisk('create', '-f', 'vhd', '-o', 'force_size=on', base, '8M'));
    ok(vdisk('io', '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x12 5M 1M', base));
    ok(vdisk('create', '-f', 'vhd', '-b', 'base.vhd', '-F', 'vhd', child));
    ok(vdisk('io', '-c', 'write -P 0x21 1M 4k', '-c', 'write -P 0x22 4M 2M', '-c', 'discard 4608k 64k', child));
    const flat = join(d.dir, 'before.raw');
    ok(vdisk('convert', '-O', 'raw', child, flat));
    const r = vdisk('rebase', '-b', '', child);
    ok(r);
    assert.match(r.stdout, /no backing file now/);
    rmSync(base);
    const info = JSON.parse(vdisk('info', '--output=json', child).stdout);
    assert.equal(info['format-specific'].data['disk-type'], 'dynamic');
    assert.equal(info['backing-filename'], undefined);
    assert.equal(vdisk('check', child).status, 0);
    assert.equal(vdisk('compare', child, flat).status, 0);
    // qemu-img (vpc) and libvhdi read the file alone.
    assert.match(qemuImg('compare', '-f', 'vpc', '-F', 'raw', child, flat), /Images are identical/);
    const py = pyvhdiDigest([child]);
    assert.deepEqual(py, { size: statSync(flat).size, digest: createHash('sha256').update(readFileSync(flat)).digest('hex') });
  } finally {
    d.cleanup();
  }
});

test('rebase -b "" on a differencing VHDX is refused before anything is copied, and says what to run', () => {
  const d = tempDir();
  try {
    const base = join(d.dir, 'base.vhdx');
    const child = join(d.dir, 'child.vhdx');
    assert.equal(vdisk('create', '-f', 'vhdx', base, '8M').status, 0);
    assert.equal(vdisk('io', '-c', 'write -P 0x11 0 4M', base).status, 0);
    assert.equal(vdisk('create', '-f', 'vhdx', '-b', 'base.vhdx', '-F', 'vhdx', child).status, 0);
    const before = readFileSync(child);
    const r = vdisk('rebase', '-b', '', child);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot drop its parent in place.*vdisk convert -O vhdx/);
    assert.ok(Buffer.compare(readFileSync(child), before) === 0, 'the child is untouched');
  } finally {
    d.cleanup();
  }
});
