import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, ftruncateSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { createImage } from '../src/ops/create.js';
import { openChain, openLayer } from '../src/chain/open.js';
import { compactImage } from '../src/ops/compact.js';
import { checkImage, checkExitCode } from '../src/ops/check.js';
import { isBlockError } from '../src/core/errors.js';
import { compareImages } from '../src/ops/compare.js';
import { pyvhdiDigest, qemuImg, requireTool, run, tempDir, vdiskDigest } from './helpers/oracle.js';
import { VDISK_BIN, vdisk } from './helpers/cli.js';
import { openFileStore } from '../src/io/file-store.js';
import { corpusDir } from './helpers/corpus.js';
import { randomBytes, rng } from './helpers/random.js';

const MiB = 1 << 20;
const QEMU_FMT: Record<string, string> = { vhd: 'vpc', vhdx: 'vhdx' };

async function write(path: string, ops: Array<[number, Uint8Array | number]>): Promise<void> {
  const c = await openChain(path);
  try {
    for (const [off, d] of ops) {
      if (typeof d === 'number') await c.trim(off, d);
      else await c.write(off, d);
    }
  } finally {
    await c.close();
  }
}

/** Format-specific facts of one layer (identity fields). */
async function specific(path: string): Promise<Record<string, unknown>> {
  const l = await openLayer(path, { readOnly: true });
  try {
    return { ...l.info().specific, identity: l.identity };
  } finally {
    await l.close();
  }
}

/**
 * A dynamic disk with 2 MiB blocks: data, zero-filled (allocated) and, for
 * VHDX, discarded blocks interleaved, so that compaction releases blocks in
 * the middle and moves the ones at the end of the file.
 */
async function dynamicFixture(dir: string, format: 'vhd' | 'vhdx'): Promise<string> {
  const path = join(dir, `d.${format}`);
  await createImage({ path, format, size: 32 * MiB, options: format === 'vhdx' ? { block_size: '2M' } : { block_size: '2097152' } });
  const r = rng(format.length);
  await write(path, [
    [0, randomBytes(r, 2 * MiB)],
    [2 * MiB, new Uint8Array(2 * MiB)], // zero-filled: released by zero
    [4 * MiB, randomBytes(r, 2 * MiB)],
    [8 * MiB, new Uint8Array(4 * MiB)], // two more zero blocks
    [16 * MiB + 4096, randomBytes(r, 8192)], // a block holding a little data
    [24 * MiB, randomBytes(r, 2 * MiB)],
    [28 * MiB, randomBytes(r, 4 * MiB)], // the last two blocks: moved into the holes
  ]);
  return path;
}

