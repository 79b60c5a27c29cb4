import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readWholeDisk, pyvhdiDigest, vhdxReaderDigest, pyvhdiRead, qemuImg, qemuIo, requireTool, run, sha256, tempDir, vdiskDigest } from './helpers/oracle.js';
import { vdisk } from './helpers/cli.js';

/*
 * Issue 17, item 1: a differencing VHDX whose size differs from its
 * parent's, as Hyper-V makes them (its ResizeVirtualDisk resizes
 * differencing VHDX both ways). Past the parent's end the disk reads zeros
 * and writes land in the child; a smaller child shows only its own size.
 *
 * Oracles: a model of the disk kept here from the writes, the VHDX reader
 * written from the specification (test/oracles/vhdx_reader.py) and libvhdi
 * (pyvhdi, set_parent; see libvhdiAgrees). qemu-img cannot be one: its vhdx driver
 * opens no differencing VHDX at all (has_parent: "Operation not
 * supported"), which the first test pins.
 */

const MiB = 1 << 20;
const ok = (r: { status: number; stderr: string }) => assert.equal(r.status, 0, r.stderr);
const size = (p: string) => Number(JSON.parse(vdisk('info', '--output=json', p).stdout)['virtual-size']);
const dataWriteGuid = (p: string) => JSON.parse(vdisk('info', '--output=json', p).stdout)['format-specific'].data['data-write-guid'];

/** The disk as a plain buffer, written the way `vdisk io -c "write -P"` does. */
class Model {
  bytes: Uint8Array;
  constructor(n: number, from?: Uint8Array) {
    this.bytes = new Uint8Array(n);
    if (from) this.bytes.set(from.subarray(0, Math.min(n, from.length)));
  }
  fill(pattern: number, offset: number, length: number): string {
    this.bytes.fill(pattern, offset, offset + length);
    return `write -P 0x${pattern.toString(16)} ${offset} ${length}`;
  }
}

/** A qemu-made 8 MiB VHDX base (1 MiB blocks) with data up to its last byte; its model. */
function makeBase(dir: string): { path: string; model: Model } {
  const path = join(dir, 'base.vhdx');
  qemuImg('create', '-f', 'vhdx', '-o', 'block_size=1M', path, '8M');
  const m = new Model(8 * MiB);
  qemuIo('vhdx', path, m.fill(0x11, 0, MiB), m.fill(0x12, 5 * MiB, 3 * MiB));
  return { path, model: m };
}

/**
 * libvhdi reads the disk as the model up to the parent's end. Past it, where
 * the child holds nothing, libvhdi (20210425, Debian 12) asks the
 * parent for the data and fails ("unable to read data from parent file")
 * instead of reading zeros: it cannot read such a disk whole, so this pins
 * what it does there (and vdisk's zeros are checked against the model).
 */
function libvhdiAgrees(chain: string[], model: Uint8Array, parentSize: number): void {
  assert.equal(sha256(pyvhdiRead(chain, 0, parentSize)), sha256(model.subarray(0, parentSize)), 'libvhdi reads the same up to the parent\'s end');
  if (model.length > parentSize) {
    assert.throws(() => pyvhdiDigest(chain), /unable to read data from parent file/, 'libvhdi fails past the parent\'s end where the child holds nothing');
  }
}

