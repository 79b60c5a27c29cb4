import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { convert } from '../src/ops/convert.js';
import { createImage } from '../src/ops/create.js';
import { openLayer } from '../src/chain/open.js';
import { compactImage } from '../src/ops/compact.js';
import { isBlockError } from '../src/core/errors.js';
import { qemuImg, requireTool, run, tempDir } from './helpers/oracle.js';
import { fsTool, requireFsTools, sourceTree } from './helpers/guestfs.js';

/*
 * compact --mode fs end to end: an ext4 made with mkfs.ext4 -d, two files
 * deleted with debugfs -w (their blocks keep their bytes: nothing zeroes
 * them), converted to VHD/VHDX by vdisk. After compaction e2fsck -fn finds
 * the file system clean and debugfs dumps every remaining file with its
 * original bytes — read back through qemu-img, and through a child made
 * before the compaction.
 */

const MiB = 1 << 20;
const FILES = { keep1: 3_000_000, gone1: 9_000_000, keep2: 2_000_000, gone2: 7_000_000, keep3: 50_000 };
const KEPT = ['keep1', 'keep2', 'keep3'];
const SBIN_PATH = { PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` };

function e2fsckClean(raw: string): void {
  const r = run('e2fsck', ['-fn', raw], { env: SBIN_PATH, allowFail: true });
  assert.equal(r.status, 0, `e2fsck -fn: ${r.stdout}${r.stderr}`);
}

function assertFiles(raw: string, src: string, what: string): void {
  e2fsckClean(raw);
  for (const f of KEPT) {
    const out = join(raw + `.${f}`);
    fsTool('debugfs', ['-R', `dump /${f} ${out}`, raw]);
    assert.ok(readFileSync(out).equals(readFileSync(join(src, f))), `${what}: /${f} reads its original bytes`);
  }
  const ls = fsTool('debugfs', ['-R', 'ls /', raw]);
  assert.doesNotMatch(ls, /gone1|gone2/);
}

for (const format of ['vhd', 'vhdx'] as const) {
  test(`compact --mode fs (${format}): blocks of deleted ext4 files are released; e2fsck is clean and debugfs dumps every kept file, also through a child made before`, async (t) => {
    if (!requireFsTools(t, 'mkfs.ext4', 'debugfs') || !requireTool(t, 'qemu-img')) return;
    const d = tempDir();
    t.after(d.cleanup);
    const src = sourceTree(d.dir, FILES, 3);
    const raw = join(d.dir, 'fs.raw');
    fsTool('truncate', ['-s', '64M', raw]);
    fsTool('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', src, raw]);
    for (const f of ['/gone1', '/gone2']) fsTool('debugfs', ['-w', '-R', `rm ${f}`, raw]);
    const img = join(d.dir, `disk.${format}`);
    await convert({ source: raw, sourceOptions: { format: 'raw' }, target: img, targetFormat: format, options: format === 'vhdx' ? { block_size: '1M' } : { block_size: '1048576' } });
    const child = join(d.dir, `child.${format}`);
    await createImage({ path: child, format, backing: { path: img } });
    const before = statSync(img).size;
    const idBefore = (await openLayer(img, { readOnly: true }).then(async (l) => [l.identity, await l.close()]))[0];

    const dry = await compactImage({ path: img, modes: ['fs'], dryRun: true });
    assert.equal(statSync(img).size, before, 'a dry run writes nothing');
    const r = await compactImage({ path: img, modes: ['fs'] });
    assert.deepEqual(r.released, dry.released);
    assert.equal(r.bytesAfter, dry.bytesAfter);
    assert.ok(r.notes.some((n) => /ext4/.test(n)), r.notes.join('\n'));
    // 16 MB of deleted files in 1 MiB blocks: at least 12 blocks wholly free.
    assert.ok(r.released.fs >= 12, JSON.stringify(r));
    assert.ok(r.bytesAfter <= before - 12 * MiB, `${before} -> ${r.bytesAfter}`);
    assert.equal(statSync(img).size, r.bytesAfter);
    const idAfter = (await openLayer(img, { readOnly: true }).then(async (l) => [l.identity, await l.close()]))[0];
    assert.equal(idAfter, idBefore, 'fs keeps the identity children check (docs/operations.md)');

    const out = join(d.dir, 'after.raw');
    qemuImg('convert', '-f', format === 'vhd' ? 'vpc' : 'vhdx', '-O', 'raw', img, out);
    assertFiles(out, src, 'qemu-img');
    const viaChild = join(d.dir, 'child.raw');
    await convert({ source: child, target: viaChild, targetFormat: 'raw' });
    assertFiles(viaChild, src, 'the child');
    // Compacting again finds nothing more to release.
    const again = await compactImage({ path: img, modes: ['fs'] });
    assert.equal(again.released.fs, 0);
  });
}

test('compact --mode fs refuses an ext4 that needs recovery, writing nothing', async (t) => {
  if (!requireFsTools(t, 'mkfs.ext4', 'debugfs')) return;
  const d = tempDir();
  t.after(d.cleanup);
  const src = sourceTree(d.dir, { a: 2_000_000, b: 4_000_000 }, 4);
  const raw = join(d.dir, 'fs.raw');
  fsTool('truncate', ['-s', '32M', raw]);
  fsTool('mkfs.ext4', ['-q', '-F', '-d', src, raw]);
  fsTool('debugfs', ['-w', '-R', 'rm /b', raw]);
  fsTool('debugfs', ['-w', '-R', 'feature needs_recovery', raw]);
  const img = join(d.dir, 'disk.vhdx');
  await convert({ source: raw, sourceOptions: { format: 'raw' }, target: img, targetFormat: 'vhdx', options: { block_size: '1M' } });
  const bytes = readFileSync(img);
  await assert.rejects(compactImage({ path: img, modes: ['fs', 'zero'] }), (e: unknown) => isBlockError(e) && /recover|journal/i.test(e.message));
  assert.ok(readFileSync(img).equals(bytes), 'nothing was written');
});

test('compact --mode fs (vhdx) on NTFS: clusters of a truncated file are released; ntfsls and ntfscat read every kept file', async (t) => {
  if (!requireFsTools(t, 'mkntfs', 'ntfscp', 'ntfstruncate', 'ntfsls') || !requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  t.after(d.cleanup);
  const src = sourceTree(d.dir, { 'keep1.bin': 2_000_000, 'gone.bin': 12_000_000, 'keep2.bin': 1_500_000 }, 9);
  const vol = join(d.dir, 'ntfs.raw');
  fsTool('truncate', ['-s', '48M', vol]);
  fsTool('mkntfs', ['-F', '-Q', '-q', '-c', '4096', vol]);
  for (const f of ['keep1.bin', 'gone.bin', 'keep2.bin']) fsTool('ntfscp', ['-f', vol, join(src, f), `/${f}`]);
  const inode = /^\s*(\d+)\s+gone\.bin$/m.exec(fsTool('ntfsls', ['-f', '-i', vol]))![1];
  // The file's clusters go back to $Bitmap; their bytes stay (ntfstruncate does not zero them).
  fsTool('ntfstruncate', ['-f', vol, inode, '0']);
  const img = join(d.dir, 'disk.vhdx');
  await convert({ source: vol, sourceOptions: { format: 'raw' }, target: img, targetFormat: 'vhdx', options: { block_size: '1M' } });
  const before = statSync(img).size;
  const r = await compactImage({ path: img, modes: ['fs'] });
  assert.ok(r.notes.some((n) => /NTFS/i.test(n)), r.notes.join('\n'));
  assert.ok(r.released.fs >= 8, JSON.stringify(r));
  assert.ok(r.bytesAfter <= before - 8 * MiB);
  const out = join(d.dir, 'after.raw');
  qemuImg('convert', '-f', 'vhdx', '-O', 'raw', img, out);
  const ls = fsTool('ntfsls', ['-f', out]);
  for (const f of ['keep1.bin', 'keep2.bin']) {
    assert.match(ls, new RegExp(`^${f.replace('.', '\\.')}$`, 'm'));
    const got = spawnCat(out, f);
    assert.ok(got.equals(readFileSync(join(src, f))), `ntfscat /${f} reads its original bytes`);
  }
});

/** ntfscat's output as bytes (run() decodes text). */
function spawnCat(volume: string, name: string): Buffer {
  const r = spawnSync('ntfscat', ['-f', volume, `/${name}`], { maxBuffer: 64 << 20, env: { ...process.env, ...SBIN_PATH } });
  assert.equal(r.status, 0, r.stderr?.toString());
  return r.stdout;
}
