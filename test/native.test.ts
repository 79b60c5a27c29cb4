import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { FileStore } from '../src/io/file-store.js';
import { granuleRuns, isZero, zeroChecker } from '../src/ops/zero.js';
import { requireNativeAddon, tempDir } from './helpers/oracle.js';


/** Bytes the JavaScript path writes for a piece: its runs of non-zero granules (ops/zero.ts). */
function jsWritten(data: Uint8Array, diskOffset: number, granule: number): number {
  let n = 0;
  for (const run of granuleRuns(data, diskOffset, granule, zeroChecker(data))) if (!run.same) n += run.to - run.from;
  return n;
}

/** A source file of granule-sized patches, each all zero, all random, or zero but for one byte somewhere. */
function patchwork(kinds: number[], patch: number, seed: number): Uint8Array {
  const out = new Uint8Array(kinds.length * patch);
  let s = seed >>> 0;
  const next = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 16) & 0xff;
  kinds.forEach((k, i) => {
    const at = i * patch;
    if (k === 1) for (let j = 0; j < patch; j++) out[at + j] = next() | 1;
    else if (k === 2) out[at + ((next() * 97) % patch)] = 1 + (next() % 255);
  });
  return out;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  if (Buffer.from(a.buffer, a.byteOffset, a.length).equals(b)) return -1;
  return a.findIndex((x, i) => x !== b[i]);
}

test('native addon: loaded in CI', (t) => {
  requireNativeAddon(t);
});

test('native copyRanges: same bytes and same written count as the JavaScript path, any ranges and granules', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 1, maxLength: 48 }),
        fc.constantFrom(512, 1024, 4096),
        fc.constantFrom(512, 4096, 65536),
        fc.array(fc.record({ from: fc.nat(), to: fc.nat(), len: fc.nat() }), { minLength: 1, maxLength: 8 }),
        fc.integer({ min: 1, max: 4 }),
        fc.nat(),
        async (kinds, patch, granule, wanted, workers, seed) => {
          const src = patchwork(kinds, patch, seed);
          const srcPath = join(dir, 'src');
          const dstPath = join(dir, 'dst');
          writeFileSync(srcPath, src);
          const size = 1 << 20;
          writeFileSync(dstPath, new Uint8Array(0));
          // Disjoint target ranges, in any order; sources may overlap and run past the file's end.
          const plan: number[] = [];
          const expect = new Uint8Array(size);
          let expectWritten = 0;
          let expectProgress = 0;
          let cursor = 0;
          const srcFd = openSync(srcPath, 'r');
          const dstFd = openSync(dstPath, 'r+');
          try {
            for (const w of wanted) {
              const len = 1 + (w.len % (src.length + 700));
              const to = cursor + (w.to % 5000);
              if (to + len > size) break;
              cursor = to + len;
              const from = w.from % (src.length + 100);
              const bytes = new Uint8Array(len);
              bytes.set(src.subarray(from, Math.min(src.length, from + len)));
              expect.set(bytes, to);
              expectWritten += jsWritten(bytes, to, granule);
              expectProgress += len;
              plan.push(srcFd, from, to, len);
            }
            const progress = new BigUint64Array(1);
            const written = await addon.copyRanges(dstFd, new Float64Array(plan), granule, workers, progress);
            assert.equal(written, expectWritten);
            assert.equal(Number(progress[0]), expectProgress);
          } finally {
            closeSync(srcFd);
            closeSync(dstFd);
          }
          const got = readFileSync(dstPath);
          assert.ok(got.length <= size);
          const cmp = new Uint8Array(size);
          cmp.set(got);
          // (Not deepEqual: its diff of two 1 MiB arrays takes minutes.)
          assert.equal(firstDifference(cmp, expect), -1, 'first differing byte');
        },
      ),
      { numRuns: 150 },
    );
  } finally {
    cleanup();
  }
});