test('differencing VHDX larger and smaller than its parent: vdisk and libvhdi read the model; qemu-img opens no differencing VHDX', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
  const { dir, cleanup } = tempDir();
  try {
    const base = makeBase(dir);
    // Larger: 12 MiB over 8 MiB. create honours SIZE (it used to make the child its parent's size, silently).
    const big = join(dir, 'big.vhdx');
    ok(vdisk('create', '-f', 'vhdx', '-b', 'base.vhdx', big, '12M'));
    assert.equal(size(big), 12 * MiB);
    const bm = new Model(12 * MiB, base.model.bytes);
    // Across the parent's end (a block half over the parent), and wholly past it.
    ok(vdisk('io', '-c', bm.fill(0x21, 7 * MiB + 512, MiB + 4096), '-c', bm.fill(0x22, 10 * MiB, 512 * 3), '-c', bm.fill(0x23, 12 * MiB - 512, 512), big));
    const bigDisk = await readWholeDisk(big, { readOnly: true });
    assert.equal(sha256(bigDisk), sha256(bm.bytes), 'vdisk reads the model: parent data, the child over it, zeros past the parent');
    assert.deepEqual(vhdxReaderDigest([big, base.path]), { digest: sha256(bm.bytes), size: 12 * MiB }, 'the specification\'s reader');
    libvhdiAgrees([big, base.path], bm.bytes, 8 * MiB);
    // What the child holds past the parent's end, libvhdi reads too.
    assert.ok(pyvhdiRead([big, base.path], 10 * MiB, 512 * 3).equals(Buffer.from(bm.bytes.subarray(10 * MiB, 10 * MiB + 512 * 3))));
    // Past the parent's end, where the child has nothing: vdisk reads zeros.
    ok(vdisk('io', '-c', `read -P 0 ${9 * MiB} ${MiB}`, big));

    // Smaller: 6 MiB over 8 MiB shows only its 6 MiB.
    const small = join(dir, 'small.vhdx');
    ok(vdisk('create', '-f', 'vhdx', '-b', 'base.vhdx', small, '6M'));
    assert.equal(size(small), 6 * MiB);
    const sm = new Model(6 * MiB, base.model.bytes);
    ok(vdisk('io', '-c', sm.fill(0x31, 6 * MiB - 4096, 4096), '-c', sm.fill(0x32, 512, 512), small));
    assert.equal(sha256(await readWholeDisk(small, { readOnly: true })), sha256(sm.bytes));
    assert.deepEqual(vhdxReaderDigest([small, base.path]), { digest: sha256(sm.bytes), size: 6 * MiB });
    assert.deepEqual(pyvhdiDigest([small, base.path]), { digest: sha256(sm.bytes), size: 6 * MiB }, 'libvhdi reads a smaller child whole');
    const r = vdisk('io', '-c', `read ${6 * MiB} 512`, small);
    assert.notEqual(r.status, 0, 'nothing past the child\'s own end');

    // The children check clean (the chain opens for check), and info shows each layer's own size.
    ok(vdisk('check', big));
    ok(vdisk('check', small));
    const chain = JSON.parse(vdisk('info', '--backing-chain', '--output=json', big).stdout);
    assert.deepEqual(chain.map((i: { 'virtual-size': number }) => i['virtual-size']), [12 * MiB, 8 * MiB]);

    // qemu-img's vhdx driver refuses any differencing VHDX (block/vhdx.c: has_parent is not supported): no oracle there.
    const q = run('qemu-img', ['info', '-f', 'vhdx', big], { allowFail: true });
    assert.notEqual(q.status, 0);
    assert.match(q.stderr, /not supported/i);
  } finally {
    cleanup();
  }
});

