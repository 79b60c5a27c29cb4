import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import { openChain, resolveParentName } from '../src/chain/open.js';
import { BlockError } from '../src/core/errors.js';
import { TOY_FORMATS, writeToy, type ToyCreate } from './helpers/toy-format.js';

const MiB = 1 << 20;

async function fsWith(files: Record<string, ToyCreate | Uint8Array>): Promise<MemoryFs> {
  const fs = new MemoryFs();
  for (const [path, spec] of Object.entries(files)) {
    const s = new MemoryStore(path);
    if (spec instanceof Uint8Array) await s.write(0, spec);
    else await writeToy(s, spec);
    fs.files.set(path, s);
  }
  return fs;
}

const open = (fs: MemoryFs, path: string, extra: Parameters<typeof openChain>[1] = {}) =>
  openChain(path, { openStore: fs.opener(), formats: TOY_FORMATS, ...extra });

const kind = (k: string) => (e: unknown) => e instanceof BlockError && e.kind === k;

test('reads fall through unallocated extents to the backing, zero-fill below the bottom', async () => {
  const base = new Uint8Array(MiB).fill(0x11);
  const fs = await fsWith({ '/d/base.raw': base, '/d/mid.toy': { size: MiB, id: 2, backing: 'base.raw', backingFormat: 'raw' }, '/d/top.toy': { size: MiB, id: 3, backing: 'mid.toy', backingFormat: 'toy' } });
  const c = await open(fs, '/d/top.toy');
  assert.equal(c.layers.length, 3);
  await c.write(4096, new Uint8Array(1000).fill(0x33)); // unaligned tail: copy-up from the base
  const got = new Uint8Array(8192);
  await c.read(0, got);
  assert.ok(got.subarray(0, 4096).every((x) => x === 0x11));
  assert.ok(got.subarray(4096, 5096).every((x) => x === 0x33));
  assert.ok(got.subarray(5096).every((x) => x === 0x11));
  await c.writeZeroes(100, 1000);
  await c.read(0, got);
  assert.ok(got.subarray(100, 1100).every((x) => x === 0));
  assert.equal(got[99], 0x11);
  assert.equal(got[1100], 0x11);
  // Only the top was written.
  assert.deepEqual(fs.files.get('/d/base.raw')!.bytes(), base);
  const map = await c.blockStatus(0, MiB);
  assert.deepEqual(map.map((e) => [e.offset, e.length, e.kind, e.depth]), [
    [0, 512, 'data', 0],
    [512, 512, 'zero', 0],
    [1024, 512, 'data', 0], // the partial sector at the end of the zeroed range was copied up
    [1536, 2560, 'data', 2],
    [4096, 1024, 'data', 0],
    [5120, MiB - 5120, 'data', 2],
  ]);
  await c.close();
});

test('a read wholly inside one zero extent reads zeros, never the backing under it', async () => {
  // The chain answers a read that one layer maps as a single zero extent
  // without going further down (Chain.readFrom's single-extent path, taken
  // when mapCached answers: the toy answers for ranges starting in an even
  // 4 KiB page). Every other read test spans several extents, so a bug there
  // that let such a read through to the backing would go unseen.
  const base = new Uint8Array(64 * 1024).fill(0x11);
  const fs = await fsWith({
    '/b.raw': base,
    '/mid.toy': { size: base.length, id: 2, backing: '/b.raw', backingFormat: 'raw' },
    '/top.toy': { size: base.length, id: 3, backing: '/mid.toy', backingFormat: 'toy' },
  });
  const mid = await open(fs, '/mid.toy');
  await mid.writeZeroes(0, 16384); // whole sectors: mid maps them `zero` (state 2), over the base's 0x11
  await mid.close();
  const c = await open(fs, '/top.toy');
  await c.writeZeroes(32768, 16384);
  const cases: Array<[offset: number, length: number, what: string]> = [
    [32768, 4096, 'top zero extent, synchronous map (even page)'],
    [32768 + 1000, 2000, 'top zero extent, unaligned, synchronous map'],
    [36864, 4096, 'top zero extent, awaited map (odd page)'],
    [0, 4096, 'mid zero extent under an unallocated top, synchronous map'],
    [4096 + 512, 512, 'mid zero extent under an unallocated top, awaited map'],
  ];
  for (const [offset, length, what] of cases) {
    const got = new Uint8Array(length).fill(0xee);
    await c.read(offset, got);
    assert.ok(got.every((x) => x === 0), `${what}: read ${offset}+${length} is not all zeros`);
  }
  // The backing still holds its data next to the zeroed ranges (the reads above did not just miss it).
  const next = new Uint8Array(4096);
  await c.read(16384, next);
  assert.ok(next.every((x) => x === 0x11));
  await c.close();
});

test('random unaligned writes through a chain equal a flat reference', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 64 * 1024 - 1 }), fc.integer({ min: 1, max: 5000 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 12 }),
      async (writes) => {
        const size = 64 * 1024;
        const base = new Uint8Array(size).map((_, i) => (i * 31) & 0xff);
        const fs = await fsWith({ '/b.raw': base, '/t.toy': { size, id: 9, backing: '/b.raw', backingFormat: 'raw' } });
        const c = await open(fs, '/t.toy');
        const ref = base.slice();
        for (const [off, len0, v] of writes) {
          const len = Math.min(len0, size - off);
          const d = new Uint8Array(len).fill(v);
          await c.write(off, d);
          ref.set(d, off);
        }
        const got = new Uint8Array(size);
        await c.read(0, got);
        assert.deepEqual(got, ref);
        await c.close();
      },
    ),
    { numRuns: 40 },
  );
});

