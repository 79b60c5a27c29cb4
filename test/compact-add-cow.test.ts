import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compactImage } from '../src/ops/compact.js';
import { convert } from '../src/ops/convert.js';
import { createImage } from '../src/ops/create.js';
import { openChain } from '../src/chain/open.js';
import { checkImage } from '../src/ops/check.js';
import { isBlockError } from '../src/core/errors.js';
import { openFileStore } from '../src/io/file-store.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import type { OpenStoreOptions, Store } from '../src/io/store.js';
import { vdisk } from './helpers/cli.js';
import { REPO_ROOT } from './helpers/corpus.js';
import { FaultStore } from './helpers/fault-store.js';
import { fsTool, requireFsTools, sourceTree } from './helpers/guestfs.js';
import { qemuImg, requireNativeAddon, requireTool, run, sha256, tempDir, vdiskDigest } from './helpers/oracle.js';
import { randomBytes, rng } from './helpers/random.js';

/**
 * vdisk compact on add-cow: holes punched in the image file (Store.punchHole,
 * native/punch.c), the bitmap untouched. The outside reference for the
 * disk's content is the one the add-cow interop tests use
 * (test/oracles/addcow_reader.py, written from docs/formats/add-cow.md);
 * the space given back is the image file's st_blocks.
 */
const READER = join(REPO_ROOT, 'test', 'oracles', 'addcow_reader.py');
const MiB = 1 << 20;
const RAW = { backingFormats: ['raw'] };

function pyDigest(addCow: string): { digest: string; size: number } {
  const [digest, size] = run('/usr/bin/python3', [READER, addCow]).stdout.trim().split(/\s+/);
  return { digest, size: Number(size) };
}

const allocated = (path: string): number => statSync(path).blocks * 512;

function ok(r: { status: number | null; stdout: string; stderr: string }): string {
  assert.equal(r.status, 0, r.stderr + r.stdout);
  return r.stdout;
}

