import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { createImage } from '../src/ops/create.js';
import { openChain, openLayer } from '../src/chain/open.js';
import { compactImage } from '../src/ops/compact.js';
import { checkImage, checkExitCode } from '../src/ops/check.js';
import { pyvhdiDigest, requireTool, tempDir, vdiskDigest } from './helpers/oracle.js';
import { vdisk } from './helpers/cli.js';
import { randomBytes, rng } from './helpers/random.js';

/*
 * compact --mode zero in a differencing layer works on sector runs: zeros
 * the layer holds over zeros in the parent get their bitmap bits cleared
 * (the disk then reads the parent's zeros there: the same content), while a
 * zero run over parent data stays. Checked against a model of the disk
 * (every write applied to a byte array), vdisk's own reading, libvhdi
 * (pyvhdi), and the layer's block status (which runs now defer to the
 * parent). qemu-img opens neither format's differencing disks.
 */

const MiB = 1 << 20;
const KiB = 1024;
const SIZE = 16 * MiB;

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function apply(path: string, model: Uint8Array, writes: Array<[number, Uint8Array]>): Promise<void> {
  const c = await openChain(path);
  try {
    for (const [off, d] of writes) {
      await c.write(off, d);
      model.set(d, off);
    }
  } finally {
    await c.close();
  }
}