test('unaligned writes issued all at once land as if applied in issue order (none torn, none lost)', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 16 * 1024 - 1 }), fc.integer({ min: 1, max: 3000 })), { minLength: 2, maxLength: 16 }),
      async (writes) => {
        const size = 16 * 1024;
        const base = new Uint8Array(size).map((_, i) => (i * 7) & 0xff);
        const fs = await fsWith({ '/b.raw': base, '/t.toy': { size, id: 4, backing: '/b.raw', backingFormat: 'raw' } });
        const c = await open(fs, '/t.toy');
        const ref = base.slice();
        // Overlapping requests (sharing a sector, even partly) must run one at a time in arrival order.
        await Promise.all(
          writes.map(([off, len0], i) => {
            const d = new Uint8Array(Math.min(len0, size - off)).fill(i + 1);
            ref.set(d, off);
            return c.write(off, d);
          }),
        );
        const got = new Uint8Array(size);
        await c.read(0, got);
        assert.deepEqual(got, ref);
        await c.close();
      },
    ),
    { numRuns: 60 },
  );
});

test('missing backing file: not-found naming every path tried', async () => {
  const fs = await fsWith({ '/d/top.toy': { size: MiB, id: 1, backing: 'sub\\gone.toy', backingFormat: 'toy' } });
  await assert.rejects(open(fs, '/d/top.toy'), (e: unknown) => {
    assert.ok(e instanceof BlockError && e.kind === 'not-found');
    assert.match(e.message, /gone\.toy.*\/d\/sub\/gone\.toy/);
    assert.equal(e.context.path, '/d/top.toy');
    return true;
  });
  // The layer alone opens, and unallocated ranges read as zeros.
  const c = await open(fs, '/d/top.toy', { layerOnly: true });
  assert.equal(c.layers.length, 1);
  await c.close();
});

test('backing loops and over-deep chains are refused', async () => {
  const loop = await fsWith({ '/a.toy': { size: MiB, id: 1, backing: '/b.toy' }, '/b.toy': { size: MiB, id: 2, backing: '/a.toy' } });
  await assert.rejects(open(loop, '/a.toy'), kind('loop'));
  const self = await fsWith({ '/s.toy': { size: MiB, id: 1, backing: 's.toy' } });
  await assert.rejects(open(self, '/s.toy'), kind('loop'));

  const files: Record<string, ToyCreate> = {};
  for (let i = 0; i < 10; i++) files[`/l${i}.toy`] = { size: MiB, id: i + 1, backing: i < 9 ? `/l${i + 1}.toy` : undefined };
  const deep = await fsWith(files);
  await assert.rejects(open(deep, '/l0.toy', { depthLimit: 5 }), kind('too-deep'));
  const c = await open(deep, '/l0.toy', { depthLimit: 10 });
  assert.equal(c.layers.length, 10);
  await c.close();
});

test('parent identity and size are checked, and the identity check can be overridden', async () => {
  const fs = await fsWith({
    '/p.toy': { size: MiB, id: 7 },
    '/c.toy': { size: MiB, id: 8, backing: '/p.toy', expectedParentId: 6 },
    '/s.toy': { size: 2 * MiB, id: 9, backing: '/p.toy', sameSize: true },
  });
  await assert.rejects(open(fs, '/c.toy'), kind('mismatch'));
  const c = await open(fs, '/c.toy', { ignoreParentId: true });
  await c.close();
  await assert.rejects(open(fs, '/s.toy'), kind('mismatch'));
});

test('a recorded backing format is used, never re-probed', async () => {
  // The parent is a toy image, but the child records "raw": it must be opened as raw.
  const fs = await fsWith({ '/p.toy': { size: MiB, id: 1 }, '/c.toy': { size: MiB, id: 2, backing: '/p.toy', backingFormat: 'raw' } });
  const c = await open(fs, '/c.toy');
  assert.equal(c.layers[1].format, 'raw');
  await c.close();
  const probed = await fsWith({ '/p.toy': { size: MiB, id: 1 }, '/c.toy': { size: MiB, id: 2, backing: '/p.toy' } });
  const c2 = await open(probed, '/c.toy');
  assert.equal(c2.layers[1].format, 'toy');
  await c2.close();
});

test('a shorter backing file reads as zeros past its end', async () => {
  const fs = await fsWith({ '/b.raw': new Uint8Array(4096).fill(5), '/t.toy': { size: 8192, id: 1, backing: '/b.raw', backingFormat: 'raw' } });
  const c = await open(fs, '/t.toy');
  const got = new Uint8Array(8192);
  await c.read(0, got);
  assert.ok(got.subarray(0, 4096).every((x) => x === 5) && got.subarray(4096).every((x) => x === 0));
  await c.close();
});

test('out-of-range and read-only requests are refused', async () => {
  const fs = await fsWith({ '/t.toy': { size: 8192, id: 1 } });
  const ro = await open(fs, '/t.toy', { readOnly: true });
  await assert.rejects(ro.write(0, new Uint8Array(512)), kind('read-only'));
  await assert.rejects(ro.read(8000, new Uint8Array(512)), kind('out-of-range'));
  await assert.rejects(ro.read(-1, new Uint8Array(1)), kind('out-of-range'));
  await ro.close();
});

test('parent names resolve against the child folder, with backslashes accepted', () => {
  assert.equal(resolveParentName('.\\base.vhd', '/img/child.vhd'), '/img/base.vhd');
  assert.equal(resolveParentName('..\\x\\base.vhd', '/img/sub/child.vhd'), '/img/x/base.vhd');
  assert.equal(resolveParentName('/abs/base.vhd', '/img/child.vhd'), '/abs/base.vhd');
  assert.equal(resolveParentName('C:\\VMs\\base.vhd', '/img/child.vhd'), 'C:/VMs/base.vhd');
});