test('compact add-cow (made by vdisk, over a qemu-made raw backing): zero-filled and discarded ranges give their space back; the disk reads the same to vdisk and the Python reader; check is clean', async (t) => {
  if (!requireNativeAddon(t) || !requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const d = tempDir();
  t.after(d.cleanup);
  const base = join(d.dir, 'base.raw');
  qemuImg('create', '-f', 'raw', base, '16M');
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 16M', base]);
  const top = join(d.dir, 'top.add-cow');
  const data = join(d.dir, 'top.raw');
  ok(vdisk('create', '-f', 'add-cow', '-b', 'base.raw', '-F', 'raw', '-o', 'image_file=top.raw', top));
  ok(
    vdisk(
      'io', '--backing-as', 'raw',
      '-c', 'write -P 0x11 0 1M', // data: kept
      '-c', 'write -z 1M 2M', // zeros over a backing full of 0x5a: bits stay set, the hole reads the same zeros
      '-c', 'write -P 0x22 3M 1M',
      '-c', 'write -P 0x33 4M 1M',
      '-c', 'discard 4M 1M', // bits cleared, bytes still in the image file: trim
      '-c', 'write -P 0x44 6M 2048', // less than a granule of data, then zeros in the same 4 KiB: kept
      '-c', 'write -z 6293504 2048',
      '-c', 'write -z 9M 5000', // zero data not granule-aligned: only the whole granules go
      top,
    ),
  );
  const bitmapBefore = readFileSync(top);
  const want = pyDigest(top);
  assert.deepEqual(await vdiskDigest(top, RAW), want);
  const before = allocated(data);

  const dry = JSON.parse(ok(vdisk('compact', '--backing-as', 'raw', '--dry-run', '--output=json', top)));
  assert.equal(allocated(data), before, 'a dry run punches nothing');
  assert.deepEqual(dry['blocks-released'], { zero: 512 + 1, trim: 256 });
  const r = JSON.parse(ok(vdisk('compact', '--backing-as', 'raw', '--output=json', top)));
  assert.equal(r.format, 'add-cow');
  assert.deepEqual(r['blocks-released'], dry['blocks-released']);
  assert.equal(r['block-size'], 4096);
  assert.equal(r['bytes-before'], before);
  assert.equal(r['bytes-after'], dry['bytes-after']);
  assert.equal(r['bytes-before'] - r['bytes-after'], (512 + 1 + 256) * 4096);
  // bytes-after counts the data ranges (SEEK_DATA); st_blocks may add a block of the file system's own extent tree.
  assert.ok(allocated(data) >= r['bytes-after'] && allocated(data) <= r['bytes-after'] + 64 * 1024, `st_blocks ${allocated(data)} vs ${r['bytes-after']}`);
  assert.ok(allocated(data) <= before - 3 * MiB, `${before} -> ${allocated(data)}`);
  assert.deepEqual(readFileSync(top), bitmapBefore, 'the add-cow file (header, bitmap) is untouched');
  assert.deepEqual(pyDigest(top), want, 'the Python reader reads the same disk');
  assert.deepEqual(await vdiskDigest(top, RAW), want);
  assert.match(ok(vdisk('check', '--backing-as', 'raw', top)), /No errors were found/);
  // Nothing more to give back.
  const again = JSON.parse(ok(vdisk('compact', '--backing-as', 'raw', '--output=json', top)));
  assert.deepEqual(again['blocks-released'], { zero: 0, trim: 0 });
  assert.equal(again['bytes-after'], r['bytes-after']);
  // The human report says what happened.
  assert.match(ok(vdisk('compact', '--backing-as', 'raw', '--dry-run', top)), /^Would punch 0 4 KiB granule\(s\) \(zero: 0, trim: 0\) in the image file/m);
});

/** An add-cow file (docs/formats/add-cow.md) written byte by byte here, with sectors [from, to) set. */
function addCowBytes(size: number, backing: string, image: string, set: [number, number][]): Uint8Array {
  const bm = Math.ceil(size / 512 / 8);
  const out = new Uint8Array(2068 + bm);
  out.set([0x41, 0x44, 0x44, 0x5f, 0x43, 0x4f, 0x57, 0xff]);
  new DataView(out.buffer).setUint32(8, 1);
  out.set(new TextEncoder().encode(backing), 12);
  out.set(new TextEncoder().encode(image), 1036);
  new DataView(out.buffer).setBigUint64(2060, BigInt(size));
  for (const [from, to] of set) for (let s = from; s < to; s++) out[2068 + (s >> 3)] |= 1 << (s & 7);
  return out;
}

test('compact add-cow made outside vdisk (image file written by qemu-io, add-cow file by the spec): zero-filled data is punched, the Python reader sees the same disk', async (t) => {
  if (!requireNativeAddon(t) || !requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const d = tempDir();
  t.after(d.cleanup);
  qemuImg('create', '-f', 'raw', join(d.dir, 'base.raw'), '8M');
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 8M', join(d.dir, 'base.raw')]);
  const data = join(d.dir, 'img.raw');
  qemuImg('create', '-f', 'raw', data, '8M');
  // qemu-io writes real zero bytes (-P 0 allocates), data, and bytes under clear bits (never read: trim).
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0 0 2M', '-c', 'write -P 0x66 2M 1M', '-c', 'write -P 0 3M 1M', '-c', 'write -P 0x99 6M 1M', data]);
  const top = join(d.dir, 'top.add-cow');
  const s = (b: number) => b / 512;
  writeFileSync(top, addCowBytes(8 * MiB, 'base.raw', 'img.raw', [[0, s(4 * MiB)]]));
  const want = pyDigest(top);
  assert.deepEqual(await vdiskDigest(top, RAW), want);
  const before = allocated(data);
  assert.ok(before >= 5 * MiB, `qemu-io allocated ${before}`);
  const r = await compactImage({ path: top, openOptions: RAW });
  assert.deepEqual(r.released, { zero: 768, trim: 256 });
  assert.equal(r.bytesBefore - r.bytesAfter, 4 * MiB);
  assert.ok(allocated(data) <= before - 4 * MiB + 64 * 1024, `st_blocks ${before} -> ${allocated(data)}`);
  assert.deepEqual(pyDigest(top), want);
  assert.deepEqual(await vdiskDigest(top, RAW), want);
  // qemu-img reads the image file as the raw file it is: data where it was, zeros in the holes.
  run('qemu-io', ['-f', 'raw', '-c', 'read -P 0 0 2M', '-c', 'read -P 0x66 2M 1M', '-c', 'read -P 0 3M 5M', data]);
  const [c] = await checkImage({ path: top, openOptions: RAW });
  assert.equal(c['check-errors'], 0);
  assert.equal(c.corruptions ?? 0, 0);
  assert.equal(c.leaks ?? 0, 0);
});

test('compact --mode fs on an add-cow holding an ext4 with deleted files: their space goes, e2fsck is clean, debugfs dumps every kept file', async (t) => {
  if (!requireNativeAddon(t) || !requireFsTools(t, 'mkfs.ext4', 'debugfs') || !requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  t.after(d.cleanup);
  const files = { keep1: 2_000_000, gone1: 6_000_000, keep2: 1_000_000, gone2: 3_000_000 };
  const src = sourceTree(d.dir, files, 5);
  const raw = join(d.dir, 'fs.raw');
  fsTool('truncate', ['-s', '32M', raw]);
  fsTool('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', src, raw]);
  for (const f of ['/gone1', '/gone2']) fsTool('debugfs', ['-w', '-R', `rm ${f}`, raw]);
  const top = join(d.dir, 'disk.add-cow');
  await convert({ source: raw, sourceOptions: { format: 'raw' }, target: top, targetFormat: 'add-cow', options: { image_file: 'disk.data' } });
  const data = join(d.dir, 'disk.data');
  const before = allocated(data);
  const r = JSON.parse(ok(vdisk('compact', '--mode', 'fs', '--output=json', top)));
  assert.ok(r.notes.some((n: string) => /ext4/.test(n)), r.notes.join('\n'));
  // 9 MB of deleted files: at least 8 MiB of 4 KiB granules.
  assert.ok(r['blocks-released'].fs >= 2048, JSON.stringify(r));
  // bytes-after counts the data ranges (SEEK_DATA); st_blocks adds the file system's own extent blocks.
  assert.ok(r['bytes-before'] - r['bytes-after'] >= 8 * MiB, JSON.stringify(r));
  assert.ok(allocated(data) <= before - 8 * MiB, `${before} -> ${allocated(data)}`);
  const out = join(d.dir, 'after.raw');
  ok(vdisk('convert', '-O', 'raw', top, out));
  const e2 = run('e2fsck', ['-fn', out], { env: { PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` }, allowFail: true });
  assert.equal(e2.status, 0, e2.stdout + e2.stderr);
  for (const f of ['keep1', 'keep2']) {
    fsTool('debugfs', ['-R', `dump /${f} ${out}.${f}`, out]);
    assert.ok(readFileSync(`${out}.${f}`).equals(readFileSync(join(src, f))), `/${f} reads its original bytes`);
  }
  assert.match(ok(vdisk('check', top)), /No errors were found/);
});

test('compact add-cow: a read-only open is refused; a store that cannot punch holes is refused in one line (a dry run says so)', async (t) => {
  if (!requireNativeAddon(t)) return;
  const d = tempDir();
  t.after(d.cleanup);
  const top = join(d.dir, 'a.add-cow');
  await createImage({ path: top, format: 'add-cow', size: 4 * MiB, options: { image_file: 'a.raw' } });
  const c = await openChain(top);
  await c.writeZeroes(0, MiB);
  await c.close();
  await assert.rejects(compactImage({ path: top, openOptions: { readOnly: true } }), (e: unknown) => isBlockError(e, 'read-only'));
  // A store without the capability (as without the native addon, or off Linux).
  const noPunch = async (path: string, o: OpenStoreOptions): Promise<Store> => {
    const s = await openFileStore(path, o);
    return new Proxy(s, { get: (target, p) => (p === 'punchHole' ? undefined : Reflect.get(target, p, target)) });
  };
  const before = allocated(join(d.dir, 'a.raw'));
  await assert.rejects(compactImage({ path: top, openStore: noPunch }), (e: unknown) => isBlockError(e, 'unsupported') && /cannot punch holes/.test(e.message) && !e.message.includes('\n'));
  assert.equal(allocated(join(d.dir, 'a.raw')), before);
  const dry = await compactImage({ path: top, openStore: noPunch, dryRun: true });
  assert.equal(dry.released.zero, 256);
  assert.ok(dry.notes.some((n) => /a real run would be refused/.test(n)), dry.notes.join('\n'));
  // A file system that cannot punch (EOPNOTSUPP): one clear line, nothing changed.
  const unsupported = async (path: string, o: OpenStoreOptions): Promise<Store> => {
    const s = await openFileStore(path, o);
    return new Proxy(s, {
      get: (target, p) =>
        p === 'punchHole' ? async () => Promise.reject(new (await import('../src/core/errors.js')).BlockError('unsupported', 'the file system under this file cannot punch holes (fallocate PUNCH_HOLE: EOPNOTSUPP): no space can be given back here')) : Reflect.get(target, p, target),
    });
  };
  await assert.rejects(compactImage({ path: top, openStore: unsupported }), (e: unknown) => isBlockError(e, 'unsupported') && /EOPNOTSUPP/.test(e.message));
  assert.equal(allocated(join(d.dir, 'a.raw')), before);
});

test('compact add-cow: a crash at every punch and flush leaves a disk that reads exactly as before and checks clean', async () => {
  const TOP = '/c/top.add-cow';
  const DATA = '/c/data.raw';
  const BASE = '/c/base.raw';
  const size = 2 * MiB;
  const fs = new MemoryFs();
  const base = new MemoryStore(BASE);
  await base.write(0, new Uint8Array(size).fill(0xab));
  fs.files.set(BASE, base);
  await createImage({ path: TOP, format: 'add-cow', size, options: { image_file: 'data.raw' }, backing: { path: 'base.raw', format: 'raw' }, openStore: fs.opener() });
  const r = rng(9);
  const open = (opener = fs.opener()) => openChain(TOP, { openStore: opener, backingFormats: ['raw'] });
  const c = await open();
  await c.write(0, randomBytes(r, 64 * 1024));
  await c.writeZeroes(64 * 1024, 256 * 1024); // zero
  await c.write(320 * 1024, randomBytes(r, 100 * 1024));
  await c.trim(320 * 1024, 64 * 1024); // trim
  await c.writeZeroes(1024 * 1024, 200 * 1024); // zero
  await c.write(1300 * 1024, randomBytes(r, 8 * 1024));
  await c.close();
  const readAll = async (opener = fs.opener()) => {
    const ch = await open(opener);
    const buf = new Uint8Array(size);
    await ch.read(0, buf);
    await ch.close();
    return sha256(buf);
  };
  const want = await readAll();
  const snapshot = new Map([...fs.files].map(([p, s]) => [p, s.bytes()]));

  let operations = 0;
  for (let crashAt = 0; ; crashAt++) {
    const faults = new Map([TOP, DATA].map((p) => [p, new FaultStore(p, snapshot.get(p)!, Infinity)]));
    let count = 0;
    const plain = fs.opener();
    // One power supply: the crash hits whichever file makes mutating operation number crashAt.
    const opener = async (path: string, o: OpenStoreOptions): Promise<Store> => {
      const f = faults.get(path);
      if (!f) return plain(path, o);
      const tick = <A extends unknown[]>(op: (...a: A) => Promise<void>) => (...a: A) => {
        if (count++ >= crashAt) for (const g of faults.values()) g.failAfter = Math.min(g.failAfter, g.operations);
        return op(...a);
      };
      return {
        path,
        readOnly: o.readOnly ?? false,
        size: () => f.size(),
        read: (offset, into) => f.read(offset, into),
        write: tick((offset: number, b: Uint8Array) => f.write(offset, b)),
        punchHole: tick((offset: number, length: number) => f.punchHole(offset, length)),
        truncate: tick((n: number) => f.truncate(n)),
        flush: tick(() => f.flush()),
        close: async () => {},
      };
    };
    let crashed = false;
    try {
      const res = await compactImage({ path: TOP, openStore: opener, openOptions: { backingFormats: ['raw'] } });
      if (crashAt === 0) assert.ok(res.released.zero > 0 && res.released.trim > 0, JSON.stringify(res));
    } catch (e) {
      assert.ok(isBlockError(e, 'io') && /injected crash/.test(e.message), String(e));
      crashed = true;
    }
    if (!crashed) {
      operations = count;
      break;
    }
    for (const mode of ['durable', 'all', 'subset'] as const) {
      const after = new MemoryFs();
      after.files.set(BASE, base);
      for (const [p, f] of faults) after.files.set(p, new MemoryStore(p, await f.crashImage(mode, crashAt + 1)));
      assert.equal(await readAll(after.opener()), want, `crash at ${crashAt} (${mode})`);
      const [ch] = await checkImage({ path: TOP, openOptions: { openStore: after.opener(), backingFormats: ['raw'] } });
      assert.equal((ch.corruptions ?? 0) + ch['check-errors'], 0, `crash at ${crashAt} (${mode})`);
    }
  }
  // Punches (the zero and trim granules, merged into ranges) and the flushes: every one was crashed at.
  assert.ok(operations >= 4, `operations: ${operations}`);
});

test('FileStore.punchHole: the range reads zeros, the file keeps its length, SEEK_HOLE sees the hole; a read-only store refuses', async (t) => {
  if (!requireNativeAddon(t)) return;
  const d = tempDir();
  t.after(d.cleanup);
  const path = join(d.dir, 'f.bin');
  writeFileSync(path, new Uint8Array(64 * 1024).fill(0xee));
  const s = await openFileStore(path, {});
  try {
    assert.ok(s.punchHole, 'a local file on Linux can punch');
    assert.deepEqual(await s.allocation!(0, 64 * 1024), [{ offset: 0, length: 64 * 1024, data: true }]);
    await s.punchHole!(16 * 1024, 32 * 1024);
    await s.flush();
    assert.equal(await s.size(), 64 * 1024);
    const back = new Uint8Array(64 * 1024);
    await s.read(0, back);
    assert.ok(back.subarray(16 * 1024, 48 * 1024).every((b) => b === 0));
    assert.ok(back.subarray(0, 16 * 1024).every((b) => b === 0xee) && back.subarray(48 * 1024).every((b) => b === 0xee));
    // Asked again after the punch (not the "no holes" verdict of the first call).
    assert.deepEqual(await s.allocation!(0, 64 * 1024), [
      { offset: 0, length: 16 * 1024, data: true },
      { offset: 16 * 1024, length: 32 * 1024, data: false },
      { offset: 48 * 1024, length: 16 * 1024, data: true },
    ]);
  } finally {
    await s.close();
  }
  const ro = await openFileStore(path, { readOnly: true });
  try {
    await assert.rejects(ro.punchHole!(0, 4096), (e: unknown) => isBlockError(e, 'read-only'));
  } finally {
    await ro.close();
  }
  assert.equal(readFileSync(path)[0], 0xee);
});
