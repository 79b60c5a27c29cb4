import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { findFreeSpace, type GuestFreeSpace } from '../src/guestfs/index.js';
import { BlockError } from '../src/core/errors.js';
import { tempDir } from './helpers/oracle.js';
import {
  bytesOutside,
  dumpe2fsFree,
  fileBlocks,
  fileDisk,
  fsTool,
  memoryDisk,
  placeAt,
  requireFsTools,
  sourceTree,
  totalBytes,
} from './helpers/guestfs.js';

const MiB = 1 << 20;

async function scanFile(path: string): Promise<GuestFreeSpace> {
  const d = fileDisk(path);
  try {
    return await findFreeSpace(d.read, d.size);
  } finally {
    d.close();
  }
}

/** dumpe2fs's free blocks of `fsImage` as disk byte ranges, the file system lying at `at`. */
function e2Free(fsImage: string, at = 0): { pairs: [number, number][]; bytes: number } {
  const f = dumpe2fsFree(fsImage);
  return { pairs: f.free.map(([s, e]) => [at + s * f.blockSize, at + e * f.blockSize]), bytes: f.freeBlocks * f.blockSize };
}

/** Build an ext file system with files, delete two with debugfs; returns the image and the deleted files' blocks as byte ranges. */
function buildExt(dir: string, mkfsArgs: string[], sizeMiB = 96): { image: string; deleted: { offset: number; length: number }[] } {
  const src = sourceTree(dir, { keep1: 300_000, del1: 2_500_000, keep2: 1_500_000, del2: 700_000, keep3: 40_000 });
  const image = join(dir, 'fs.img');
  fsTool('truncate', ['-s', `${sizeMiB}M`, image]);
  fsTool('mkfs.ext4', ['-q', '-F', ...mkfsArgs, '-d', src, image]);
  const bs = dumpe2fsFree(image).blockSize;
  const deleted: { offset: number; length: number }[] = [];
  for (const f of ['/del1', '/del2']) {
    const blocks = fileBlocks(image, f);
    assert.ok(blocks.length > 0, `debugfs lists the blocks of ${f}`);
    for (const b of blocks) deleted.push({ offset: b * bs, length: bs });
    fsTool('debugfs', ['-w', '-R', `rm ${f}`, image]);
  }
  deleted.sort((a, b) => a.offset - b.offset);
  return { image, deleted };
}

function assertMatchesE2fs(found: GuestFreeSpace, fsImage: string, at: number, deleted: { offset: number; length: number }[]): void {
  const truth = e2Free(fsImage, at);
  assert.equal(bytesOutside(found.free, truth.pairs), 0, 'every byte called free is free per dumpe2fs');
  const mine = totalBytes(found.free);
  assert.ok(mine >= truth.bytes * 0.99, `nearly all free space is found (${mine} of ${truth.bytes})`);
  const shifted = deleted.map((d) => ({ offset: d.offset + at, length: d.length }));
  const foundPairs = found.free.map((r) => [r.offset, r.offset + r.length] as [number, number]);
  assert.equal(bytesOutside(shifted, foundPairs), 0, "the deleted files' blocks are found free");
  for (let i = 1; i < found.free.length; i++) {
    const p = found.free[i - 1];
    assert.ok(p.offset + p.length < found.free[i].offset, 'ranges are sorted, disjoint and merged');
  }
}

