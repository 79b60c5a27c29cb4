import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import { openChain, openLayer } from '../src/chain/open.js';
import { createImage } from '../src/ops/create.js';
import { BlockError } from '../src/core/errors.js';
import { Bitmap } from '../src/formats/add-cow/bitmap.js';
import { HEADER_SIZE, HeaderStruct, decodeHeader, encodeHeader } from '../src/formats/add-cow/header.js';
import { addCowFormat } from '../src/formats/add-cow/index.js';
import type { AddCowImage } from '../src/formats/add-cow/image.js';
import { rng, randInt, randomBytes } from './helpers/random.js';

const KiB = 1024;
const isKind = (k: string) => (e: unknown) => {
  assert.ok(e instanceof BlockError, `expected a BlockError, got ${String(e)}`);
  assert.equal(e.kind, k, e.message);
  return true;
};

/** A folder in memory with a patterned raw base and an add-cow over it, made by the generic create. */
async function setup(opts: { size?: number; baseSize?: number; backing?: boolean; imageFile?: string } = {}) {
  const fs = new MemoryFs();
  const size = opts.size ?? 64 * KiB;
  const base = new Uint8Array(opts.baseSize ?? size).map((_, i) => ((i * 7) ^ (i >> 9)) & 0xff);
  if (opts.backing !== false) {
    const s = new MemoryStore('/d/base.raw');
    await s.write(0, base);
    fs.files.set('/d/base.raw', s);
  }
  await createImage({
    path: '/d/top.add-cow',
    format: 'add-cow',
    size: opts.size,
    options: { image_file: opts.imageFile ?? 'data.raw' },
    backing: opts.backing === false ? undefined : { path: 'base.raw', format: 'raw' },
    openStore: fs.opener(),
  });
  return { fs, base, size };
}

function snapshot(fs: MemoryFs): Map<string, Uint8Array> {
  return new Map([...fs.files].map(([k, v]) => [k, v.bytes()]));
}

function assertUnchanged(fs: MemoryFs, before: Map<string, Uint8Array>): void {
  assert.deepEqual([...fs.files.keys()].sort(), [...before.keys()].sort(), 'no file created or removed');
  for (const [k, v] of before) assert.deepEqual(fs.files.get(k)!.bytes(), v, `${k} unchanged`);
}

test('header: encode/decode round trip, layout offsets as documented', () => {
  assert.equal(HEADER_SIZE, 2068);
  assert.deepEqual(HeaderStruct.offsets, { magic: 0, version: 8, backingFile: 12, imageFile: 1036, size: 2060 });
  const buf = encodeHeader({ backingFile: '../base.vhd', imageFile: 'data.raw', size: 3 * 512 });
  assert.equal(new TextDecoder().decode(buf.subarray(0, 7)), 'ADD_COW');
  assert.equal(buf[7], 0xff);
  assert.equal(new DataView(buf.buffer).getUint32(8, false), 1);
  assert.equal(new DataView(buf.buffer).getBigUint64(2060, false), 1536n);
  assert.deepEqual(decodeHeader(buf, 'x', 2 ** 41), { backingFile: '../base.vhd', imageFile: 'data.raw', size: 1536 });
  assert.throws(() => encodeHeader({ backingFile: 'x'.repeat(1024), imageFile: 'a', size: 0 }), isKind('invalid-argument'));
  assert.throws(() => encodeHeader({ backingFile: 'a\0b', imageFile: 'a', size: 0 }), isKind('invalid-argument'));
});