for (const format of ['vhd', 'vhdx'] as const) {
  test(`compact ${format} dynamic: zero blocks released, the file shrinks in place, qemu-img reads the same disk, identity kept`, async (t) => {
    if (!requireTool(t, 'qemu-img')) return;
    const d = tempDir();
    t.after(d.cleanup);
    const path = await dynamicFixture(d.dir, format);
    const raw = join(d.dir, 'before.raw');
    qemuImg('convert', '-f', QEMU_FMT[format], '-O', 'raw', path, raw);
    const before = statSync(path).size;
    const id = await specific(path);
    const fileBefore = readFileSync(path);
    const dry = await compactImage({ path, dryRun: true });
    assert.ok(readFileSync(path).equals(fileBefore), 'a dry run writes nothing');
    assert.equal(dry.released.zero, 3);
    const r = await compactImage({ path });
    assert.equal(r.released.zero, 3);
    assert.equal(r.released.trim, 0);
    assert.ok(r.moved >= 2, `moved ${r.moved}`);
    assert.equal(r.bytesBefore, before);
    assert.equal(r.bytesAfter, statSync(path).size);
    assert.equal(r.bytesAfter, dry.bytesAfter, 'the dry run predicted the size');
    assert.ok(r.bytesAfter <= before - 3 * 2 * MiB, `${before} -> ${r.bytesAfter}`);
    qemuImg('compare', '-f', QEMU_FMT[format], '-F', 'raw', path, raw);
    if (format === 'vhdx') qemuImg('check', '-f', 'vhdx', path); // qemu-img has no check for vpc
    assert.equal(checkExitCode(await checkImage({ path })), 0);
    const id2 = await specific(path);
    assert.equal(id2.identity, id.identity, 'VHD UUID / VHDX DataWriteGuid kept');
    if (format === 'vhdx') {
      assert.equal(id2['data-write-guid'], id['data-write-guid']);
      assert.notEqual(id2['file-write-guid'], id['file-write-guid'], 'FileWriteGuid changes (2.2.2)');
    }
    // Compacting again finds nothing more.
    const again = await compactImage({ path });
    assert.equal(again.released.zero + again.moved, 0);
    assert.equal(again.bytesAfter, r.bytesAfter);
    // And the compacted image takes writes (new blocks) and still reads right.
    await write(path, [[2 * MiB, new Uint8Array(4096).fill(7)]]);
    const c = await openChain(path, { readOnly: true });
    const b = new Uint8Array(4096);
    await c.read(2 * MiB, b);
    await c.close();
    assert.ok(b.every((x) => x === 7));
    assert.equal(checkExitCode(await checkImage({ path })), 0);
  });

  test(`compact ${format} differencing: zero blocks over zeros and discarded blocks go, a zero block over parent data stays; libvhdi reads the same; the parent is not written`, async (t) => {
    if (!requireTool(t, 'pyvhdi')) return;
    const d = tempDir();
    t.after(d.cleanup);
    const base = join(d.dir, `base.${format}`);
    const child = join(d.dir, `child.${format}`);
    const o = format === 'vhdx' ? { block_size: '1M' } : { block_size: '1048576' };
    await createImage({ path: base, format, size: 16 * MiB, options: o });
    const r = rng(7);
    await write(base, [[0, randomBytes(r, 4 * MiB)]]); // blocks 0..3 hold data; 4.. read zeros
    await createImage({ path: child, format, backing: { path: base }, options: o });
    await write(child, [
      [0, new Uint8Array(MiB)], // zeros over parent data: must stay
      [MiB + 512, new Uint8Array(4096)], // part of a block, zeros over data: stays
      [5 * MiB, new Uint8Array(MiB)], // zeros over zeros: released by zero
      [6 * MiB, randomBytes(r, MiB)],
      [7 * MiB, randomBytes(r, MiB)],
      [7 * MiB, MiB], // discarded: every bit clear (trim)
      [9 * MiB + 4096, new Uint8Array(8192)], // partial zeros over zeros: released
      [14 * MiB, randomBytes(r, 2 * MiB)],
    ]);
    const baseBytes = readFileSync(base);
    const digest = (await vdiskDigest(child)).digest;
    // libvhdi (20210425) reads the unwritten sectors of a partly written VHD differencing block from the
    // child, not the parent: its reading is compared with itself, before and after.
    const libvhdi = pyvhdiDigest([child, base]).digest;
    if (format === 'vhdx') assert.equal(libvhdi, digest);
    const id = (await specific(child)).identity;
    const res = await compactImage({ path: child });
    assert.equal(res.released.zero, 2, JSON.stringify(res));
    // VHD keeps a discarded block (all bits clear); VHDX already made it NOT_PRESENT at discard time.
    assert.equal(res.released.trim, format === 'vhd' ? 1 : 0);
    assert.ok(readFileSync(base).equals(baseBytes), 'the parent file is not written');
    assert.equal((await vdiskDigest(child)).digest, digest);
    assert.equal(pyvhdiDigest([child, base]).digest, libvhdi, 'libvhdi reads the same disk');
    assert.equal((await specific(child)).identity, id);
    assert.equal(checkExitCode(await checkImage({ path: child })), 0);
    const kinds = async (off: number) => {
      const l = await openLayer(child, { readOnly: true });
      const e = await l.blockStatus(off, MiB);
      await l.close();
      return e.map((x) => x.kind).join('+');
    };
    assert.equal(await kinds(0), 'data', 'zeros over parent data stay');
    assert.equal(await kinds(5 * MiB), 'unallocated');
  });

  test(`a child of a compacted ${format} base still opens (parent id check) and reads the same`, async (t) => {
    if (!requireTool(t, 'pyvhdi')) return;
    const d = tempDir();
    t.after(d.cleanup);
    const base = await dynamicFixture(d.dir, format);
    const child = join(d.dir, `child.${format}`);
    await createImage({ path: child, format, backing: { path: base } });
    await write(child, [[3 * MiB, randomBytes(rng(9), MiB)]]);
    const digest = (await vdiskDigest(child)).digest;
    const r = await compactImage({ path: base });
    assert.ok(r.released.zero > 0 && r.moved > 0);
    assert.equal((await vdiskDigest(child)).digest, digest, 'opens without --ignore-parent-id and reads the same');
    assert.equal(pyvhdiDigest([child, base]).digest, digest, 'libvhdi too');
  });
}

