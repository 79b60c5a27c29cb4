import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { findFreeSpace, type GuestFreeSpace } from '../src/guestfs/index.js';
import { BlockError } from '../src/core/errors.js';
import { openChain } from '../src/chain/open.js';
import { corpusFile } from './helpers/corpus.js';
import { qemuImg, requireTool, tempDir } from './helpers/oracle.js';
import { bytesOutside, dumpe2fsFree, fileDisk, fsTool, memoryDisk, placeAt, requireFsTools, sourceTree, totalBytes } from './helpers/guestfs.js';

const MiB = 1 << 20;

async function scanFile(path: string): Promise<GuestFreeSpace> {
  const d = fileDisk(path);
  try {
    return await findFreeSpace(d.read, d.size);
  } finally {
    d.close();
  }
}

/** ntfscluster's count of free bytes. */
function ntfsFreeBytes(volume: string): number {
  const m = /bytes of free space\s*:\s*(\d+)/.exec(fsTool('ntfscluster', ['-i', '-f', volume]));
  assert.ok(m, 'ntfscluster -i prints the free space');
  return Number(m[1]);
}

/** Assert (with ntfscluster -c) that no file uses a cluster of any range; `at` is the volume's disk offset. */
function assertNoInodeIn(volume: string, free: { offset: number; length: number }[], at: number, clusterSize: number): void {
  for (const r of free) {
    const first = (r.offset - at) / clusterSize;
    const last = first + r.length / clusterSize - 1;
    assert.ok(Number.isInteger(first) && Number.isInteger(last), 'ranges are whole clusters');
    const out = fsTool('ntfscluster', ['-f', '-c', `${first}-${last}`, volume]);
    assert.match(out, /no inode found/, `clusters ${first}-${last} are used by: ${out}`);
  }
}

/** mkntfs a volume file, copy files in with ntfscp; returns the files' inode numbers. */
function buildNtfs(dir: string, sizeMiB: number, clusterSize: number): { volume: string; inodes: Record<string, number> } {
  const src = sourceTree(dir, { 'keep1.bin': 400_000, 'gone.bin': 3_000_000, 'keep2.bin': 1_200_000 }, 7);
  const volume = join(dir, 'ntfs.img');
  fsTool('truncate', ['-s', `${sizeMiB}M`, volume]);
  fsTool('mkntfs', ['-F', '-Q', '-q', '-c', String(clusterSize), volume]);
  for (const f of ['keep1.bin', 'gone.bin', 'keep2.bin']) fsTool('ntfscp', ['-f', volume, join(src, f), `/${f}`]);
  const inodes: Record<string, number> = {};
  for (const m of fsTool('ntfsls', ['-f', '-i', volume]).matchAll(/^\s*(\d+)\s+(\S+)$/gm)) inodes[m[2]] = Number(m[1]);
  assert.ok(inodes['gone.bin'] && inodes['keep1.bin'], 'ntfsls lists the copied files');
  return { volume, inodes };
}

