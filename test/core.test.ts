import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BlockError, fromSystemError, isBlockError } from '../src/core/errors.js';
import { parseSize, formatSize } from '../src/core/size.js';
import { splitAligned, writeUnaligned } from '../src/core/align.js';
import { u64ToNumber, checkRange, isPowerOfTwo } from '../src/core/u64.js';
import { defineStruct } from '../src/codec/struct.js';
import { crc32c } from '../src/core/crc32c.js';
import { guidFromString, guidToString } from '../src/core/guid.js';
import { decodeUtf16, encodeUtf16 } from '../src/core/utf16.js';
import { FaultStore } from './helpers/fault-store.js';
import { MemoryStore } from '../src/io/memory-store.js';
import { readExact } from '../src/io/store.js';
import { Mutex } from '../src/core/mutex.js';

test('parseSize accepts qemu-style suffixes and rejects nonsense', () => {
  assert.equal(parseSize('512'), 512);
  assert.equal(parseSize('64k'), 65536);
  assert.equal(parseSize('1M'), 1 << 20);
  assert.equal(parseSize('2G'), 2 * 2 ** 30);
  assert.equal(parseSize('1T'), 2 ** 40);
  assert.equal(parseSize('1.5M'), 1.5 * 2 ** 20);
  assert.equal(parseSize('10GiB'), 10 * 2 ** 30);
  for (const bad of ['', '-1', 'abc', '1X', '0.3', '99999999999E']) {
    assert.throws(() => parseSize(bad), (e: unknown) => e instanceof BlockError && e.kind === 'invalid-argument', bad);
  }
  assert.equal(formatSize(1 << 30), '1 GiB');
});

test('checked 64-bit conversion refuses values a number cannot hold', () => {
  assert.equal(u64ToNumber(123n, 'x'), 123);
  assert.throws(() => u64ToNumber(2n ** 60n, 'BAT offset'), (e: unknown) => e instanceof BlockError && e.kind === 'corrupt' && /BAT offset/.test(e.message));
  assert.throws(() => checkRange(10, 10, 15, 'header'), /outside the file/);
  checkRange(5, 10, 15, 'header');
  assert.ok(isPowerOfTwo(2 ** 40) && isPowerOfTwo(1) && !isPowerOfTwo(0) && !isPowerOfTwo(3 * 2 ** 20));
});

test('splitAligned covers the range exactly with aligned body', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 5000 }), fc.integer({ min: 1, max: 5000 }), fc.constantFrom(1, 512, 4096), (off, len, align) => {
      const s = splitAligned(off, len, align);
      const parts: [number, number][] = [];
      if (s.head) parts.push([s.head.unit + s.head.from, s.head.unit + s.head.to]);
      if (s.body) {
        assert.equal(s.body.offset % align, 0);
        assert.equal(s.body.length % align, 0);
        parts.push([s.body.offset, s.body.offset + s.body.length]);
      }
      if (s.tail) parts.push([s.tail.unit + s.tail.from, s.tail.unit + s.tail.to]);
      assert.equal(parts[0][0], off);
      assert.equal(parts[parts.length - 1][1], off + len);
      for (let i = 1; i < parts.length; i++) assert.equal(parts[i][0], parts[i - 1][1]);
    }),
  );
});

test('writeUnaligned equals a byte-level reference write', async () => {
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: 3000 }), fc.integer({ min: 1, max: 3000 }), async (off, len) => {
      const disk = new Uint8Array(8192).map((_, i) => (i * 7) & 0xff);
      const ref = disk.slice();
      const data = new Uint8Array(len).map((_, i) => (i * 13 + 1) & 0xff);
      ref.set(data, off);
      const writes: [number, number][] = [];
      await writeUnaligned(
        off,
        data,
        512,
        async (u, into) => into.set(disk.subarray(u, u + into.length)),
        async (o, d) => {
          assert.equal(o % 512, 0);
          assert.equal(d.length % 512, 0);
          writes.push([o, d.length]);
          disk.set(d, o);
        },
      );
      assert.deepEqual(disk, ref);
    }),
  );
});