/** The layer's own extents over [offset, offset+length), as "kind@start+length" relative to offset. */
async function layerKinds(path: string, offset: number, length: number): Promise<string[]> {
  const l = await openLayer(path, { readOnly: true });
  try {
    return (await l.blockStatus(offset, length)).map((e) => `${e.kind}@${e.offset - offset}+${e.length}`);
  } finally {
    await l.close();
  }
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

for (const format of ['vhd', 'vhdx'] as const) {
  test(`compact --mode zero on a differencing ${format}: zero sector runs over parent zeros go back to the parent, runs over parent data stay; model, vdisk and libvhdi agree`, async (t) => {
    if (!requireTool(t, 'pyvhdi')) return;
    const d = tempDir();
    t.after(d.cleanup);
    const base = join(d.dir, `base.${format}`);
    const child = join(d.dir, `child.${format}`);
    // force_size: a VHD's size is exactly SIZE (not rounded to a CHS geometry), as the model's.
    const o: Record<string, string> = format === 'vhdx' ? { block_size: '1M' } : { block_size: '1048576', force_size: 'on' };
    const model = new Uint8Array(SIZE);
    const r = rng(21);
    await createImage({ path: base, format, size: SIZE, options: o });
    await apply(base, model, [
      [0, randomBytes(r, 4 * MiB)],
      [10 * MiB, randomBytes(r, 512 * KiB)],
    ]);
    await createImage({ path: child, format, backing: { path: base }, options: o });
    await apply(child, model, [
      // Block 0, over parent data: a zero run there must stay.
      [0, concat(randomBytes(r, 256 * KiB), new Uint8Array(256 * KiB), randomBytes(r, 512 * KiB))],
      // Block 3, partly: zeros over parent data stay.
      [3 * MiB + 4096, new Uint8Array(8192)],
      // Block 5, written whole (VHDX: FULLY_PRESENT), over parent zeros: its zero run goes.
      [5 * MiB, concat(randomBytes(r, 128 * KiB), new Uint8Array(384 * KiB), randomBytes(r, 512 * KiB))],
      // Block 10, whole: zeros over parent data [0, 512K) stay, zeros over parent zeros around a 4 KiB piece of data go.
      [10 * MiB, new Uint8Array(MiB)],
      [10 * MiB + 900 * KiB, randomBytes(r, 4096)],
      // Block 12, sector runs: zeros, one sector of data, zeros (over parent zeros).
      [12 * MiB + 512, new Uint8Array(1024)],
      [12 * MiB + 1536, randomBytes(r, 512)],
      [12 * MiB + 2048, new Uint8Array(3072)],
      // Block 14: only zeros over parent zeros: the whole block goes.
      [14 * MiB + 8192, new Uint8Array(64 * KiB)],
    ]);
    const want = sha(model);
    assert.equal((await vdiskDigest(child)).digest, want);
    // libvhdi (20210425) reads a VHD differencing block's clear-bit sectors from the child: compared with itself.
    const libBefore = pyvhdiDigest([child, base]).digest;
    if (format === 'vhdx') assert.equal(libBefore, want);
    const baseBytes = readFileSync(base);
    const childBefore = readFileSync(child);
    const runs = 384 * KiB + (900 - 512) * KiB + (1024 - 904) * KiB + 1024 + 3072;

    const dry = await compactImage({ path: child, modes: ['zero'], dryRun: true });
    assert.equal(dry.zeroRunBytes, runs, JSON.stringify(dry));
    assert.ok(readFileSync(child).equals(childBefore), 'a dry run writes nothing');

    const res = JSON.parse(vdisk('compact', '--mode', 'zero', '--output=json', child).stdout);
    assert.equal(res['zero-run-bytes'], runs, JSON.stringify(res));
    assert.equal(res['blocks-released'].zero, 1, 'block 14');
    assert.ok(readFileSync(base).equals(baseBytes), 'the parent is not written');
    assert.equal((await vdiskDigest(child)).digest, want, 'vdisk reads the model');
    const libAfter = pyvhdiDigest([child, base]).digest;
    assert.equal(libAfter, format === 'vhdx' ? want : libBefore, 'libvhdi reads what it read before');
    assert.equal(checkExitCode(await checkImage({ path: child })), 0);

    // Which sectors the layer still answers for.
    assert.deepEqual(await layerKinds(child, 0, MiB), [`data@0+${MiB}`], 'block 0: zeros over parent data stay');
    assert.ok((await layerKinds(child, 3 * MiB, MiB)).includes('data@4096+8192'), 'block 3: zeros over parent data stay');
    assert.deepEqual(await layerKinds(child, 5 * MiB, MiB), [`data@0+${128 * KiB}`, `unallocated@${128 * KiB}+${384 * KiB}`, `data@${512 * KiB}+${512 * KiB}`]);
    assert.deepEqual(await layerKinds(child, 10 * MiB, MiB), [
      `data@0+${512 * KiB}`,
      `unallocated@${512 * KiB}+${388 * KiB}`,
      `data@${900 * KiB}+4096`,
      `unallocated@${904 * KiB}+${120 * KiB}`,
    ]);
    assert.deepEqual((await layerKinds(child, 12 * MiB, 4096)).filter((k) => !k.startsWith('unallocated')), ['data@1536+512']);
    assert.deepEqual(await layerKinds(child, 14 * MiB, MiB), [`unallocated@0+${MiB}`]);

    // Nothing left to do; the human report names the runs.
    const again = await compactImage({ path: child, modes: ['zero'] });
    assert.equal(again.zeroRunBytes, 0);
    assert.equal(again.released.zero, 0);
    assert.equal((await vdiskDigest(child)).digest, want);
  });
}

test('compact --mode zero on a differencing vhdx whose blocks are all FULLY_PRESENT (no sector bitmap block): zero runs stay, nothing is added to the file', async (t) => {
  const d = tempDir();
  t.after(d.cleanup);
  const base = join(d.dir, 'base.vhdx');
  const child = join(d.dir, 'child.vhdx');
  const model = new Uint8Array(SIZE);
  await createImage({ path: base, format: 'vhdx', size: SIZE, options: { block_size: '1M' } });
  await apply(base, model, [[0, randomBytes(rng(4), MiB)]]);
  await createImage({ path: child, format: 'vhdx', backing: { path: base }, options: { block_size: '1M' } });
  await apply(child, model, [[2 * MiB, concat(randomBytes(rng(3), 512 * KiB), new Uint8Array(512 * KiB))]]);
  const before = readFileSync(child).length;
  // Not read with libvhdi: 20210425 misreads NOT_PRESENT blocks of a differencing VHDX whose chunk has no
  // sector bitmap block (zeros instead of the parent's bytes in part of block 0, differing from run to run,
  // before any compaction).
  const res = await compactImage({ path: child, modes: ['zero'] });
  assert.equal(res.zeroRunBytes, 0);
  assert.ok(readFileSync(child).length <= before);
  assert.equal((await vdiskDigest(child)).digest, sha(model));
});