for (const v of [
  { name: 'whole disk, 4 KiB clusters', cluster: 4096, table: 'none' },
  { name: 'MBR partition, 64 KiB clusters', cluster: 65536, table: 'mbr' },
  { name: 'GPT partition, 512-byte clusters', cluster: 512, table: 'gpt' },
] as const) {
  test(`guestfs: NTFS (${v.name}): free clusters match ntfscluster, a truncated file's clusters become free`, async (t) => {
    if (!requireFsTools(t, 'mkntfs', 'ntfscp', 'ntfscluster', 'ntfstruncate', 'ntfsls', 'parted', 'sgdisk')) return;
    const tmp = tempDir('vdisk-guestfs-ntfs-');
    try {
      const { volume, inodes } = buildNtfs(tmp.dir, 48, v.cluster);
      let disk = volume;
      let at = 0;
      if (v.table !== 'none') {
        disk = join(tmp.dir, 'disk.img');
        fsTool('truncate', ['-s', '64M', disk]);
        if (v.table === 'mbr') fsTool('parted', ['-s', disk, 'mklabel', 'msdos', 'mkpart', 'primary', 'ntfs', '2MiB', '50MiB']);
        else fsTool('sgdisk', ['-n', '1:4096:+48M', '-t', '1:0700', disk]);
        at = 2 * MiB;
      }
      const refresh = () => {
        if (v.table !== 'none') placeAt(volume, disk, at);
      };
      refresh();
      const before = await scanFile(disk);
      assert.match(before.notes.join('\n'), new RegExp(`NTFS 3\\.1, \\d+ clusters of ${v.cluster} bytes`));
      assert.equal(totalBytes(before.free), ntfsFreeBytes(volume), 'free bytes equal ntfscluster -i');
      assertNoInodeIn(volume, before.free, at, v.cluster);

      fsTool('ntfstruncate', ['-f', volume, String(inodes['gone.bin']), '0']);
      refresh();
      const after = await scanFile(disk);
      assert.equal(totalBytes(after.free), ntfsFreeBytes(volume));
      assertNoInodeIn(volume, after.free, at, v.cluster);
      const gained = totalBytes(after.free) - totalBytes(before.free);
      assert.ok(gained >= 3_000_000, `the truncated file's clusters are found free (${gained} bytes more)`);
      const afterPairs = after.free.map((r) => [r.offset, r.offset + r.length] as [number, number]);
      assert.equal(bytesOutside(before.free, afterPairs), 0, 'what was free stays free');
    } finally {
      tmp.cleanup();
    }
  });
}

/** Disk offset of $Volume's $VOLUME_INFORMATION flags in the MFT and in $MFTMirr (records 3 of both). */
function volumeFlagOffsets(bytes: Uint8Array): number[] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  const cs = dv.getUint16(0x0b, true) * bytes[0x0d];
  const rs = bytes[0x40] < 0x80 ? bytes[0x40] * cs : 2 ** (256 - bytes[0x40]);
  return [0x30, 0x38].map((field) => {
    const rec = Number(dv.getBigUint64(field, true)) * cs + 3 * rs;
    let a = rec + dv.getUint16(rec + 0x14, true);
    while (dv.getUint32(a, true) !== 0x70) a += dv.getUint32(a + 4, true);
    return a + dv.getUint16(a + 0x14, true) + 10;
  });
}

test('guestfs: a dirty NTFS volume is refused (ntfsinfo agrees it is dirty), and accepted once ntfsfix -d clears the flag', async (t) => {
  if (!requireFsTools(t, 'mkntfs', 'ntfscp', 'ntfscluster', 'ntfsls')) return;
  const tmp = tempDir('vdisk-guestfs-ntfs-');
  try {
    const { volume } = buildNtfs(tmp.dir, 32, 4096);
    const clean = await scanFile(volume);
    const bytes = new Uint8Array(readFileSync(volume));
    for (const at of volumeFlagOffsets(bytes)) bytes[at] |= 0x01;
    const dirty = join(tmp.dir, 'dirty.img');
    writeFileSync(dirty, bytes);
    assert.match(fsTool('ntfsinfo', ['-m', '-f', dirty]), /Volume Flags: 0x0001/, 'ntfs-3g reads the volume as dirty');
    await assert.rejects(scanFile(dirty), (e) => e instanceof BlockError && /NTFS volume is marked dirty/.test(e.message));
    fsTool('ntfsfix', ['-d', dirty]);
    assert.deepEqual((await scanFile(dirty)).free, clean.free);

    // Only the MFT's copy changed: $MFTMirr no longer matches (ntfs-3g refuses such a volume too).
    const torn = new Uint8Array(readFileSync(volume));
    torn[volumeFlagOffsets(torn)[0]] |= 0x01;
    await assert.rejects(findFreeSpace(memoryDisk(torn), torn.length), (e) => e instanceof BlockError && /\$MFTMirr does not match \$MFT/.test(e.message));
  } finally {
    tmp.cleanup();
  }
});