test('header: single-field corruptions give the right error kind', () => {
  const good = encodeHeader({ backingFile: 'b', imageFile: 'i', size: 4096 });
  const mutate = (f: (b: Uint8Array, dv: DataView) => void) => {
    const b = good.slice();
    f(b, new DataView(b.buffer));
    return () => decodeHeader(b, 'x', 2 ** 41);
  };
  assert.throws(mutate((b) => (b[0] = 0x61)), isKind('corrupt'));
  assert.throws(mutate((b) => (b[7] = 0)), isKind('corrupt'));
  assert.throws(mutate((_, dv) => dv.setUint32(8, 2)), isKind('unsupported'));
  assert.throws(mutate((_, dv) => dv.setBigUint64(2060, 4097n)), isKind('corrupt'));
  assert.throws(mutate((_, dv) => dv.setBigUint64(2060, 2n ** 63n)), isKind('corrupt'));
  assert.throws(mutate((_, dv) => dv.setBigUint64(2060, 2n ** 42n)), isKind('unsupported'));
  assert.throws(mutate((b) => b.fill(0x41, 12, 1036)), isKind('corrupt')); // unterminated backing name
  assert.throws(mutate((b) => b.fill(0x41, 1036, 2060)), isKind('corrupt')); // unterminated image name
  assert.throws(mutate((b) => b.fill(0, 1036, 2060)), isKind('corrupt')); // empty image name
  assert.throws(mutate((b) => (b[12] = 0xc3)), isKind('corrupt')); // not UTF-8 (0xc3 then NUL)
  assert.throws(() => decodeHeader(good.subarray(0, 2067), 'x', 2 ** 41), isKind('corrupt'));
  // An empty backing name is valid: no backing file.
  assert.equal(mutate((b) => b.fill(0, 12, 1036))().backingFile, '');
});

test('bitmap: runs and setRange agree with a per-bit model (random, including word-sized runs)', () => {
  const r = rng(5);
  for (let round = 0; round < 30; round++) {
    const sectors = randInt(r, 1, 3000);
    const model = new Uint8Array(sectors);
    const bm = new Bitmap(sectors);
    for (let i = 0; i < 25; i++) {
      const a = randInt(r, 0, sectors - 1);
      const b = Math.min(sectors, a + randInt(r, 1, r() < 0.3 ? 600 : 20));
      const v = r() < 0.7;
      bm.setRange(a, b, v);
      model.fill(v ? 1 : 0, a, b);
    }
    const from = randInt(r, 0, sectors - 1);
    const to = randInt(r, from + 1, sectors);
    let pos = from;
    for (const run of bm.runs(from, to)) {
      assert.equal(run.start, pos);
      assert.ok(run.end > run.start);
      for (let s = run.start; s < run.end; s++) assert.equal(model[s] === 1, run.set, `sector ${s}`);
      if (run.end < to) assert.notEqual(model[run.end] === 1, run.set, 'runs are maximal');
      pos = run.end;
    }
    assert.equal(pos, to);
    assert.equal(bm.countSet(), model.reduce((a, b) => a + b, 0));
    // On-disk encoding: bit n mod 8 of byte n/8, least significant first.
    const v = bm.view();
    for (let s = 0; s < sectors; s++) assert.equal((v[s >> 3] >> (s & 7)) & 1, model[s]);
  }
});

test('bitmap: dirty pieces are snapshots, merged when adjacent, and bits past the end are dropped', () => {
  const bm = new Bitmap(8 * 2048); // 2048 bytes = 4 pieces
  bm.setRange(0, 8, true);
  bm.setRange(8 * 600, 8 * 1100, true); // pieces 1 and 2
  const pieces = bm.takeDirty();
  assert.deepEqual(pieces.map((p) => [p.offset, p.data.length]), [[0, 1536]]);
  bm.setRange(0, 8, false);
  assert.equal(pieces[0].data[0], 0xff, 'snapshot not affected by later changes');
  assert.deepEqual(bm.takeDirty().map((p) => p.offset), [0]);
  assert.equal(bm.takeDirty().length, 0);
  const odd = new Bitmap(13, new Uint8Array([0xff, 0xff]));
  assert.equal(odd.countSet(), 13);
  assert.ok(Bitmap.hasStrayTail(new Uint8Array([0xff, 0xff]), 13));
  assert.ok(!Bitmap.hasStrayTail(new Uint8Array([0xff, 0x1f]), 13));
  odd.resize(10);
  assert.deepEqual([...odd.view()], [0xff, 0x03]);
  odd.resize(20);
  assert.equal(odd.countSet(), 10);
});