test('native copyRanges: ranges from several files in one call; zero granules leave holes', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  try {
    const MiB = 1 << 20;
    const a = new Uint8Array(4 * MiB).fill(0xaa);
    const b = new Uint8Array(4 * MiB); // zeros but for its last granule
    b.fill(0xbb, 4 * MiB - 4096);
    writeFileSync(join(dir, 'a'), a);
    writeFileSync(join(dir, 'b'), b);
    const fa = openSync(join(dir, 'a'), 'r');
    const fb = openSync(join(dir, 'b'), 'r');
    const fd = openSync(join(dir, 'out'), 'w+');
    try {
      const plan = new Float64Array([fa, 0, 0, 2 * MiB, fb, 0, 2 * MiB, 4 * MiB, fa, 2 * MiB, 6 * MiB, 2 * MiB]);
      const written = await addon.copyRanges(fd, plan, 4096, 2);
      assert.equal(written, 4 * MiB + 4096);
    } finally {
      [fa, fb, fd].forEach((f) => closeSync(f));
    }
    const out = readFileSync(join(dir, 'out'));
    assert.equal(out.length, 8 * MiB);
    assert.ok(out.subarray(0, 2 * MiB).every((x) => x === 0xaa));
    assert.ok(out.subarray(2 * MiB, 6 * MiB - 4096).every((x) => x === 0));
    assert.ok(out.subarray(6 * MiB - 4096, 6 * MiB).every((x) => x === 0xbb));
    assert.ok(out.subarray(6 * MiB).every((x) => x === 0xaa));
    // The zero stretch was never written: the file holds ~4 MiB of data, not 8.
    assert.ok(statSync(join(dir, 'out')).blocks * 512 <= 5 * MiB, `allocated ${statSync(join(dir, 'out')).blocks * 512}`);
  } finally {
    cleanup();
  }
});

test('native copyRanges: host errors reject with errno code, call and file; bad arguments throw', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  try {
    writeFileSync(join(dir, 'src'), new Uint8Array(8192).fill(7));
    const src = openSync(join(dir, 'src'), 'r');
    const readOnlyTarget = openSync(join(dir, 'src'), 'r');
    const writeOnly = openSync(join(dir, 'wo'), 'w');
    try {
      await assert.rejects(addon.copyRanges(readOnlyTarget, new Float64Array([src, 0, 0, 8192]), 4096, 2), (e: NodeJS.ErrnoException & { fd: number; offset: number }) => {
        assert.equal(e.code, 'EBADF');
        assert.equal(e.syscall, 'write');
        assert.equal(e.fd, readOnlyTarget);
        assert.equal(e.offset, 0);
        return true;
      });
      await assert.rejects(addon.copyRanges(writeOnly, new Float64Array([writeOnly, 4096, 0, 100]), 4096, 1), (e: NodeJS.ErrnoException & { fd: number; offset: number }) => {
        assert.equal(e.code, 'EBADF');
        assert.equal(e.syscall, 'read');
        assert.equal(e.fd, writeOnly);
        assert.equal(e.offset, 4096);
        return true;
      });
      // An empty plan resolves to nothing written.
      assert.equal(await addon.copyRanges(writeOnly, new Float64Array(0), 4096, 2), 0);
      const bad: unknown[][] = [
        [writeOnly, [src, 0, 0], 4096, 1], // not whole ranges
        [writeOnly, [src, -1, 0, 1], 4096, 1], // negative offset
        [writeOnly, [src, 0.5, 0, 1], 4096, 1], // not an integer
        [writeOnly, [src, 0, 0, 65 << 20], 4096, 1], // range too large
        [writeOnly, [2 ** 40, 0, 0, 1], 4096, 1], // not a descriptor
        [writeOnly, [src, 0, 0, 1], 0, 1], // granule 0
        [writeOnly, [src, 0, 0, 1], 4096, 0], // no workers
        [writeOnly, [src, 0, 0, 1], 4096, 9], // too many
        [-1, [src, 0, 0, 1], 4096, 1],
      ];
      for (const [target, plan, granule, workers] of bad) {
        assert.throws(() => addon.copyRanges(target as number, new Float64Array(plan as number[]), granule as number, workers as number), TypeError, JSON.stringify(plan));
      }
      assert.throws(() => addon.copyRanges(writeOnly, [src, 0, 0, 1] as unknown as Float64Array, 4096, 1), TypeError);
      assert.throws(() => addon.copyRanges(writeOnly, new Float64Array([src, 0, 0, 1]), 4096, 1, new Float64Array(1) as unknown as BigUint64Array), TypeError);
    } finally {
      [src, readOnlyTarget, writeOnly].forEach((f) => closeSync(f));
    }
  } finally {
    cleanup();
  }
});