test('struct codec round-trips and checks its size', () => {
  const S = defineStruct('test struct', 'be', 32, [
    { name: 'magic', type: 'bytes', size: 8 },
    { name: 'a', type: 'u32' },
    { name: 'b', type: 'u64' },
    { name: 'c', type: 'u16' },
    { name: 'd', type: 'u8' },
  ] as const);
  const v = S.decode(S.encode({ magic: new TextEncoder().encode('cxsparse'), a: 0xdeadbeef, b: 2n ** 40n, c: 513, d: 7 }));
  assert.equal(new TextDecoder().decode(v.magic), 'cxsparse');
  assert.equal(v.a, 0xdeadbeef);
  assert.equal(v.b, 2n ** 40n);
  assert.equal(v.c, 513);
  assert.equal(S.offsets.b, 12);
  assert.throws(() => S.decode(new Uint8Array(10)), (e: unknown) => e instanceof BlockError && e.kind === 'corrupt');
  assert.throws(() => defineStruct('too small', 'le', 4, [{ name: 'x', type: 'u64' }] as const));
});

test('crc32c, GUID and UTF-16 helpers', () => {
  assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
  const g = 'caa16737-fa36-4d43-b3b6-33f0aa44e76b';
  assert.equal(guidToString(guidFromString(g)), g);
  assert.equal(guidFromString(g)[0], 0x37); // Data1 little-endian
  assert.equal(decodeUtf16(encodeUtf16('C:\\disk.vhd', 'le'), 'le'), 'C:\\disk.vhd');
  const be = encodeUtf16('parent', 'be');
  assert.equal(be[0], 0);
  assert.equal(decodeUtf16(new Uint8Array([...be, 0, 0, 0, 65]), 'be'), 'parent');
});

test('fault store: unflushed writes are lost or reordered after a crash', async () => {
  const s = new FaultStore('f', new Uint8Array(16), 3);
  await s.write(0, new Uint8Array([1]));
  await s.flush();
  await s.write(1, new Uint8Array([2]));
  await assert.rejects(s.write(2, new Uint8Array([3])), /injected crash/);
  await assert.rejects(s.flush(), /injected crash/);
  const durable = await s.crashImage('durable');
  assert.deepEqual([...durable.subarray(0, 3)], [1, 0, 0]);
  const all = await s.crashImage('all');
  assert.deepEqual([...all.subarray(0, 3)], [1, 2, 0]);
  const seen = new Set<number>();
  for (let seed = 1; seed < 20; seed++) seen.add((await s.crashImage('subset', seed))[1]);
  assert.deepEqual([...seen].sort(), [0, 2]);
});

test('memory store grows, zero-fills and reports short reads', async () => {
  const m = new MemoryStore('m');
  await m.write(10, new Uint8Array([9]));
  assert.equal(await m.size(), 11);
  const b = new Uint8Array(20);
  assert.equal(await m.read(0, b), 11);
  await assert.rejects(readExact(m, 0, new Uint8Array(20), 'header'), (e: unknown) => e instanceof BlockError && e.kind === 'corrupt' && /header is truncated/.test(e.message));
});

test('system errors map to stable kinds', () => {
  const e = fromSystemError(Object.assign(new Error('x'), { code: 'ENOENT' }), { path: '/nope' });
  assert.equal(e.kind, 'not-found');
  assert.equal(e.oneLine(), 'no such file (/nope)');
  assert.equal(fromSystemError(Object.assign(new Error('x'), { code: 'EISDIR' }), {}).kind, 'invalid-argument');
});

test('mutex runs critical sections one at a time', async () => {
  const m = new Mutex();
  const order: string[] = [];
  await Promise.all(
    [1, 2, 3].map((i) =>
      m.run(async () => {
        order.push(`in${i}`);
        await new Promise((r) => setTimeout(r, 5));
        order.push(`out${i}`);
      }),
    ),
  );
  assert.deepEqual(order, ['in1', 'out1', 'in2', 'out2', 'in3', 'out3']);
});