test('create: layout on disk, relative names, sparse image file, size from the backing', async () => {
  const { fs, size } = await setup();
  const f = fs.files.get('/d/top.add-cow')!.bytes();
  assert.equal(f.length, HEADER_SIZE + size / 512 / 8);
  assert.deepEqual(decodeHeader(f, 'x', 2 ** 41), { backingFile: 'base.raw', imageFile: 'data.raw', size });
  assert.ok(f.subarray(HEADER_SIZE).every((b) => b === 0));
  assert.equal(fs.files.get('/d/data.raw')!.bytes().length, size);
  const img = (await openLayer('/d/top.add-cow', { openStore: fs.opener(), readOnly: true })) as AddCowImage;
  assert.equal(img.format, 'add-cow');
  assert.deepEqual(img.backing, { recorded: 'base.raw', candidates: ['base.raw'] });
  assert.deepEqual(img.info().specific, {
    'backing-file': 'base.raw',
    'image-file': 'data.raw',
    'image-file-path': '/d/data.raw',
    'allocated-bytes': 0,
    'bitmap-bytes': 16,
  });
  await img.close();

  // Names in other folders are stored relative to the add-cow file; default image file name.
  const fs2 = new MemoryFs();
  const b = new MemoryStore('/x/base/b.raw');
  await b.truncate(8192);
  fs2.files.set('/x/base/b.raw', b);
  await createImage({ path: '/x/img/t.add-cow', format: 'add-cow', backing: { path: '/x/base/b.raw' }, openStore: fs2.opener() });
  const h = decodeHeader(fs2.files.get('/x/img/t.add-cow')!.bytes(), 'x', 2 ** 41);
  assert.deepEqual(h, { backingFile: '../base/b.raw', imageFile: 't.add-cow.raw', size: 8192 });
  assert.ok(fs2.files.has('/x/img/t.add-cow.raw'));
});

test('create: an existing, larger image file is kept and used', async () => {
  const fs = new MemoryFs();
  const data = new MemoryStore('/d/big.raw');
  await data.write(0, new Uint8Array(20000).fill(9));
  fs.files.set('/d/big.raw', data);
  await createImage({ path: '/d/n.add-cow', format: 'add-cow', size: 8192, options: { image_file: 'big.raw' }, openStore: fs.opener() });
  assert.equal(fs.files.get('/d/big.raw')!.bytes().length, 20000);
  const c = await openChain('/d/n.add-cow', { openStore: fs.opener(), backingFormats: ['raw'] });
  const got = new Uint8Array(8192);
  await c.read(0, got);
  assert.ok(got.every((x) => x === 0), 'clear bits without backing read zeros, not the stale image file');
  await c.write(512, new Uint8Array(512).fill(4));
  await c.read(0, got);
  assert.ok(got.subarray(512, 1024).every((x) => x === 4));
  await c.close();
});

