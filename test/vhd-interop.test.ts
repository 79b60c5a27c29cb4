import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, openSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { openChain } from '../src/chain/open.js';
import { createImage } from '../src/ops/create.js';
import { REPO_ROOT } from './helpers/corpus.js';
import { requireTool, tempDir, run, qemuImg, qemuDigest, vdiskDigest, sha256, pyvhdiDigest } from './helpers/oracle.js';
import { rng, randomBytes, randInt } from './helpers/random.js';

const ORACLE = join(REPO_ROOT, 'test', 'oracles', 'vhd_reader.py');
const MiB = 1 << 20;
/** 10 MiB rounded up to a whole CHS geometry (vdisk and qemu-img both do it). */
const SIZE = 10514432;

function specDigest(files: string[]): { digest: string; size: number } {
  const out = run('python3', [ORACLE, ...files]).stdout.trim().split(/\s+/);
  return { digest: out[0], size: Number(out[1]) };
}

/** Random writes: unaligned offsets and lengths, some crossing 2 MiB block boundaries. */
function workload(seed: number, size: number, count: number, aligned = 1): Array<[number, Uint8Array]> {
  const r = rng(seed);
  const out: Array<[number, Uint8Array]> = [];
  for (let i = 0; i < count; i++) {
    let off: number;
    let len: number;
    if (i % 4 === 0) {
      const boundary = randInt(r, 1, Math.floor(size / (2 * MiB)) - 1) * 2 * MiB; // straddle a block boundary
      off = boundary - randInt(r, 1, 8000);
      len = randInt(r, 1, 20000);
    } else {
      off = randInt(r, 0, size - 1);
      len = randInt(r, 1, 70000);
    }
    off = Math.floor(off / aligned) * aligned;
    len = Math.max(aligned, Math.floor(len / aligned) * aligned);
    len = Math.min(len, size - off);
    out.push([off, randomBytes(r, len)]);
  }
  return out;
}

async function writeThrough(path: string, writes: Array<[number, Uint8Array]>, reference?: Uint8Array): Promise<void> {
  const c = await openChain(path);
  try {
    for (const [off, data] of writes) {
      await c.write(off, data);
      reference?.set(data, off);
    }
  } finally {
    await c.close();
  }
}

for (const subformat of ['dynamic', 'fixed']) {
  test(`qemu-img reads what vdisk writes: ${subformat}, random unaligned and block-crossing writes`, async (t) => {
    if (!requireTool(t, 'qemu-img')) return;
    const d = tempDir();
    try {
      const img = join(d.dir, 'ours.vhd');
      const created = await createImage({ path: img, format: 'vhd', size: 10 * MiB, options: { subformat } });
      assert.equal(created.size, SIZE, 'rounded to the CHS geometry like qemu-img');
      const ref = new Uint8Array(SIZE);
      await writeThrough(img, workload(subformat === 'fixed' ? 11 : 12, SIZE, 40), ref);
      const refPath = join(d.dir, 'ref.raw');
      writeFileSync(refPath, ref);
      const cmp = run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', img, refPath], { allowFail: true });
      assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
      const info = JSON.parse(qemuImg('info', '--output=json', '-f', 'vpc', img));
      assert.equal(info['virtual-size'], SIZE);
      // Our own whole-disk read agrees as well (after reopening).
      assert.equal((await vdiskDigest(img)).digest, sha256(ref));
      if (subformat === 'dynamic') assert.equal(specDigest([img]).digest, sha256(ref));
    } finally {
      d.cleanup();
    }
  });

  test(`vdisk reads what qemu-img writes: ${subformat}`, async (t) => {
    if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
    const d = tempDir();
    try {
      // A raw source with data and holes, converted by qemu-img.
      const raw = join(d.dir, 'src.raw');
      const fd = openSync(raw, 'w');
      ftruncateSync(fd, SIZE);
      for (const [off, data] of workload(21, SIZE, 25)) writeSync(fd, data, 0, data.length, off);
      closeSync(fd);
      const img = join(d.dir, 'theirs.vhd');
      qemuImg('convert', '-f', 'raw', '-O', 'vpc', '-o', `subformat=${subformat}`, raw, img);
      const got = await vdiskDigest(img);
      assert.equal(got.size, SIZE);
      assert.equal(got.digest, sha256(readFileSync(raw)));
      // qemu-io pattern writes on top, unaligned; then both read the same.
      run('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x5a 1000 3000', '-c', `write -P 0xa5 ${2 * MiB - 700} 5000`, '-c', `write -P 0x33 ${SIZE - 4096} 4096`, img]);
      const q = await qemuDigest(img, 'vpc');
      const v = await vdiskDigest(img);
      assert.deepEqual(v, q);
    } finally {
      d.cleanup();
    }
  });
}

/** Build base <- c1 <- ... <- c_depth with random unaligned writes at every level; returns files top first and the flat reference. */
async function buildChain(dir: string, depth: number, seed: number, aligned: number): Promise<{ files: string[]; ref: Uint8Array }> {
  const size = 8 * MiB;
  const base = join(dir, 'base.vhd');
  const created = await createImage({ path: base, format: 'vhd', size, options: { force_size: 'on' } });
  assert.equal(created.size, size);
  const ref = new Uint8Array(size);
  await writeThrough(base, workload(seed, size, 12, aligned), ref);
  const files = [base];
  for (let i = 1; i <= depth; i++) {
    const child = join(dir, `child${i}.vhd`);
    // Relative backing name: the child records W2ru relative to its folder and W2ku absolute.
    await createImage({ path: child, format: 'vhd', backing: { path: `child${i - 1}.vhd`.replace('child0', 'base'), format: 'vhd' } });
    await writeThrough(child, workload(seed * 100 + i, size, 12, aligned), ref);
    files.unshift(child);
  }
  return { files, ref };
}

for (const depth of [1, 2, 5]) {
  test(`differencing chain of depth ${depth} with random unaligned writes reads the same through vdisk and the spec reader`, async () => {
    const d = tempDir();
    try {
      const { files, ref } = await buildChain(d.dir, depth, 300 + depth, 1);
      const chain = await openChain(files[0], { readOnly: true });
      assert.equal(chain.layers.length, depth + 1);
      await chain.close();
      const ours = await vdiskDigest(files[0]);
      assert.equal(ours.digest, sha256(ref));
      assert.deepEqual(specDigest(files), ours);
    } finally {
      d.cleanup();
    }
  });
}

test('differencing chains with 4 KiB-aligned writes read the same through vdisk and libvhdi (set_parent)', async (t) => {
  if (!requireTool(t, 'pyvhdi')) return;
  const d = tempDir();
  try {
    const { files, ref } = await buildChain(d.dir, 3, 77, 4096);
    const ours = await vdiskDigest(files[0]);
    assert.equal(ours.digest, sha256(ref));
    assert.deepEqual(pyvhdiDigest(files), ours);
    assert.deepEqual(specDigest(files), ours);
  } finally {
    d.cleanup();
  }
});