test('compact: fixed images have nothing to compact (exit 0); read-only opens, unknown modes and raw are clear', async (t) => {
  const d = tempDir();
  t.after(d.cleanup);
  for (const [format, opts] of [['vhd', { subformat: 'fixed' }], ['vhdx', { subformat: 'fixed', block_size: '1M' }]] as const) {
    const path = join(d.dir, `f.${format}`);
    await createImage({ path, format, size: 4 * MiB, options: opts });
    const r = vdisk('compact', path);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^Nothing to compact: a fixed .* keeps every block allocated\.$/m);
    const j = JSON.parse(vdisk('compact', '--output=json', path).stdout);
    assert.match(j['nothing-to-compact'], /fixed/);
    assert.equal(j['bytes-after'], j['bytes-before']);
  }
  const dyn = join(d.dir, 'd.vhdx');
  await createImage({ path: dyn, format: 'vhdx', size: 4 * MiB });
  await assert.rejects(compactImage({ path: dyn, openOptions: { readOnly: true } }), (e: unknown) => isBlockError(e, 'read-only') && /read-only/.test(e.message));
  const bad = vdisk('compact', '--mode', 'zero,bogus', dyn);
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /unknown compact mode 'bogus'/);
  assert.equal(bad.stderr.trim().split('\n').length, 1);
  const dry = vdisk('compact', '--dry-run', '--mode', 'trim', dyn);
  assert.equal(dry.status, 0, dry.stderr);
  assert.match(dry.stdout, /^Would release 0 block\(s\) \(trim: 0\)/);
});

test('compact on copies of the corpus images: every dynamic and fixed VHD/VHDX reads the same after (vdisk compare, qemu-img compare)', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const root = corpusDir();
  const d = tempDir();
  t.after(d.cleanup);
  let compacted = 0;
  let released = 0;
  for (const sub of readdirSync(root)) {
    if (!statSync(join(root, sub)).isDirectory()) continue;
    for (const name of readdirSync(join(root, sub))) {
      if (!/\.(vhd|vhdx)$/.test(name)) continue;
      const src = join(root, sub, name);
      try {
        const l = await openLayer(src, { readOnly: true });
        const hasBacking = l.backing !== null;
        await l.close();
        if (hasBacking) continue; // differencing corpus files need their parents beside them: covered above
      } catch {
        continue; // the corpus's deliberately bad images
      }
      const copy = join(d.dir, `${sub}-${name}`);
      copyFileSync(src, copy);
      const r = await compactImage({ path: copy });
      const same = await compareImages(src, copy);
      assert.ok(same.identical, `${sub}/${name}: ${same.message}`);
      // qemu-img opens what it can read-only (not a file whose log needs replaying): it reads the original and the compacted copy alike.
      const format = name.endsWith('.vhdx') ? 'vhdx' : 'vpc';
      const q = run('qemu-img', ['compare', '-f', format, '-F', format, src, copy], { allowFail: true });
      if (!/log that needs to be replayed/.test(q.stderr)) assert.equal(q.status, 0, `${sub}/${name}: qemu-img compare: ${q.stdout}${q.stderr}`);
      assert.ok(r.bytesAfter <= r.bytesBefore);
      compacted++;
      released += r.released.zero + r.released.trim;
      t.diagnostic(`${sub}/${name}: ${r.nothingToCompact ?? `released ${JSON.stringify(r.released)}, moved ${r.moved}, ${r.bytesBefore} -> ${r.bytesAfter}`}`);
    }
  }
  assert.ok(compacted >= 20, `only ${compacted} corpus images compacted`);
  assert.ok(released > 0, 'some corpus image had blocks to release');
});