const VARIANTS: { name: string; args: string[]; kind: string }[] = [
  { name: 'ext4, 1 KiB blocks', args: ['-t', 'ext4', '-b', '1024'], kind: 'ext4' },
  { name: 'ext4, 4 KiB blocks, 64bit', args: ['-t', 'ext4', '-b', '4096', '-O', '64bit'], kind: 'ext4' },
  { name: 'ext4 without flex_bg', args: ['-t', 'ext4', '-b', '1024', '-O', '^flex_bg'], kind: 'ext4' },
  { name: 'ext4 with meta_bg', args: ['-t', 'ext4', '-b', '1024', '-O', 'meta_bg,^resize_inode'], kind: 'ext4' },
  { name: 'ext4 with gdt_csum (no metadata_csum)', args: ['-t', 'ext4', '-b', '1024', '-O', '^metadata_csum,uninit_bg'], kind: 'ext4' },
  { name: 'ext4 without any group checksum', args: ['-t', 'ext4', '-b', '1024', '-O', '^metadata_csum,^uninit_bg'], kind: 'ext4' },
  { name: 'ext4 with bigalloc', args: ['-t', 'ext4', '-b', '4096', '-O', 'bigalloc', '-C', '16384'], kind: 'ext4' },
  { name: 'ext4 with 128-byte group descriptors', args: ['-t', 'ext4', '-b', '1024', '-O', '64bit', '-E', 'desc_size=128'], kind: 'ext4' },
  { name: 'ext4 with sparse_super2 (one backup)', args: ['-t', 'ext4', '-b', '1024', '-O', 'sparse_super2', '-E', 'num_backup_sb=1'], kind: 'ext4' },
  { name: 'ext4, 64 KiB blocks', args: ['-t', 'ext4', '-b', '65536'], kind: 'ext4 \\(no journal\\)' },
  { name: 'ext3', args: ['-t', 'ext3', '-b', '1024'], kind: 'ext3' },
  { name: 'ext2, 4 KiB blocks', args: ['-t', 'ext2', '-b', '4096'], kind: 'ext2' },
];

for (const v of VARIANTS) {
  test(`guestfs: ${v.name} on a whole disk: free ranges match dumpe2fs, deleted files found`, async (t) => {
    if (!requireFsTools(t, 'mkfs.ext4', 'debugfs', 'dumpe2fs')) return;
    const tmp = tempDir('vdisk-guestfs-');
    try {
      const { image, deleted } = buildExt(tmp.dir, v.args);
      const found = await scanFile(image);
      assert.match(found.notes.join('\n'), new RegExp(`the whole disk .*: ${v.kind}, `));
      assertMatchesE2fs(found, image, 0, deleted);
    } finally {
      tmp.cleanup();
    }
  });
}

/** Partition table entries as parted prints them (-m, bytes). */
function partedTable(disk: string): { number: number; start: number; length: number }[] {
  const out = fsTool('parted', ['-s', '-m', disk, 'unit', 'B', 'print']);
  return out
    .split('\n')
    .filter((l) => /^\d+:/.test(l))
    .map((l) => {
      const [n, s, , len] = l.split(':');
      return { number: Number(n), start: parseInt(s, 10), length: parseInt(len, 10) };
    });
}

test('guestfs: MBR disk with a primary ext4, an empty partition and a logical ext2', async (t) => {
  if (!requireFsTools(t, 'mkfs.ext4', 'debugfs', 'dumpe2fs', 'parted')) return;
  const tmp = tempDir('vdisk-guestfs-');
  try {
    const a = buildExt(join(tmp.dir, 'a'), ['-t', 'ext4', '-b', '4096'], 64);
    const b = buildExt(join(tmp.dir, 'b'), ['-t', 'ext2', '-b', '1024'], 40);
    const disk = join(tmp.dir, 'disk.img');
    fsTool('truncate', ['-s', '160M', disk]);
    fsTool('parted', ['-s', disk, 'mklabel', 'msdos', 'mkpart', 'primary', '1MiB', '65MiB', 'mkpart', 'primary', '65MiB', '81MiB',
      'mkpart', 'extended', '81MiB', '100%', 'mkpart', 'logical', '82MiB', '122MiB']);
    const parts = partedTable(disk);
    const p1 = parts.find((p) => p.number === 1)!;
    const p5 = parts.find((p) => p.number === 5)!;
    assert.ok(p1 && p5, 'parted made partitions 1 and 5');
    placeAt(a.image, disk, p1.start);
    placeAt(b.image, disk, p5.start);
    const found = await scanFile(disk);
    const notes = found.notes.join('\n');
    assert.match(notes, /partition 1 \(MBR type 0x83, 67108864 bytes at 1048576\): ext4/);
    assert.match(notes, /partition 2 \(MBR type 0x83.*\): skipped, no ext2\/3\/4 or NTFS file system found/);
    assert.match(notes, /partition 5 \(MBR type 0x83.*\): ext2/);
    assertMatchesE2fs({ free: found.free.filter((r) => r.offset < p1.start + p1.length), notes: [] }, a.image, p1.start, a.deleted);
    assertMatchesE2fs({ free: found.free.filter((r) => r.offset >= p5.start), notes: [] }, b.image, p5.start, b.deleted);
    assert.equal(
      found.free.filter((r) => r.offset >= p1.start + p1.length && r.offset < p5.start).length,
      0,
      'nothing outside the two file systems is called free',
    );
  } finally {
    tmp.cleanup();
  }
});