test('resize of a differencing VHDX: grows (the new area reads zeros, not the larger parent) and shrinks with --shrink', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
  const { dir, cleanup } = tempDir();
  try {
    const base = makeBase(dir);
    const child = join(dir, 'child.vhdx');
    ok(vdisk('create', '-f', 'vhdx', '-b', 'base.vhdx', child, '4M'));
    const m = new Model(4 * MiB, base.model.bytes);
    ok(vdisk('io', '-c', m.fill(0x41, 3 * MiB, 4096), child));
    // Grow past the parent's end: [4M, 8M) of the parent (0x12 at 5M..8M) must not show through.
    let r = vdisk('resize', child, '10M');
    ok(r);
    const grown = new Model(10 * MiB, m.bytes);
    assert.equal(size(child), 10 * MiB);
    assert.equal(sha256(await readWholeDisk(child, { readOnly: true })), sha256(grown.bytes));
    assert.deepEqual(vhdxReaderDigest([child, base.path]), { digest: sha256(grown.bytes), size: 10 * MiB });
    // The grown range over the parent reads zeros for libvhdi too (vdisk zeroed it in the child).
    libvhdiAgrees([child, base.path], grown.bytes, 8 * MiB);
    // Shrink needs --shrink; then the child keeps its first 2 MiB.
    r = vdisk('resize', child, '2M');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--shrink/);
    ok(vdisk('resize', '--shrink', child, '2M'));
    assert.equal(size(child), 2 * MiB);
    assert.equal(sha256(await readWholeDisk(child, { readOnly: true })), sha256(grown.bytes.subarray(0, 2 * MiB)));
    assert.deepEqual(pyvhdiDigest([child, base.path]), { digest: sha256(grown.bytes.subarray(0, 2 * MiB)), size: 2 * MiB });
    // No corruption; the dropped blocks' space is left as leaks (a VHDX shrink frees no file space; check -r leaks reclaims the last).
    const c = vdisk('check', child);
    assert.ok(c.status === 0 || c.status === 3, c.stdout + c.stderr);
  } finally {
    cleanup();
  }
});

test('growing a VHDX parent keeps its DataWriteGuid: its child still opens and reads the same (a shrink changes it)', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
  const { dir, cleanup } = tempDir();
  try {
    const base = makeBase(dir);
    const child = join(dir, 'child.vhdx');
    ok(vdisk('create', '-f', 'vhdx', '-b', 'base.vhdx', child));
    ok(vdisk('io', '-c', 'write -P 0x51 4096 4096', child));
    const before = await vdiskDigest(child);
    const guid = dataWriteGuid(base.path);
    ok(vdisk('resize', base.path, '16M'));
    assert.equal(dataWriteGuid(base.path), guid, 'no byte a child reads changed');
    assert.deepEqual(await vdiskDigest(child), before);
    assert.deepEqual(pyvhdiDigest([child, base.path]), before);
    ok(vdisk('resize', '--shrink', base.path, '7M'));
    assert.notEqual(dataWriteGuid(base.path), guid, 'a shrink changes what a child may read');
    const r = vdisk('info', '--backing-chain', child);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /not the one this image was made from/);
  } finally {
    cleanup();
  }
});

test('a VHD child of another size than its parent is refused, at create and at open, saying why and what to run', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const base = join(dir, 'base.vhd');
    ok(vdisk('create', '-f', 'vhd', '-o', 'force_size=on', base, '8M'));
    let r = vdisk('create', '-f', 'vhd', '-b', 'base.vhd', join(dir, 'big.vhd'), '16M');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /VHD specification and Windows tie/);
    assert.match(r.stderr, /vdisk resize --chain PARENT 16777216/);
    assert.match(r.stderr, /use VHDX/);
    r = vdisk('create', '-f', 'vhd', '-b', 'base.vhd', join(dir, 'small.vhd'), '4M');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /use VHDX/);
    // The same size, said or not: made.
    ok(vdisk('create', '-f', 'vhd', '-b', 'base.vhd', join(dir, 'same.vhd'), '8M'));
    const child = join(dir, 'child.vhd');
    ok(vdisk('create', '-f', 'vhd', '-b', 'base.vhd', child));
    // The parent grown alone: the child is refused, with the way out.
    ok(vdisk('resize', base, '12M'));
    r = vdisk('info', '--backing-chain', child);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /must have its parent's size/);
    assert.match(r.stderr, new RegExp(`vdisk resize --chain ${child.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} ${12 * MiB}`));
    // check --backing-chain says the same.
    r = vdisk('check', '--backing-chain', child);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /parent was grown without its children/);
    assert.match(r.stderr, /resize --chain/);
    // resize of the child alone to its parent's size works (it follows its parent), and the chain opens again.
    ok(vdisk('resize', child, '12M'));
    ok(vdisk('check', '--backing-chain', child));
  } finally {
    cleanup();
  }
});