test('range lock: disjoint ranges run at once, overlapping ones one at a time in arrival order', async () => {
  const { RangeLock } = await import('../src/core/range-lock.js');
  const lock = new RangeLock();
  const order: string[] = [];
  const job = (name: string, start: number, end: number) =>
    lock.run(start, end, async () => {
      order.push(`in ${name}`);
      await new Promise((r) => setTimeout(r, 5));
      order.push(`out ${name}`);
    });
  // a and b are disjoint; c overlaps both; d overlaps c only (and must wait for it, though a and b are done first).
  await Promise.all([job('a', 0, 10), job('b', 10, 20), job('c', 5, 15), job('d', 14, 30)]);
  assert.deepEqual(order.slice(0, 2).sort(), ['in a', 'in b']);
  assert.ok(order.indexOf('in c') > Math.max(order.indexOf('out a'), order.indexOf('out b')));
  assert.ok(order.indexOf('in d') > order.indexOf('out c'));
  // A failing holder releases its range.
  await assert.rejects(lock.run(0, 5, async () => Promise.reject(new Error('boom'))), /boom/);
  assert.equal(await lock.run(0, 5, async () => 7), 7);
});

test('zero and sameness checkers agree with a byte-level reference on any range', async () => {
  const { zeroChecker, sameChecker } = await import('../src/ops/zero.js');
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 9000 }), fc.nat(), fc.nat(), fc.boolean(), (bytes, x, y, sparse) => {
      const b = sparse ? bytes.map((v, i) => (i % 97 === 0 ? v : 0)) : bytes;
      const from = x % b.length;
      const to = from + (y % (b.length - from + 1));
      const ref = b.subarray(from, to).every((v) => v === 0);
      assert.equal(zeroChecker(b)(from, to), ref);
      const c = b.slice();
      if (to > from) c[to - 1] ^= 1;
      assert.equal(sameChecker(b, c)(from, to), to === from);
      assert.equal(sameChecker(b, b.slice())(from, to), true);
    }),
  );
});

test('granuleRuns (with its gallop over same granules and skip over differing ones) equals a granule-by-granule reference', async () => {
  const { granuleRuns, zeroChecker } = await import('../src/ops/zero.js');
  // Buffers of zero and non-zero granules in random patterns, at random disk offsets.
  const pattern = fc.array(fc.record({ zero: fc.boolean(), n: fc.integer({ min: 1, max: 40 }) }), { minLength: 1, maxLength: 12 });
  fc.assert(
    fc.property(pattern, fc.integer({ min: 0, max: 7 }), fc.constantFrom(512, 4096), fc.integer(), (runs, shift, granule, seed) => {
      const unit = 512;
      // Non-zero units are full of data, or zero but for one byte: in their
      // 16-byte head or past it (where the head check cannot see it).
      let s = seed >>> 0;
      const next = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0);
      const dataUnits = (n: number) => {
        const u = new Uint8Array(n * unit);
        for (let i = 0; i < n; i++) {
          const kind = next() % 3;
          if (kind === 0) u.fill(7, i * unit, (i + 1) * unit);
          else u[i * unit + (kind === 1 ? next() % 16 : 16 + (next() % (unit - 16)))] = 1;
        }
        return u;
      };
      const parts = runs.map((r) => (r.zero ? new Uint8Array(r.n * unit) : dataUnits(r.n)));
      const buf = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
      let at = 0;
      for (const p of parts) (buf.set(p, at), (at += p.length));
      const diskOffset = shift * unit;
      const ref: { from: number; to: number; same: boolean }[] = [];
      for (let pos = 0; pos < buf.length; ) {
        const next = Math.min(buf.length, (Math.floor((diskOffset + pos) / granule) + 1) * granule - diskOffset);
        const same = buf.subarray(pos, next).every((v) => v === 0);
        const last = ref[ref.length - 1];
        if (last && last.same === same) last.to = next;
        else ref.push({ from: pos, to: next, same });
        pos = next;
      }
      assert.deepEqual([...granuleRuns(buf, diskOffset, granule, zeroChecker(buf))], ref);
    }),
  );
});