test('native readNoWait: reads what the page cache holds; 0 at the end of the file; errors as -errno; bad arguments throw', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  try {
    const data = new Uint8Array(100_000).map((_, i) => (i * 7 + 3) & 0xff);
    writeFileSync(join(dir, 'f'), data);
    readFileSync(join(dir, 'f')); // in the page cache now
    const fd = openSync(join(dir, 'f'), 'r');
    const wo = openSync(join(dir, 'wo'), 'w');
    try {
      const into = new Uint8Array(5000);
      assert.equal(addon.readNoWait(fd, into, 1234), 5000);
      assert.deepEqual(into, data.subarray(1234, 6234));
      assert.equal(addon.readNoWait(fd, into, 98_000), 2000, 'short at the end of the file');
      assert.deepEqual(into.subarray(0, 2000), data.subarray(98_000));
      assert.equal(addon.readNoWait(fd, into, 100_000), 0);
      assert.equal(addon.readNoWait(fd, into, 2 ** 40), 0);
      const words = new Uint32Array(4);
      assert.equal(addon.readNoWait(fd, words as unknown as Uint8Array, 0), 16, 'a typed array of any kind reads its whole byte length');
      assert.ok(addon.readNoWait(wo, into, 0) < 0, 'a write-only descriptor: -EBADF');
      for (const args of [[-1, into, 0], [fd, [1, 2], 0], [fd, into, -1], [fd, into, 0.5], [fd, into]] as unknown[][]) {
        assert.throws(() => (addon.readNoWait as (...a: unknown[]) => number)(...args), TypeError);
      }
    } finally {
      closeSync(fd);
      closeSync(wo);
    }
  } finally {
    cleanup();
  }
});

test('file store reads: from memory when the page cache has it, else (or for the rest) through the pool; same bytes either way', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  const real = addon.readNoWait;
  try {
    const size = 300_000;
    const data = new Uint8Array(size).map((_, i) => (i * 13 + 5) & 0xff);
    writeFileSync(join(dir, 'f'), data);
    // What the host answers, by turn: everything, nothing (EAGAIN), part (then the pool), or "cannot" (ENOSYS).
    const EAGAIN = 11;
    const ENOSYS = 38;
    let mode: 'real' | 'again' | 'part' | 'nosys' = 'real';
    let calls = 0;
    addon.readNoWait = (fd, into, pos) => {
      calls++;
      if (mode === 'again') return -EAGAIN;
      if (mode === 'nosys') return -ENOSYS;
      if (mode === 'part') return real.call(addon, fd, into.subarray(0, Math.ceil(into.length / 3)), pos);
      return real.call(addon, fd, into, pos);
    };
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('real', 'again', 'part'), fc.integer({ min: 0, max: size + 5000 }), fc.integer({ min: 1, max: 100_000 }), async (m, at, len) => {
        mode = m as typeof mode;
        const store = await FileStore.open(join(dir, 'f'), { readOnly: true });
        try {
          const into = new Uint8Array(len).fill(0xee);
          const before = calls;
          const n = await store.read(at, into);
          const want = data.subarray(Math.min(at, size), Math.min(size, at + len));
          assert.equal(n, want.length);
          assert.equal(firstDifference(into.subarray(0, n), want), -1);
          assert.equal(calls - before, len <= 64 * 1024 ? 1 : 0, 'tried first only for reads up to 64 KiB');
        } finally {
          await store.close();
        }
      }),
      { numRuns: 200 },
    );
    // A host without RWF_NOWAIT: asked once per store, then never again.
    mode = 'nosys';
    const store = await FileStore.open(join(dir, 'f'), { readOnly: true });
    try {
      const into = new Uint8Array(4096);
      const before = calls;
      for (let i = 0; i < 5; i++) {
        assert.equal(await store.read(i * 4096, into), 4096);
        assert.equal(firstDifference(into, data.subarray(i * 4096, (i + 1) * 4096)), -1);
      }
      assert.equal(calls - before, 1);
    } finally {
      await store.close();
    }
  } finally {
    addon.readNoWait = real;
    cleanup();
  }
});

