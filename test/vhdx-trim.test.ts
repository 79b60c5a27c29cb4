import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { createImage } from '../src/ops/create.js';
import { openChain } from '../src/chain/open.js';
import { commitImage } from '../src/ops/commit.js';
import { pyvhdiDigest, qemuImg, requireTool, sha256, tempDir, vdiskDigest } from './helpers/oracle.js';
import { vdisk } from './helpers/cli.js';
import { randomBytes, rng } from './helpers/random.js';
import { startNbdServer } from '../src/nbd/server.js';
import { NbdClient } from './helpers/nbd-client.js';

const MiB = 1 << 20;

/** The layer's own states over the disk: what blockStatus answers, by kind, per MiB block. */
async function layerKinds(path: string): Promise<string[]> {
  const c = await openChain(path, { readOnly: true, layerOnly: true });
  try {
    const out: string[] = [];
    for (let b = 0; b < c.size / MiB; b++) {
      const ex = await c.top.blockStatus(b * MiB, MiB);
      out.push(ex.map((e) => e.kind).join('+'));
    }
    return out;
  } finally {
    await c.close();
  }
}

test('VHDX dynamic discard: whole blocks become UNMAPPED (zeros, no data), partial blocks are left alone; qemu-img reads the same', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  t.after(d.cleanup);
  const img = join(d.dir, 'd.vhdx');
  await createImage({ path: img, format: 'vhdx', size: 8 * MiB, options: { block_size: '1M' } });
  const data = randomBytes(rng(1), 4 * MiB);
  const c = await openChain(img);
  await c.write(0, data);
  assert.equal(typeof c.top.trim, 'function');
  // Blocks 1 and 2 whole, plus the end of block 0 and the start of block 3 (left alone).
  await c.trim(MiB - 4096, 2 * MiB + 8192);
  await c.close();
  const expected = new Uint8Array(8 * MiB);
  expected.set(data);
  expected.fill(0, MiB, 3 * MiB);
  assert.deepEqual(await layerKinds(img), ['data', 'zero', 'zero', 'data', 'zero', 'zero', 'zero', 'zero']);
  const raw = join(d.dir, 'expected.raw');
  writeFileSync(raw, expected);
  qemuImg('compare', '-f', 'vhdx', '-F', 'raw', img, raw);
  qemuImg('check', '-f', 'vhdx', img);
  // The CLI's io discard does the same.
  const r = vdisk('io', '-c', 'discard 0 1048576', img);
  assert.equal(r.status, 0, r.stderr);
  expected.fill(0, 0, MiB);
  writeFileSync(raw, expected);
  qemuImg('compare', '-f', 'vhdx', '-F', 'raw', img, raw);
  assert.equal((await layerKinds(img))[0], 'zero');
});

test('VHDX differencing discard: whole blocks read the parent again, partial blocks clear their sector bits; libvhdi agrees', async (t) => {
  if (!requireTool(t, 'pyvhdi')) return;
  const d = tempDir();
  t.after(d.cleanup);
  const base = join(d.dir, 'base.vhdx');
  const child = join(d.dir, 'child.vhdx');
  await createImage({ path: base, format: 'vhdx', size: 8 * MiB, options: { block_size: '1M' } });
  const parentData = randomBytes(rng(2), 8 * MiB);
  let c = await openChain(base);
  await c.write(0, parentData);
  await c.close();
  await createImage({ path: child, format: 'vhdx', backing: { path: base }, options: { block_size: '1M' } });
  const childData = randomBytes(rng(3), 5 * MiB);
  c = await openChain(child);
  await c.write(0, childData); // blocks 0..4 FULLY_PRESENT
  await c.write(6 * MiB + 512, childData.subarray(0, 4096)); // block 6 PARTIALLY_PRESENT
  // Whole block 1; the second half of block 2 (FULLY -> PARTIALLY); all of block 6's written sectors (-> NOT_PRESENT).
  await c.trim(MiB, MiB);
  await c.trim(2 * MiB + MiB / 2, MiB / 2);
  await c.trim(6 * MiB, MiB / 2);
  // Unaligned edges: only whole sectors inside are discarded (sectors 1..2 of block 3).
  await c.trim(3 * MiB + 100, 1500);
  await c.close();
  const expected = parentData.slice();
  expected.set(childData);
  expected.set(parentData.subarray(MiB, 2 * MiB), MiB);
  expected.set(parentData.subarray(2.5 * MiB, 3 * MiB), 2.5 * MiB);
  expected.set(parentData.subarray(3 * MiB + 512, 3 * MiB + 1536), 3 * MiB + 512);
  const got = await vdiskDigest(child);
  assert.equal(got.digest, sha256(expected));
  assert.equal(pyvhdiDigest([child, base]).digest, sha256(expected), 'libvhdi reads the same disk');
  const kinds = await layerKinds(child);
  assert.equal(kinds[1], 'unallocated');
  assert.equal(kinds[2], 'data+unallocated');
  assert.equal(kinds[6], 'unallocated', 'a block with no bit left set becomes NOT_PRESENT');
  assert.equal(vdisk('check', child).status, 0);
});

test('VHDX fixed disks have no discard; commit empties a VHDX top layer', async () => {
  const d = tempDir();
  try {
    const fixed = join(d.dir, 'f.vhdx');
    await createImage({ path: fixed, format: 'vhdx', size: 4 * MiB, options: { subformat: 'fixed', block_size: '1M' } });
    let c = await openChain(fixed);
    assert.equal(c.top.trim, undefined, 'LeaveBlocksAllocated: the blocks stay');
    await c.close();

    const base = join(d.dir, 'b.vhdx');
    const top = join(d.dir, 't.vhdx');
    await createImage({ path: base, format: 'vhdx', size: 4 * MiB, options: { block_size: '1M' } });
    await createImage({ path: top, format: 'vhdx', backing: { path: base }, options: { block_size: '1M' } });
    c = await openChain(top);
    await c.write(4096, randomBytes(rng(4), 2 * MiB));
    await c.close();
    const before = await vdiskDigest(top);
    const r = await commitImage({ path: top });
    assert.equal(r.emptied, true);
    assert.deepEqual(await layerKinds(top), ['unallocated', 'unallocated', 'unallocated', 'unallocated']);
    assert.equal((await vdiskDigest(top)).digest, before.digest);
  } finally {
    d.cleanup();
  }
});

test('NBD TRIM on a VHDX export: offered, and whole blocks read zeros and hold no data afterwards', async () => {
  const d = tempDir();
  try {
    const path = join(d.dir, 'n.vhdx');
    await createImage({ path, format: 'vhdx', size: 8 * MiB, options: { block_size: '1M' } });
    const server = await startNbdServer({ path, format: 'vhdx', port: 0, exportName: 'disk', persistent: true });
    try {
      const c = await NbdClient.connect({ port: server.port, socketPath: server.socketPath, exportName: 'disk' });
      await c.write(0, new Uint8Array(4 * MiB).fill(5));
      await c.trim(MiB, 2 * MiB);
      assert.ok((await c.read(MiB, 2 * MiB)).every((x) => x === 0));
      assert.ok((await c.read(0, MiB)).every((x) => x === 5));
      await c.disconnect();
    } finally {
      await server.close();
    }
    assert.deepEqual((await layerKinds(path)).slice(0, 4), ['data', 'zero', 'zero', 'data']);
  } finally {
    d.cleanup();
  }
});