test('unitPieces splits a range at unit boundaries, covering it exactly', async () => {
  const { unitPieces } = await import('../src/core/align.js');
  assert.deepEqual([...unitPieces(1000, 5000, 2048)], [
    { index: 0, unitStart: 0, start: 1000, end: 2048 },
    { index: 1, unitStart: 2048, start: 2048, end: 4096 },
    { index: 2, unitStart: 4096, start: 4096, end: 6000 },
  ]);
  assert.deepEqual([...unitPieces(4096, 0, 2048)], []);
});

test('prefetch view answers every read as the store would (bytes and short reads at the end)', async () => {
  const { prefetch } = await import('../src/io/prefetch.js');
  const ranges = fc.array(fc.tuple(fc.nat(3000), fc.nat(1500)), { maxLength: 3 });
  const reads = fc.array(fc.tuple(fc.nat(3500), fc.nat(900)), { minLength: 1, maxLength: 12 });
  await fc.assert(
    fc.asyncProperty(fc.nat(3000), ranges, reads, async (size, held, asked) => {
      const bytes = new Uint8Array(size).map((_, i) => (i * 31 + 7) & 255);
      const store = new MemoryStore('m', bytes, true);
      const view = await prefetch(store, held);
      // Besides the random reads, every read that starts or ends at a held range's edge or one byte off it.
      const edges = held.flatMap(([o, l]) =>
        [o - 1, o, o + 1, o + l - 1, o + l, o + l + 1].flatMap((a) => [o + l + 1, o + l, o + l - 1, o + 1].filter((z) => a >= 0 && z > a).map((z) => [a, z - a] as [number, number])),
      );
      for (const [offset, length] of [...asked, ...edges]) {
        const want = new Uint8Array(length);
        const got = new Uint8Array(length).fill(0xee);
        const n = await store.read(offset, want);
        assert.equal(await view.read(offset, got), n);
        assert.deepEqual(got.subarray(0, n), want.subarray(0, n));
      }
    }),
  );
});

test('slots run at most N tasks at once, the rest in the order they asked', async () => {
  const { Slots } = await import('../src/core/mutex.js');
  const slots = new Slots(2);
  let running = 0;
  let peak = 0;
  const started: number[] = [];
  const gates: (() => void)[] = [];
  const tasks = [0, 1, 2, 3, 4].map((i) =>
    slots.run(async () => {
      started.push(i);
      peak = Math.max(peak, ++running);
      await new Promise<void>((r) => gates.push(r));
      running--;
      return i;
    }),
  );
  for (let k = 0; k < 5; k++) {
    await new Promise((r) => setImmediate(r));
    gates.shift()!();
  }
  assert.deepEqual(await Promise.all(tasks), [0, 1, 2, 3, 4]);
  assert.deepEqual(started, [0, 1, 2, 3, 4]);
  assert.equal(peak, 2);
});

test('file store: writev puts the parts back to back, like one write of their concatenation', async () => {
  const { FileStore } = await import('../src/io/file-store.js');
  const { writeParts } = await import('../src/io/store.js');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'vdisk-writev-'));
  try {
    const store = await FileStore.open(join(dir, 'f'), { create: true });
    const mem = new MemoryStore('m');
    const parts = [new Uint8Array(512).fill(1), new Uint8Array(0), new Uint8Array(3000).fill(2), new Uint8Array(7).fill(3)];
    for (const s of [store, mem]) {
      await writeParts(s, 1000, parts);
      await writeParts(s, 200, [new Uint8Array(10).fill(9)]);
    }
    assert.equal(await store.size(), 1000 + 512 + 3000 + 7);
    const a = new Uint8Array(5000);
    const b = new Uint8Array(5000);
    assert.equal(await store.read(0, a), await mem.read(0, b));
    assert.deepEqual(a, b);
    await store.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('isBlockError tells BlockErrors, and their kind, from other errors', () => {
  const e = new BlockError('corrupt', 'x');
  assert.ok(isBlockError(e) && isBlockError(e, 'corrupt'));
  assert.ok(!isBlockError(e, 'io'), 'another kind');
  assert.ok(!isBlockError(new Error('x')) && !isBlockError('corrupt') && !isBlockError(undefined));
});
