import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { findFreeSpace } from '../src/guestfs/index.js';
import { BlockError } from '../src/core/errors.js';
import { tempDir } from './helpers/oracle.js';
import { rng, randInt } from './helpers/random.js';
import { bytesOutside, dumpe2fsFree, fsTool, memoryDisk, placeAt, requireFsTools, sourceTree, totalBytes } from './helpers/guestfs.js';

const MiB = 1 << 20;

/**
 * Property: whatever bytes of the partition table, the ext superblock,
 * descriptors and bitmaps, or the NTFS boot sector and system MFT records are
 * damaged, findFreeSpace either throws a BlockError or returns only ranges
 * that were free in the undamaged disk (per dumpe2fs and ntfscluster).
 * The ext4 file system has metadata_csum (mkfs.ext4's default), which is what
 * lets damage inside a bitmap be told from a real allocation; NTFS's $Bitmap
 * has no checksum, so its contents are not mutated here (docs/guestfs.md).
 */
test('guestfs fuzz: damaged tables and file-system metadata never yield a used range (fixed seed)', async (t) => {
  if (!requireFsTools(t, 'mkfs.ext4', 'dumpe2fs', 'mkntfs', 'ntfscp', 'ntfscluster', 'parted')) return;
  const tmp = tempDir('vdisk-guestfs-fuzz-');
  try {
    const src = sourceTree(tmp.dir, { a: 900_000, b: 2_000_000, c: 50_000 }, 3);
    const ext = join(tmp.dir, 'ext.img');
    fsTool('truncate', ['-s', '24M', ext]);
    fsTool('mkfs.ext4', ['-q', '-F', '-b', '1024', '-d', src, ext]);
    const ntfs = join(tmp.dir, 'ntfs.img');
    fsTool('truncate', ['-s', '16M', ntfs]);
    fsTool('mkntfs', ['-F', '-Q', '-q', '-c', '4096', ntfs]);
    fsTool('ntfscp', ['-f', ntfs, join(src, 'b'), '/b']);
    const diskPath = join(tmp.dir, 'disk.img');
    fsTool('truncate', ['-s', '48M', diskPath]);
    fsTool('parted', ['-s', diskPath, 'mklabel', 'msdos', 'mkpart', 'primary', '1MiB', '25MiB', 'mkpart', 'primary', '25MiB', '41MiB']);
    const p1 = MiB;
    const p2 = 25 * MiB;
    placeAt(ext, diskPath, p1);
    placeAt(ntfs, diskPath, p2);
    const disk = new Uint8Array(readFileSync(diskPath));

    // What is free in the undamaged disk, per the outside tools.
    const e2 = dumpe2fsFree(ext);
    const allowed: [number, number][] = e2.free.map(([s, e]) => [p1 + s * e2.blockSize, p1 + e * e2.blockSize]);
    const original = await findFreeSpace(memoryDisk(disk), disk.length);
    const ntfsFree = original.free.filter((r) => r.offset >= p2);
    const ntfsBytes = Number(/bytes of free space\s*:\s*(\d+)/.exec(fsTool('ntfscluster', ['-i', '-f', ntfs]))![1]);
    assert.equal(totalBytes(ntfsFree), ntfsBytes, 'the undamaged NTFS agrees with ntfscluster');
    for (const r of ntfsFree) allowed.push([r.offset, r.offset + r.length]);
    allowed.sort((a, b) => a[0] - b[0]);
    assert.equal(bytesOutside(original.free, allowed), 0);

    // Where damage goes: [start, end) byte regions of metadata.
    const dump = fsTool('dumpe2fs', [ext]);
    const regions: [number, number][] = [
      [446, 512], // MBR partition records
      [p1 + 1024, p1 + 2048], // ext superblock
      [p1 + 2048, p1 + 3072], // ext group descriptors
    ];
    for (const m of dump.matchAll(/Block bitmap at (\d+)/g)) regions.push([p1 + Number(m[1]) * 1024, p1 + Number(m[1]) * 1024 + 1024]);
    const nv = new DataView(disk.buffer, p2);
    const mft = p2 + Number(nv.getBigUint64(0x30, true)) * 4096;
    const mirr = p2 + Number(nv.getBigUint64(0x38, true)) * 4096;
    regions.push([p2, p2 + 512], [mft, mft + 8 * 1024], [mirr, mirr + 4 * 1024]);

    const r = rng(20_2026);
    let refused = 0;
    const ITERATIONS = 1500;
    for (let i = 0; i < ITERATIONS; i++) {
      const saved: [number, number][] = [];
      const n = randInt(r, 1, 4);
      for (let k = 0; k < n; k++) {
        const [s, e] = regions[randInt(r, 0, regions.length - 1)];
        const at = randInt(r, s, e - 1);
        saved.push([at, disk[at]]);
        disk[at] = r() < 0.5 ? disk[at] ^ (1 << randInt(r, 0, 7)) : randInt(r, 0, 255);
      }
      try {
        const found = await findFreeSpace(memoryDisk(disk), disk.length);
        assert.equal(bytesOutside(found.free, allowed), 0, `iteration ${i}: a used range was called free (${JSON.stringify(saved)})`);
      } catch (e) {
        if (!(e instanceof BlockError)) throw new Error(`iteration ${i}: not a BlockError: ${(e as Error).stack}`);
        refused++;
      } finally {
        for (const [at, v] of saved.reverse()) disk[at] = v;
      }
    }
    t.diagnostic(`${refused} of ${ITERATIONS} damaged disks refused`);
    assert.ok(refused > 0 && refused < ITERATIONS, `some damage is refused, some is harmless (${refused} of ${ITERATIONS} refused)`);
  } finally {
    tmp.cleanup();
  }
});