test('native copyToBlocks: same places, bytes and written count as a model of the JavaScript path, any plans and granules', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 1, maxLength: 48 }),
        fc.constantFrom(512, 4096),
        fc.constantFrom(512, 4096, 65536),
        fc.constantFrom(8192, 65536),
        // Per unit: whether it has a place already (and then whether zero granules are written too), and its ranges.
        fc.array(
          fc.record({ placed: fc.boolean(), writeAll: fc.boolean(), ranges: fc.array(fc.record({ from: fc.nat(), len: fc.nat() }), { minLength: 1, maxLength: 3 }) }),
          { minLength: 1, maxLength: 10 },
        ),
        fc.integer({ min: 1, max: 4 }),
        fc.nat(),
        async (kinds, patch, granule, blockSize, unitsWanted, workers, seed) => {
          const src = patchwork(kinds, patch, seed);
          const srcPath = join(dir, 'src');
          const dstPath = join(dir, 'dst');
          writeFileSync(srcPath, src);
          writeFileSync(dstPath, new Uint8Array(0));
          // Units are blocks 0, 2, 4...; placed ones live at the file's start, new slots after them.
          const stride = blockSize + 512;
          const base = unitsWanted.length * blockSize + 512;
          const plan: number[] = [];
          const units: number[] = [];
          const model = { slot: 0, written: 0, progress: 0 };
          const expect = new Uint8Array(base + unitsWanted.length * stride);
          const placedWant: number[] = [];
          const srcFd = openSync(srcPath, 'r');
          const dstFd = openSync(dstPath, 'r+');
          try {
            unitsWanted.forEach((u, k) => {
              const blockStart = 2 * k * blockSize;
              let host = u.placed ? k * blockSize : -1;
              const writeAll = u.placed && u.writeAll;
              units.push(host, writeAll ? 1 : 0);
              let cursor = 0;
              for (const r of u.ranges) {
                const len = 1 + (r.len % Math.max(1, Math.min(src.length + 700, blockSize - cursor)));
                if (cursor + len > blockSize) break;
                const from = r.from % (src.length + 100);
                const bytes = new Uint8Array(len);
                bytes.set(src.subarray(from, Math.min(src.length, from + len)));
                const disk = blockStart + cursor;
                plan.push(srcFd, from, disk, k, cursor, len);
                model.progress += len;
                const runs = writeAll ? [{ from: 0, to: len, same: false }] : [...granuleRuns(bytes, disk, granule, zeroChecker(bytes))];
                const data = runs.filter((x) => !x.same);
                if (data.length && host < 0) host = base + model.slot++ * stride;
                for (const x of data) {
                  expect.set(bytes.subarray(x.from, x.to), host + cursor + x.from);
                  model.written += x.to - x.from;
                }
                cursor += len + (r.from % 3) * 512;
              }
              placedWant.push(host);
            });
            const placed = new Float64Array(unitsWanted.length).fill(-2);
            const progress = new BigUint64Array(1);
            const written = await addon.copyToBlocks(dstFd, new Float64Array(plan), new Float64Array(units), base, stride, granule, workers, placed, progress);
            assert.equal(written, model.written);
            assert.equal(Number(progress[0]), model.progress);
            assert.deepEqual([...placed], placedWant, 'places: slots taken in plan order by units holding data');
          } finally {
            closeSync(srcFd);
            closeSync(dstFd);
          }
          const got = readFileSync(dstPath);
          assert.ok(got.length <= expect.length);
          const cmp = new Uint8Array(expect.length);
          cmp.set(got);
          assert.equal(firstDifference(cmp, expect), -1, 'first differing byte');
        },
      ),
      { numRuns: 150 },
    );
  } finally {
    cleanup();
  }
});