/** Write a restart page into $LogFile's first 4 KiB that records a client in use, with or without the clean flag (NTFS docs "$LogFile"). */
function restartPage(bytes: Uint8Array, logOffset: number, logSize: number, clean: boolean): void {
  const page = new Uint8Array(4096);
  const dv = new DataView(page.buffer);
  page.set([0x52, 0x53, 0x54, 0x52]); // "RSTR"
  dv.setUint16(4, 0x1e, true); // update sequence array offset
  dv.setUint16(6, 9, true); // 8 strides + the number itself
  dv.setUint32(0x10, 4096, true); // system page size
  dv.setUint32(0x14, 4096, true); // log page size
  dv.setUint16(0x18, 0x30, true); // restart area offset
  dv.setUint16(0x1a, 1, true);
  dv.setUint16(0x1c, 1, true);
  const ra = 0x30;
  dv.setUint16(ra + 0x08, 1, true); // log clients
  dv.setUint16(ra + 0x0a, 0xffff, true); // free list: none
  dv.setUint16(ra + 0x0c, 0, true); // in-use list: client 0
  dv.setUint16(ra + 0x0e, clean ? 0x0002 : 0, true); // flags: RESTART_VOLUME_IS_CLEAN or none
  dv.setUint32(ra + 0x10, 67 - (Math.floor(logSize / 8) * 8).toString(2).length, true); // sequence number bits: 67 - bits of the file size
  dv.setUint16(ra + 0x14, 0x40 + 0xa0, true); // restart area length: the header and one 0xA0-byte client record
  dv.setUint16(ra + 0x16, 0x40, true); // client array offset
  dv.setBigUint64(ra + 0x18, BigInt(logSize), true); // file size
  dv.setUint16(ra + 0x24, 0x30, true); // log record header length
  dv.setUint16(ra + 0x26, 0x40, true); // log page data offset
  const client = ra + 0x40;
  dv.setUint16(client + 0x10, 0xffff, true); // prev client
  dv.setUint16(client + 0x12, 0xffff, true); // next client
  dv.setUint32(client + 0x1c, 8, true); // name length (bytes)
  page.set([0x4e, 0, 0x54, 0, 0x46, 0, 0x53, 0], client + 0x20); // "NTFS"
  const usn = 0x0007;
  dv.setUint16(0x1e, usn, true);
  for (let i = 0; i < 8; i++) {
    dv.setUint16(0x20 + 2 * i, dv.getUint16((i + 1) * 512 - 2, true), true);
    dv.setUint16((i + 1) * 512 - 2, usn, true);
  }
  bytes.set(page, logOffset);
}

test('guestfs: an NTFS volume whose $LogFile is not clean (hibernated / Fast Startup) is refused', async (t) => {
  if (!requireFsTools(t, 'mkntfs', 'ntfscp', 'ntfscluster', 'ntfsls')) return;
  const tmp = tempDir('vdisk-guestfs-ntfs-');
  try {
    const { volume } = buildNtfs(tmp.dir, 32, 4096);
    const bytes = new Uint8Array(readFileSync(volume));
    const m = /\$LogFile\/\$DATA/.test(fsTool('ntfscluster', ['-f', '-c', '0-8191', volume]));
    assert.ok(m, 'ntfscluster finds $LogFile');
    // $LogFile's first cluster, from ntfsinfo's runlist of inode 2.
    const info = fsTool('ntfsinfo', ['-f', '-v', '-i', '2', volume]);
    const lcn = /^\s+0x0\s+0x([0-9a-f]+)\s+0x[0-9a-f]+/im.exec(info);
    assert.ok(lcn, `ntfsinfo prints $LogFile's runlist: ${info.slice(-400)}`);
    const logSize = Number(/Allocated size:\s+(\d+)/.exec(info)?.[1] ?? 0);
    restartPage(bytes, parseInt(lcn[1], 16) * 4096, logSize, false);
    const unclean = join(tmp.dir, 'unclean.img');
    writeFileSync(unclean, bytes);
    await assert.rejects(scanFile(unclean), (e) => e instanceof BlockError && /\$LogFile is not clean/.test(e.message));
    // ntfs-3g reads the same restart area as unclean (client in use 0, flags 0) before it resets the log to write.
    const r = fsTool('ntfscp', ['-f', unclean, join(tmp.dir, 'src', 'keep1.bin'), '/again.bin'], true);
    assert.match(r, /unclean file system \(0, 0\)/, r);
    // The same restart area with the clean flag is accepted.
    restartPage(bytes, parseInt(lcn[1], 16) * 4096, logSize, true);
    writeFileSync(unclean, bytes);
    assert.ok(totalBytes((await scanFile(unclean)).free) > 0);
  } finally {
    tmp.cleanup();
  }
});