/** Partition entries as sgdisk prints them: number, first and last sector. */
function gptTable(disk: string): { number: number; start: number; end: number }[] {
  return fsTool('sgdisk', ['-p', disk])
    .split('\n')
    .map((l) => /^\s+(\d+)\s+(\d+)\s+(\d+)\s/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ number: Number(m[1]), start: Number(m[2]), end: Number(m[3]) }));
}

test('guestfs: GPT disk (protective MBR): ext4 found at its offset, swap partition skipped; a damaged primary header falls back to the backup', async (t) => {
  if (!requireFsTools(t, 'mkfs.ext4', 'debugfs', 'dumpe2fs', 'sgdisk')) return;
  const tmp = tempDir('vdisk-guestfs-');
  try {
    const a = buildExt(join(tmp.dir, 'a'), ['-t', 'ext4'], 48);
    const disk = join(tmp.dir, 'disk.img');
    fsTool('truncate', ['-s', '80M', disk]);
    fsTool('sgdisk', ['-n', '1:2048:+16M', '-t', '1:8200', '-n', '2:0:+48M', '-t', '2:8300', disk]);
    const p2 = gptTable(disk).find((p) => p.number === 2)!;
    assert.equal((p2.end - p2.start + 1) * 512, 48 * MiB);
    placeAt(a.image, disk, p2.start * 512);
    const found = await scanFile(disk);
    const notes = found.notes.join('\n');
    assert.match(notes, /partition 1 \(GPT Linux swap, .*\): skipped/);
    assert.match(notes, /partition 2 \(GPT Linux file system, 50331648 bytes at \d+\): ext4/);
    assertMatchesE2fs(found, a.image, p2.start * 512, a.deleted);

    // Damage the primary header: the backup header (last sector) still describes the disk.
    const bytes = new Uint8Array(readFileSync(disk));
    bytes[512 + 40] ^= 0xff;
    const fromBackup = await findFreeSpace(memoryDisk(bytes), bytes.length);
    assert.deepEqual(fromBackup.free, found.free);
    assert.match(fromBackup.notes.join('\n'), /backup header was used/);
    // Both damaged: refused.
    bytes[bytes.length - 512 + 40] ^= 0xff;
    await assert.rejects(findFreeSpace(memoryDisk(bytes), bytes.length), (e) => e instanceof BlockError && e.kind === 'corrupt' && /GPT is damaged/.test(e.message));
  } finally {
    tmp.cleanup();
  }
});

test('guestfs: an ext file system that is not clean is refused, naming the reason', async (t) => {
  if (!requireFsTools(t, 'mkfs.ext4', 'debugfs', 'dumpe2fs')) return;
  const tmp = tempDir('vdisk-guestfs-');
  try {
    const { image } = buildExt(tmp.dir, ['-t', 'ext4'], 32);
    const cases: [string, RegExp][] = [
      ['feature needs_recovery', /needs journal recovery/],
      ['ssv state 0', /not cleanly unmounted/],
      ['ssv state 3', /has errors/],
      ['ssv error_count 2', /recorded 2 errors/],
    ];
    for (const [cmd, reason] of cases) {
      const copy = join(tmp.dir, 'copy.img');
      copyFileSync(image, copy);
      fsTool('debugfs', ['-w', '-R', cmd, copy]);
      await assert.rejects(scanFile(copy), (e) => e instanceof BlockError && reason.test(e.message), cmd);
    }
  } finally {
    tmp.cleanup();
  }
});

/** Put a 512-byte MBR with the given (type, first sector, sectors) entries in front of `bytes`. */
function writeMbr(bytes: Uint8Array, entries: [number, number, number][]): void {
  bytes.fill(0, 0, 512);
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  entries.forEach(([type, lba, count], i) => {
    const at = 446 + 16 * i;
    bytes[at + 4] = type;
    dv.setUint32(at + 8, lba, true);
    dv.setUint32(at + 12, count, true);
  });
  bytes[510] = 0x55;
  bytes[511] = 0xaa;
}