test('native copyToBlocks: slots in plan order whichever range finishes first; a failed read stops the copy (no thread waits forever for its slot); bad arguments throw', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  try {
    writeFileSync(join(dir, 'src'), new Uint8Array(1 << 20).fill(7));
    const src = openSync(join(dir, 'src'), 'r');
    const wo = openSync(join(dir, 'wo'), 'w');
    const dst = openSync(join(dir, 'dst'), 'w+');
    try {
      // Range 0 reads from a write-only descriptor and fails; ranges after it hold data and wait for their slots.
      const plan = [wo, 0, 0, 0, 0, 4096];
      for (let k = 1; k < 40; k++) plan.push(src, 0, k * 65536, k, 0, 65536);
      const units = new Float64Array(80).fill(0);
      for (let k = 0; k < 40; k++) units[2 * k] = -1;
      await assert.rejects(addon.copyToBlocks(dst, new Float64Array(plan), units, 0, 65536, 4096, 4, new Float64Array(40)), (e: NodeJS.ErrnoException & { fd: number }) => {
        assert.equal(e.code, 'EBADF');
        assert.equal(e.syscall, 'read');
        assert.equal(e.fd, wo);
        return true;
      });
      // A long first range (32 MiB to read and scan) and short ones after it: threads finish the short ones
      // first, yet slots still go in plan order (the file is laid out in disk order, as by the JavaScript path).
      writeFileSync(join(dir, 'big'), new Uint8Array(32 << 20).fill(9));
      const big = openSync(join(dir, 'big'), 'r');
      try {
        const order = [big, 0, 0, 0, 0, 32 << 20];
        for (let k = 1; k < 16; k++) order.push(src, 0, k * (32 << 20), k, 0, 4096);
        const u = new Float64Array(32);
        for (let k = 0; k < 16; k++) u[2 * k] = -1;
        const placed = new Float64Array(16);
        const dst2 = openSync(join(dir, 'dst2'), 'w+');
        try {
          assert.equal(await addon.copyToBlocks(dst2, new Float64Array(order), u, 0, 32 << 20, 4096, 4, placed), (32 << 20) + 15 * 4096);
        } finally {
          closeSync(dst2);
        }
        assert.deepEqual([...placed], Array.from({ length: 16 }, (_, k) => k * (32 << 20)));
      } finally {
        closeSync(big);
      }
      const ok = [src, 0, 0, 0, 0, 512];
      const bad: unknown[][] = [
        [dst, [src, 0, 0, 0, 0], [-1, 0], 0, 512, 512, 1, new Float64Array(1)], // not whole ranges
        [dst, ok, [-1, 0], 0, 512, 512, 1, new Float64Array(0)], // no room for the places
        [dst, [src, 0, 0, 1, 0, 512], [-1, 0], 0, 512, 512, 1, new Float64Array(1)], // unit out of range
        [dst, ok, [-2, 0], 0, 512, 512, 1, new Float64Array(1)], // a place of -2
        [dst, ok, [-1, 2], 0, 512, 512, 1, new Float64Array(1)], // unknown flags
        [dst, ok, [-1], 0, 512, 512, 1, new Float64Array(1)], // not whole units
        [dst, ok, [-1, 0], 0, 0, 512, 1, new Float64Array(1)], // stride 0
        [dst, ok, [-1, 0], -1, 512, 512, 1, new Float64Array(1)], // negative base
        [dst, ok, [-1, 0], 0, 512, 512, 9, new Float64Array(1)], // too many workers
      ];
      for (const [target, p, u, base, stride, granule, workers, placed] of bad) {
        assert.throws(
          () => addon.copyToBlocks(target as number, new Float64Array(p as number[]), new Float64Array(u as number[]), base as number, stride as number, granule as number, workers as number, placed as Float64Array),
          TypeError,
          JSON.stringify([p, u, base, stride, workers]),
        );
      }
    } finally {
      [src, wo, dst].forEach((f) => closeSync(f));
    }
  } finally {
    cleanup();
  }
});