test('guestfs: a hibernated Windows (hiberfil.sys starting with HIBR or hibr) is refused, as ntfs-3g refuses it; "wake" is accepted', async (t) => {
  if (!requireFsTools(t, 'mkntfs', 'ntfscp', 'ntfscluster', 'ntfsls')) return;
  const tmp = tempDir('vdisk-guestfs-ntfs-');
  try {
    const { volume } = buildNtfs(tmp.dir, 32, 4096);
    // Enough names that the root directory index spills into an INDX block ($INDEX_ALLOCATION).
    const small = join(tmp.dir, 'small.bin');
    writeFileSync(small, 'x');
    for (let i = 0; i < 60; i++) fsTool('ntfscp', ['-f', volume, small, `/file-with-a-longish-name-${String(i).padStart(3, '0')}.txt`]);
    assert.match(fsTool('ntfsinfo', ['-f', '-v', '-i', '5', volume]), /INDEX_ALLOCATION/, 'the root index has an allocation');
    const hiber = join(tmp.dir, 'hiberfil.sys');
    for (const [magic, refused] of [['HIBR', true], ['hibr', true], ['wake', false]] as const) {
      const copy = join(tmp.dir, `${magic}.img`);
      writeFileSync(copy, readFileSync(volume));
      const body = new Uint8Array(64 * 1024);
      body.set(new TextEncoder().encode(magic));
      writeFileSync(hiber, body);
      fsTool('ntfscp', ['-f', copy, hiber, '/hiberfil.sys']);
      if (refused) {
        await assert.rejects(scanFile(copy), (e) => e instanceof BlockError && new RegExp(`Windows is hibernated \\(hiberfil.sys begins with "${magic}"\\)`).test(e.message), magic);
        const r = fsTool('ntfscp', ['-f', copy, small, '/again.txt'], true);
        assert.match(r, /hibernated/i, `ntfs-3g refuses it too: ${r}`);
      } else {
        assert.ok(totalBytes((await scanFile(copy)).free) > 0);
      }
    }
  } finally {
    tmp.cleanup();
  }
});

test('guestfs: NTFS $Bitmap shorter than the volume, and one that frees $MFT, are refused', async (t) => {
  if (!requireFsTools(t, 'mkntfs', 'ntfscp', 'ntfscluster', 'ntfsls')) return;
  const tmp = tempDir('vdisk-guestfs-ntfs-');
  try {
    const { volume } = buildNtfs(tmp.dir, 32, 4096);
    const bytes = new Uint8Array(readFileSync(volume));
    const dv = new DataView(bytes.buffer);
    // Grow the volume's sector count in the boot sector past what $Bitmap covers (the image grows to hold it).
    const bigger = new Uint8Array(bytes.length * 2);
    bigger.set(bytes);
    new DataView(bigger.buffer).setBigUint64(0x28, BigInt(bigger.length / 512 - 1), true);
    await assert.rejects(findFreeSpace(memoryDisk(bigger), bigger.length), (e) => e instanceof BlockError && /\$Bitmap \(\d+ bytes\) is shorter than the volume/.test(e.message));

    // Clear $MFT's first cluster in $Bitmap.
    const mftLcn = Number(dv.getBigUint64(0x30, true));
    const info = fsTool('ntfsinfo', ['-f', '-v', '-i', '6', volume]);
    const lcn = /^\s+0x0\s+0x([0-9a-f]+)\s+0x[0-9a-f]+/im.exec(info);
    assert.ok(lcn, "ntfsinfo prints $Bitmap's runlist");
    const at = parseInt(lcn[1], 16) * 4096 + Math.floor(mftLcn / 8);
    assert.notEqual(bytes[at] & (1 << mftLcn % 8), 0);
    bytes[at] &= ~(1 << mftLcn % 8);
    await assert.rejects(findFreeSpace(memoryDisk(bytes), bytes.length), (e) => e instanceof BlockError && /\$Bitmap marks cluster \d+ of a system file free/.test(e.message));
  } finally {
    tmp.cleanup();
  }
});