test('guestfs: bad partition tables and damaged ext structures are BlockErrors, never free ranges', async (t) => {
  if (!requireFsTools(t, 'mkfs.ext4', 'debugfs', 'dumpe2fs')) return;
  const tmp = tempDir('vdisk-guestfs-');
  try {
    // Without metadata_csum so each damage meets the check that names it, not the superblock checksum.
    const { image } = buildExt(tmp.dir, ['-t', 'ext4', '-b', '1024', '-O', '^metadata_csum'], 16);
    const fs = new Uint8Array(readFileSync(image));
    const disk = new Uint8Array(fs.length + MiB);
    disk.set(fs, MiB);
    const rejects = async (bytes: Uint8Array, re: RegExp, what: string) =>
      assert.rejects(findFreeSpace(memoryDisk(bytes), bytes.length), (e) => e instanceof BlockError && re.test(e.message), what);

    writeMbr(disk, [[0x83, 2048, fs.length / 512]]);
    const good = await findFreeSpace(memoryDisk(disk), disk.length);
    assert.ok(totalBytes(good.free) > 0);

    const past = disk.slice();
    writeMbr(past, [[0x83, 2048, fs.length / 512 + 1]]);
    await rejects(past, /lies outside the disk/, 'partition past the end');

    const overlap = disk.slice();
    writeMbr(overlap, [[0x83, 2048, fs.length / 512], [0x07, 4096, 100]]);
    await rejects(overlap, /partition 1 and partition 2 overlap/, 'overlapping partitions');

    const small = disk.slice();
    writeMbr(small, [[0x83, 2048, fs.length / 512 - 2]]);
    await rejects(small, /larger than its partition/, 'file system larger than its partition');

    const sb = MiB + 1024;
    const blockSize = disk.slice();
    blockSize[sb + 0x18] = 9; // 2^19-byte blocks
    await rejects(blockSize, /block size .* is not allowed/, 'block size');

    const magic = disk.slice();
    magic[sb + 0x38] ^= 0xff;
    const noFs = await findFreeSpace(memoryDisk(magic), magic.length);
    assert.deepEqual(noFs.free, [], 'no magic, no free space');
    assert.match(noFs.notes.join('\n'), /skipped/);

    // A bitmap that frees a block of a file, which its descriptor still counts as used.
    const out = fsTool('dumpe2fs', [image]);
    const bitmapOf = (group: number) => Number(new RegExp(`Group ${group}:[\\s\\S]*?Block bitmap at (\\d+)`).exec(out)![1]);
    const kept = fileBlocks(image, '/keep1')[0];
    const group = Math.floor((kept - 1) / 8192);
    const bit = (kept - 1) % 8192;
    const bitmap = disk.slice();
    const byte = MiB + bitmapOf(group) * 1024 + Math.floor(bit / 8);
    assert.notEqual(bitmap[byte] & (1 << bit % 8), 0, "keep1's first block is in use");
    bitmap[byte] &= ~(1 << bit % 8);
    await rejects(bitmap, new RegExp(`block bitmap of group ${group} counts \\d+ free clusters, its descriptor \\d+`), 'bitmap disagrees with its descriptor');

    // A bitmap that frees a metadata block (and hides it from the count by using one elsewhere).
    const hidden = disk.slice();
    const at = MiB + bitmapOf(0) * 1024;
    assert.equal(hidden[at] & 1, 1, 'block 1 (the superblock) is in use');
    hidden[at] &= 0xfe;
    const lastFree = /Free blocks: (\d+)-(\d+)/.exec(out)!;
    const b = Number(lastFree[2]) - 1; // a free block of group 0, numbered from block 1
    hidden[at + Math.floor(b / 8)] |= 1 << (b % 8);
    await rejects(hidden, /marks metadata block 1 free/, 'bitmap frees the superblock');
  } finally {
    tmp.cleanup();
  }
});

test('guestfs: a disk with no partition table and no file system gives no ranges and says so', async () => {
  const bytes = new Uint8Array(4 * MiB);
  const found = await findFreeSpace(memoryDisk(bytes), bytes.length);
  assert.deepEqual(found.free, []);
  assert.match(found.notes.join('\n'), /the whole disk \(no partition table.*\): skipped, no ext2\/3\/4 or NTFS file system found/);
  const tiny = await findFreeSpace(memoryDisk(new Uint8Array(100)), 100);
  assert.deepEqual(tiny, { free: [], notes: ['no partitions found'] });
});