test('native zeroScan: the same verdict as reading each range whole (past the end of the file: zeros), any ranges, pieces and workers', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  assert.ok(addon.zeroScan, 'this addon has zeroScan');
  const { dir, cleanup } = tempDir();
  try {
    await fc.assert(
      fc.asyncProperty(
        // Patches of 4 KiB - 1 MiB + 4 KiB straddle the scan's first page and its 1 MiB pieces.
        fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 1, maxLength: 12 }),
        fc.constantFrom(512, 4096, 4097, (1 << 20) + 4096),
        fc.array(fc.record({ from: fc.nat(), len: fc.nat() }), { minLength: 1, maxLength: 10 }),
        fc.integer({ min: 1, max: 4 }),
        fc.nat(),
        async (kinds, patch, wanted, workers, seed) => {
          const src = patchwork(kinds, patch, seed);
          const path = join(dir, 'src');
          writeFileSync(path, src);
          const fd = openSync(path, 'r');
          try {
            // Ranges anywhere in the file and up to a patch past its end.
            const ranges = wanted.map(({ from, len }) => ({ from: from % (src.length + patch), len: 1 + (len % (3 * patch)) }));
            const plan = new Float64Array(ranges.flatMap((r) => [fd, r.from, r.len]));
            const out = new Uint8Array(ranges.length).fill(7);
            const zeros = await addon.zeroScan!(plan, workers, out);
            const expected = ranges.map((r) => {
              const bytes = new Uint8Array(r.len);
              bytes.set(src.subarray(Math.min(r.from, src.length), Math.min(r.from + r.len, src.length)));
              return isZero(bytes) ? 1 : 0;
            });
            assert.deepEqual([...out], expected);
            assert.equal(zeros, expected.filter((z) => z === 1).length);
          } finally {
            closeSync(fd);
          }
        },
      ),
      { numRuns: 60 },
    );
    // The byte that decides may be the last one of a range far past the first page and piece.
    const big = new Uint8Array(3 << 20);
    big[big.length - 1] = 1;
    const path = join(dir, 'last');
    writeFileSync(path, big);
    const fd = openSync(path, 'r');
    try {
      const out = new Uint8Array(2);
      assert.equal(await addon.zeroScan!(new Float64Array([fd, 0, big.length, fd, 0, big.length - 1]), 2, out), 1);
      assert.deepEqual([...out], [0, 1]);
      // Bad arguments throw; a read error rejects with its errno code.
      assert.throws(() => addon.zeroScan!(new Float64Array([fd, 0, 65 << 20]), 1, out), /64 MiB/);
      assert.throws(() => addon.zeroScan!(new Float64Array([fd, 0, 1, fd, 0, 1, fd, 0, 1]), 1, out), /one byte per range/);
      assert.throws(() => addon.zeroScan!(new Float64Array([fd, 0, 1]), 0, out), /workers/);
      await assert.rejects(addon.zeroScan!(new Float64Array([999_999, 0, 4096]), 1, out), (e: NodeJS.ErrnoException) => e.code === 'EBADF');
    } finally {
      closeSync(fd);
    }
  } finally {
    cleanup();
  }
});