/** `vdisk compact --output=json` with extra environment; its JSON report. */
function compactCli(path: string, env: NodeJS.ProcessEnv, ...args: string[]): { 'blocks-released': Record<string, number>; 'blocks-moved': number; 'bytes-after': number } {
  const r = spawnSync(process.execPath, [VDISK_BIN, 'compact', '--output=json', ...args, path], { encoding: 'utf8', env: { ...process.env, ...env } });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

test('compact --mode zero: the native scan (native/copy.c zeroScan) releases exactly the blocks the JavaScript checks release; data past the first page and in the last byte of a block over 64 MiB is found', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  t.after(d.cleanup);
  // 384 MiB, sparse: a byte just past the scan's first page of block 0, nothing in 128-256 MiB, the very last byte set.
  const raw = join(d.dir, 'in.raw');
  const fd = openSync(raw, 'w');
  ftruncateSync(fd, 384 * MiB);
  writeSync(fd, Uint8Array.of(7), 0, 1, 4096 + 100);
  writeSync(fd, Uint8Array.of(9), 0, 1, 384 * MiB - 1);
  closeSync(fd);
  // Every block allocated, the zeros written (-S 0): VHD 2 MiB blocks; VHDX 128 MiB blocks, each scanned as two 64 MiB ranges.
  for (const [format, opts, expected] of [
    ['vhd', 'subformat=dynamic', 192 - 2],
    ['vhdx', 'block_size=128M', 1],
  ] as const) {
    const image = join(d.dir, `in.${format}`);
    qemuImg('convert', '-q', '-S', '0', '-f', 'raw', '-O', QEMU_FMT[format], '-o', opts, raw, image);
    const before = (await vdiskDigest(image)).digest;
    const results = [];
    for (const env of [{}, { VDISK_NATIVE: '0' }]) {
      const copy = join(d.dir, `c${results.length}.${format}`);
      copyFileSync(image, copy);
      const report = compactCli(copy, env, '--mode', 'zero');
      results.push({ released: report['blocks-released'], moved: report['blocks-moved'], after: report['bytes-after'], bytes: statSync(copy).size });
      assert.equal((await vdiskDigest(copy)).digest, before, `${format} ${JSON.stringify(env)}: same disk`);
      run('qemu-img', ['compare', '-q', '-f', 'raw', '-F', QEMU_FMT[format], raw, copy]);
    }
    assert.equal(results[0].released.zero, expected, `${format}: blocks released`);
    assert.deepEqual(results[0], results[1], `${format}: native and JavaScript scans agree`);
  }
});

test('compact -t unsafe: the writable store is opened without syncs; same disk, same size as the default; -t takes only unsafe or writeback', async (t) => {
  const d = tempDir();
  t.after(d.cleanup);
  const image = join(d.dir, 'a.vhd');
  await createImage({ path: image, format: 'vhd', size: 32 * MiB, options: { block_size: '1048576' } });
  const r = rng(7);
  await write(image, Array.from({ length: 32 }, (_, b) => [b * MiB, b % 2 ? new Uint8Array(MiB) : randomBytes(r, MiB)] as [number, Uint8Array]));
  const before = (await vdiskDigest(image)).digest;
  const sizes: number[] = [];
  for (const cache of ['writeback', 'unsafe'] as const) {
    const copy = join(d.dir, `${cache}.vhd`);
    copyFileSync(image, copy);
    const seen: boolean[] = [];
    const res = await compactImage({
      path: copy,
      modes: ['zero'],
      cache,
      openStore: (p, o) => {
        if (!o.readOnly) seen.push(Boolean(o.noSync));
        return openFileStore(p, o);
      },
    });
    assert.equal(res.released.zero, 16);
    assert.ok(seen.length > 0 && seen.every((s) => s === (cache === 'unsafe')), `${cache}: writable opens with noSync ${JSON.stringify(seen)}`);
    assert.equal((await vdiskDigest(copy)).digest, before);
    assert.equal(checkExitCode(await checkImage({ path: copy })), 0);
    sizes.push(statSync(copy).size);
  }
  assert.equal(sizes[0], sizes[1]);
  const bad = vdisk('compact', '-t', 'none', image);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /argument 'none' is invalid\. Allowed choices are unsafe, writeback/);
  await assert.rejects(compactImage({ path: image, cache: 'none' as 'unsafe' }), (e) => isBlockError(e) && /unknown cache mode 'none'/.test(e.message));
});