test('random unaligned writes and zero writes through the chain equal a flat model, before and after reopen', async () => {
  for (const seed of [1, 2, 3]) {
    const { fs, base, size } = await setup({ size: 96 * KiB, baseSize: 80 * KiB });
    const model = new Uint8Array(size);
    model.set(base);
    const r = rng(seed);
    let c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'] });
    for (let i = 0; i < 40; i++) {
      const off = randInt(r, 0, size - 1);
      const len = Math.min(size - off, randInt(r, 1, 9000));
      if (r() < 0.2) {
        await c.writeZeroes(off, len);
        model.fill(0, off, off + len);
      } else {
        const d = randomBytes(r, len);
        await c.write(off, d);
        model.set(d, off);
      }
      if (r() < 0.2) await c.flush();
      if (r() < 0.1) {
        await c.close();
        c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'] });
      }
    }
    const got = new Uint8Array(size);
    await c.read(0, got);
    assert.deepEqual(got, model);
    await c.close();
    assert.deepEqual(fs.files.get('/d/base.raw')!.bytes(), base, 'backing untouched');
    c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'], readOnly: true });
    await c.read(0, got);
    assert.deepEqual(got, model);
    // blockStatus: set runs are data in the add-cow layer at the same offset; the rest comes from the base or is zero past it.
    const top = c.top as AddCowImage;
    const bm = fs.files.get('/d/top.add-cow')!.bytes().subarray(HEADER_SIZE);
    for (const e of await top.blockStatus(0, size)) {
      for (let s = e.offset / 512; s < (e.offset + e.length) / 512; s++) assert.equal((bm[s >> 3] >> (s & 7)) & 1, e.kind === 'data' ? 1 : 0);
      if (e.kind === 'data') assert.equal(e.hostOffset, e.offset);
      else assert.equal(e.kind, 'unallocated');
    }
    assert.equal(top.info().specific['allocated-bytes'], [...bm].reduce((a, b) => a + popcount(b), 0) * 512);
    await c.close();
  }
});

function popcount(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}

test('no backing: clear bits are zero extents and read as zeros', async () => {
  const { fs } = await setup({ backing: false, size: 8192 });
  const img = await openLayer('/d/top.add-cow', { openStore: fs.opener() });
  assert.equal(img.backing, null);
  await img.write(1024, new Uint8Array(1024).fill(1));
  assert.deepEqual(
    (await img.blockStatus(0, 8192)).map((e) => [e.offset, e.length, e.kind]),
    [[0, 1024, 'zero'], [1024, 1024, 'data'], [2048, 6144, 'zero']],
  );
  const got = new Uint8Array(4096);
  await img.read(0, got);
  assert.ok(got.subarray(0, 1024).every((x) => x === 0) && got.subarray(1024, 2048).every((x) => x === 1));
  await assert.rejects(img.write(100, new Uint8Array(512)), isKind('invalid-argument'));
  await assert.rejects(img.write(8192, new Uint8Array(512)), isKind('out-of-range'));
  await img.close();
});

test('flush writes only the changed bitmap pieces, after syncing the image file', async () => {
  const { fs } = await setup({ size: 8 << 20 }); // 2048-byte bitmap = 4 pieces
  const log: string[] = [];
  const opener = fs.opener();
  const traced = async (path: string, o: Parameters<typeof opener>[1]) => {
    const s = await opener(path, o);
    const name = path.split('/').pop();
    return Object.assign(Object.create(s), {
      write: (off: number, d: Uint8Array) => (log.push(`${name} write ${off}+${d.length}`), s.write(off, d)),
      flush: () => (log.push(`${name} flush`), s.flush()),
    });
  };
  const img = await openLayer('/d/top.add-cow', { openStore: traced });
  await img.write(4096, new Uint8Array(4096));
  await img.write(6 << 20, new Uint8Array(512));
  assert.deepEqual(log, ['data.raw write 4096+4096', `data.raw write ${6 << 20}+512`], 'no bitmap write before flush');
  log.length = 0;
  await img.flush();
  assert.deepEqual(log, ['data.raw flush', `top.add-cow write ${HEADER_SIZE}+512`, `top.add-cow write ${HEADER_SIZE + 1536}+512`, 'top.add-cow flush']);
  log.length = 0;
  await img.close();
  assert.deepEqual(log, ['data.raw flush', 'top.add-cow flush'], 'nothing left to write at close');
});