/** A reader over a disk image as vdisk's chain reads it. */
async function scanImage(path: string): Promise<GuestFreeSpace> {
  const c = await openChain(path, { readOnly: true });
  try {
    return await findFreeSpace((o, into) => c.read(o, into), c.size);
  } finally {
    await c.close();
  }
}

test('guestfs: corpus — NTFS of a Hyper-V VHDX, ext2 of a VHD, XFS and btrfs skipped; checked with ntfscluster and dumpe2fs on qemu-img raw exports', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireFsTools(t, 'ntfscluster', 'dumpe2fs')) return;
  const tmp = tempDir('vdisk-guestfs-corpus-');
  try {
    // dissect/dynamic.vhdx: Windows-made MBR disk, NTFS partition at 64 KiB.
    const vhdx = corpusFile('dissect/dynamic.vhdx');
    const found = await scanImage(vhdx);
    const note = found.notes.find((n) => /NTFS/.test(n));
    assert.ok(note, found.notes.join('\n'));
    const m = /^partition 1 \(MBR type 0x07, (\d+) bytes at (\d+)\): NTFS 3\.1, \d+ clusters of (\d+) bytes/.exec(note);
    assert.ok(m, note);
    const [length, at, cs] = [Number(m[1]), Number(m[2]), Number(m[3])];
    const raw = join(tmp.dir, 'dynamic.raw');
    qemuImg('convert', '-f', 'vhdx', '-O', 'raw', vhdx, raw);
    const part = join(tmp.dir, 'part.raw');
    writeFileSync(part, readFileSync(raw).subarray(at, at + length));
    assert.ok(totalBytes(found.free) > 0);
    assert.equal(totalBytes(found.free), ntfsFreeBytes(part), 'free bytes equal ntfscluster -i');
    assertNoInodeIn(part, found.free, at, cs);

    // dfvfs/ext2.vhd: an ext2 file system on the whole disk.
    const vhd = corpusFile('dfvfs/ext2.vhd');
    const ext = await scanImage(vhd);
    assert.match(ext.notes.join('\n'), /the whole disk .*: ext2, /);
    const extRaw = join(tmp.dir, 'ext2.raw');
    qemuImg('convert', '-f', 'vpc', '-O', 'raw', vhd, extRaw);
    const e2 = dumpe2fsFree(extRaw);
    assert.equal(bytesOutside(ext.free, e2.free.map(([s, e]) => [s * e2.blockSize, e * e2.blockSize])), 0);
    assert.equal(totalBytes(ext.free), e2.freeBlocks * e2.blockSize);

    const xfs = await scanImage(corpusFile('discutils/xfs5.vhdx'));
    assert.deepEqual(xfs.free, []);
    assert.match(xfs.notes.join('\n'), /partition 1 \(MBR type 0x83, .*\): skipped, XFS is not supported/);
    const btrfs = await scanImage(corpusFile('discutils/btrfs.vhdx'));
    assert.match(btrfs.notes.join('\n'), /skipped, btrfs is not supported/);
  } finally {
    tmp.cleanup();
  }
});