test('resize: grow extends bitmap, size and image file; shrink drops bits past the end', async () => {
  const { fs, base } = await setup({ size: 16 * KiB });
  let img = (await openLayer('/d/top.add-cow', { openStore: fs.opener() })) as AddCowImage;
  await img.write(0, new Uint8Array(16 * KiB).fill(0xee)); // every bit set
  await assert.rejects(img.resize(8 * KiB, {}), isKind('invalid-argument'));
  await assert.rejects(img.resize(8 * KiB + 1, { shrink: true }), isKind('invalid-argument'));
  await img.resize(5 * 512, { shrink: true }); // 5 sectors: a partial last byte
  assert.equal(img.size, 2560);
  let f = fs.files.get('/d/top.add-cow')!.bytes();
  assert.equal(f.length, HEADER_SIZE + 1);
  assert.equal(f[HEADER_SIZE], 0x1f);
  assert.equal(decodeHeader(f, 'x', 2 ** 41).size, 2560);
  assert.equal(fs.files.get('/d/data.raw')!.bytes().length, 2560);
  await img.resize(32 * KiB, {});
  f = fs.files.get('/d/top.add-cow')!.bytes();
  assert.equal(f.length, HEADER_SIZE + 8);
  assert.deepEqual([...f.subarray(HEADER_SIZE)], [0x1f, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(fs.files.get('/d/data.raw')!.bytes().length, 32 * KiB);
  await img.close();
  const c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'] });
  assert.equal(c.size, 32 * KiB);
  const got = new Uint8Array(32 * KiB);
  await c.read(0, got);
  const want = new Uint8Array(32 * KiB);
  want.set(base.subarray(0, 16 * KiB));
  want.fill(0xee, 0, 2560);
  assert.deepEqual(got, want, 'dropped sectors show the backing again; past the backing, zeros');
  await c.close();
  img = (await openLayer('/d/top.add-cow', { openStore: fs.opener(), readOnly: true })) as AddCowImage;
  await assert.rejects(img.resize(64 * KiB, {}), isKind('read-only'));
  await img.close();
});

test('setBacking rewrites only the backing name; null removes it', async () => {
  const { fs } = await setup({ size: 8192 });
  const other = new MemoryStore('/d/sub/other.raw');
  await other.write(0, new Uint8Array(8192).fill(0x77));
  fs.files.set('/d/sub/other.raw', other);
  const img = await openLayer('/d/top.add-cow', { openStore: fs.opener() });
  const before = fs.files.get('/d/top.add-cow')!.bytes();
  const target = { path: 'sub/other.raw', absolutePath: '/d/sub/other.raw', format: 'raw', size: 8192, image: img, mtime: new Date() };
  await img.setBacking!(target);
  const after = fs.files.get('/d/top.add-cow')!.bytes();
  assert.equal(decodeHeader(after, 'x', 2 ** 41).backingFile, 'sub/other.raw');
  assert.deepEqual(after.subarray(1036), before.subarray(1036), 'only the backing field changed');
  assert.deepEqual(img.backing, { recorded: 'sub/other.raw', candidates: ['sub/other.raw'] });
  await assert.rejects(img.setBacking!({ ...target, absolutePath: '/d/data.raw' }), isKind('invalid-argument'));
  await img.close();
  let c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'], readOnly: true });
  const got = new Uint8Array(8192);
  await c.read(0, got);
  assert.ok(got.every((x) => x === 0x77));
  await c.close();
  const img2 = await openLayer('/d/top.add-cow', { openStore: fs.opener() });
  await img2.setBacking!(null);
  await img2.close();
  c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'], readOnly: true });
  assert.equal(c.layers.length, 1);
  await c.close();
});

test('check: clean image, stray tail bits (repairable), image file shrunk behind our back', async () => {
  const { fs } = await setup({ size: 13 * 512 });
  let img = await openLayer('/d/top.add-cow', { openStore: fs.opener() });
  let res = await img.check!({});
  assert.deepEqual(res.problems, []);
  assert.deepEqual(res.details, { 'allocated-sectors': 0, 'total-sectors': 13, 'image-file': '/d/data.raw' });
  await img.close();
  await fs.files.get('/d/top.add-cow')!.write(HEADER_SIZE + 1, new Uint8Array([0xe0]));
  img = await openLayer('/d/top.add-cow', { openStore: fs.opener() });
  assert.equal(img.info().specific['allocated-bytes'], 0, 'stray bits are ignored');
  res = await img.check!({ repair: 'all' });
  assert.deepEqual(res.problems.map((p) => [p.severity, p.repaired]), [['warning', true]]);
  assert.equal(fs.files.get('/d/top.add-cow')!.bytes()[HEADER_SIZE + 1], 0);
  await fs.files.get('/d/data.raw')!.truncate(512);
  res = await img.check!({});
  assert.deepEqual(res.problems.map((p) => p.severity), ['corruption']);
  await img.close();
});

// ---------------------------------------------------------------- bad input

async function badOpen(mutate: (fs: MemoryFs) => Promise<void>, kind: string, format?: string) {
  const { fs } = await setup({ size: 13 * 512 });
  await mutate(fs);
  const before = snapshot(fs);
  await assert.rejects(openChain('/d/top.add-cow', { openStore: fs.opener(), format }), isKind(kind));
  // A loop is the chain's finding; every other defect is the layer's own.
  if (kind !== 'loop') await assert.rejects(openLayer('/d/top.add-cow', { openStore: fs.opener(), format, readOnly: true }), isKind(kind));
  assertUnchanged(fs, before);
}

const patchHeader = (f: (h: Uint8Array, dv: DataView) => void) => async (fs: MemoryFs) => {
  const s = fs.files.get('/d/top.add-cow')!;
  const b = s.bytes();
  f(b, new DataView(b.buffer));
  await s.truncate(0);
  await s.write(0, b);
};

test('bad input: wrong magic (with -f add-cow), wrong version', async () => {
  await badOpen(patchHeader((h) => (h[3] = 0x2d)), 'corrupt', 'add-cow');
  await badOpen(patchHeader((_, dv) => dv.setUint32(8, 0)), 'unsupported');
  await badOpen(patchHeader((_, dv) => dv.setUint32(8, 2)), 'unsupported');
});

test('bad input: truncated header (also a file holding only the magic) and truncated bitmap', async () => {
  await badOpen(async (fs) => fs.files.get('/d/top.add-cow')!.truncate(1000), 'corrupt');
  await badOpen(async (fs) => fs.files.get('/d/top.add-cow')!.truncate(8), 'corrupt');
  await badOpen(async (fs) => fs.files.get('/d/top.add-cow')!.truncate(HEADER_SIZE + 1), 'corrupt');
});

test('bad input: size not a multiple of 512, size larger than the image file', async () => {
  await badOpen(patchHeader((_, dv) => dv.setBigUint64(2060, 13n * 512n + 1n)), 'corrupt');
  await badOpen(patchHeader((_, dv) => dv.setBigUint64(2060, 16n * 512n)), 'corrupt'); // bitmap still 2 bytes, image file too short
  await badOpen(async (fs) => {
    await patchHeader((_, dv) => dv.setBigUint64(2060, 24n * 512n))(fs);
    await fs.files.get('/d/top.add-cow')!.truncate(HEADER_SIZE + 3);
  }, 'corrupt'); // bitmap complete, image file too short
  await badOpen(async (fs) => fs.files.get('/d/data.raw')!.truncate(13 * 512 - 1), 'corrupt');
});

test('bad input: empty image name, unterminated names', async () => {
  await badOpen(patchHeader((h) => h.fill(0, 1036, 2060)), 'corrupt');
  await badOpen(patchHeader((h) => h.fill(0x61, 12, 1036)), 'corrupt');
  await badOpen(patchHeader((h) => h.fill(0x61, 1036, 2060)), 'corrupt');
});

test('bad input: image file missing (error names the image file), image file is the add-cow file', async () => {
  const { fs } = await setup({ size: 4096 });
  fs.files.delete('/d/data.raw');
  const before = snapshot(fs);
  await assert.rejects(openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'] }), (e) => {
    isKind('not-found')(e);
    assert.equal((e as BlockError).context.path, '/d/data.raw');
    assert.match((e as BlockError).message, /image file 'data\.raw' not found/);
    return true;
  });
  assertUnchanged(fs, before);
  await badOpen(patchHeader((h) => h.set(new TextEncoder().encode('top.add-cow\0'), 1036)), 'corrupt');
});

test('bad input: a backing chain that loops back (self, and through a second add-cow)', async () => {
  await badOpen(patchHeader((h) => h.set(new TextEncoder().encode('top.add-cow\0'), 12)), 'loop');
  await badOpen(async (fs) => {
    await patchHeader((h) => h.set(new TextEncoder().encode('./top.add-cow\0'), 12))(fs);
  }, 'loop');
  const { fs } = await setup({ size: 4096 });
  await createImage({ path: '/d/b.add-cow', format: 'add-cow', size: 4096, options: { image_file: 'b.raw' }, backing: { path: 'top.add-cow' }, backingOpenOptions: { backingFormats: ['raw'] }, openStore: fs.opener() });
  await patchHeader((h) => h.set(new TextEncoder().encode('b.add-cow\0'), 12))(fs);
  const before = snapshot(fs);
  await assert.rejects(openChain('/d/top.add-cow', { openStore: fs.opener() }), isKind('loop'));
  assertUnchanged(fs, before);
});

test('bad input at create: nothing is written', async () => {
  const { fs } = await setup({ size: 4096 });
  const small = new MemoryStore('/d/small.raw');
  await small.truncate(1024);
  fs.files.set('/d/small.raw', small);
  const before = snapshot(fs);
  const tryCreate = (options: Record<string, string>, extra: { size?: number; backing?: { path: string } } = {}) =>
    createImage({ path: '/d/new.add-cow', format: 'add-cow', size: extra.size ?? 4096, options, backing: extra.backing, openStore: fs.opener() });
  await assert.rejects(tryCreate({ image_file: 'small.raw' }), isKind('invalid-argument')); // not raw-sized
  await assert.rejects(tryCreate({ image_file: 'top.add-cow' }), isKind('invalid-argument')); // not raw (an add-cow file)
  await assert.rejects(tryCreate({ image_file: '' }), isKind('invalid-argument'));
  await assert.rejects(tryCreate({ image_file: 'x'.repeat(1100) }), isKind('invalid-argument')); // name does not fit
  await assert.rejects(tryCreate({ image_file: 'new.add-cow' }), isKind('invalid-argument'));
  await assert.rejects(tryCreate({ image_file: 'base.raw' }, { backing: { path: 'base.raw' } }), isKind('invalid-argument'));
  await assert.rejects(tryCreate({ image_file: 'n.raw' }, { size: 1000 }), isKind('invalid-argument'));
  await assert.rejects(
    addCowFormat.create!({ path: '/d/new.add-cow', size: 1000, options: {}, openStore: fs.opener(), probe: async () => 'raw' }),
    isKind('invalid-argument'),
  );
  await assert.rejects(tryCreate({ image_file: 'n.raw' }, { size: 2 ** 42 }), isKind('out-of-range'));
  await assert.rejects(createImage({ path: '/d/top.add-cow', format: 'add-cow', size: 4096, options: { image_file: 'z.raw' }, openStore: fs.opener() }), isKind('invalid-argument')); // exists
  assertUnchanged(fs, before);
});

test('probe: magic decides; short or foreign files are not add-cow', () => {
  const h = encodeHeader({ backingFile: '', imageFile: 'i', size: 0 });
  assert.equal(addCowFormat.probe({ head: h, tail: new Uint8Array(0), size: h.length }), 100);
  assert.equal(addCowFormat.probe({ head: h.subarray(0, 8), tail: new Uint8Array(0), size: 8 }), 100);
  assert.equal(addCowFormat.probe({ head: h.subarray(0, 7), tail: new Uint8Array(0), size: 7 }), 0);
  assert.equal(addCowFormat.probe({ head: new Uint8Array(4096), tail: new Uint8Array(0), size: 4096 }), 0);
});

test('fuzz: mutated headers and bitmaps only ever raise BlockError and never change the files', async () => {
  const { fs: template } = await setup({ size: 13 * 512 });
  const img0 = template.files.get('/d/top.add-cow')!.bytes();
  const r = rng(99);
  let opened = 0;
  for (let i = 0; i < 400; i++) {
    const b = img0.slice();
    const hot = [0, 7, 8, 11, 12, 13, 1035, 1036, 1037, 2059, 2060, 2063, 2064, 2067, 2068, 2069];
    for (let k = randInt(r, 1, 4); k > 0; k--) {
      const at = r() < 0.6 ? hot[randInt(r, 0, hot.length - 1)] : randInt(r, 0, b.length - 1);
      b[at] = r() < 0.5 ? randInt(r, 0, 255) : b[at] ^ (1 << randInt(r, 0, 7));
    }
    const bytes = r() < 0.2 ? b.subarray(0, randInt(r, 0, b.length)) : b;
    const fs = new MemoryFs();
    for (const [k, v] of template.files) fs.files.set(k, new MemoryStore(k, k === '/d/top.add-cow' ? bytes : v.bytes()));
    const before = snapshot(fs);
    try {
      const c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'], format: 'add-cow' });
      opened++;
      try {
        const got = new Uint8Array(c.size);
        await c.read(0, got);
        await c.blockStatus(0, c.size);
        await (c.top as AddCowImage).check({});
      } finally {
        await c.close();
      }
    } catch (e) {
      assert.ok(e instanceof BlockError, `only BlockError may escape: ${String(e)}`);
    }
    assertUnchanged(fs, before);
  }
  assert.ok(opened > 20, `some mutants are still valid images (${opened})`);
});

test('trim clears bits: the backing shows again, also after flush and reopen', async () => {
  const { fs, base } = await setup({ size: 16 * KiB });
  let c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'] });
  await c.write(0, new Uint8Array(16 * KiB).fill(5));
  await c.flush();
  await c.trim(1000, 5000); // whole sectors 2..10 only (bytes 1024..5632)
  const got = new Uint8Array(16 * KiB);
  await c.read(0, got);
  const want = new Uint8Array(16 * KiB).fill(5);
  want.set(base.subarray(1024, 5632), 1024);
  assert.deepEqual(got, want);
  await c.close();
  c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'], readOnly: true });
  await c.read(0, got);
  assert.deepEqual(got, want);
  assert.equal(c.top.info().specific['allocated-bytes'], 16 * KiB - 4608);
  await c.close();
});

test('grow after an interrupted shrink: stale bitmap bytes past the end never come back as set bits', async () => {
  const { fs, base } = await setup({ size: 8 * KiB });
  // As a shrink from 64 to 16 sectors leaves the file when it stops after the size field: old bytes remain.
  const s = fs.files.get('/d/top.add-cow')!;
  await s.write(2060, new Uint8Array([0, 0, 0, 0, 0, 0, 0x20, 0])); // size 8192
  await s.write(HEADER_SIZE, new Uint8Array(8).fill(0xff).fill(0, 0, 2)); // sectors 16..63 marked written
  await fs.files.get('/d/data.raw')!.write(0, new Uint8Array(32 * KiB).fill(0x99));
  const img = await openLayer('/d/top.add-cow', { openStore: fs.opener() });
  await img.resize!(32 * KiB, {});
  await img.close();
  const c = await openChain('/d/top.add-cow', { openStore: fs.opener(), backingFormats: ['raw'], readOnly: true });
  const got = new Uint8Array(32 * KiB);
  await c.read(0, got);
  const want = new Uint8Array(32 * KiB);
  want.set(base.subarray(0, 8 * KiB));
  assert.deepEqual(got, want);
  await c.close();
});
