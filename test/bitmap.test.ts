import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { findBit, forEachRun, getBit, setBits, type BitOrder } from '../src/core/bitmap.js';

/** The per-bit model: item i is bit 7 - i%8 (msb-first) or bit i%8 (lsb-first) of byte i/8. */
const modelBit = (order: BitOrder, m: Uint8Array, i: number) => (m[Math.floor(i / 8)] & (order === 'msb-first' ? 0x80 >> i % 8 : 1 << i % 8)) !== 0;

/**
 * Bitmaps made of runs (so that whole words of one value, and runs longer
 * than the span from which the search compares 32-bit words, occur), at a
 * byte offset 0-3 inside their buffer (so that the word view is sometimes
 * misaligned and the byte path is taken).
 */
const bitmapArb = fc
  .record({
    runs: fc.array(fc.record({ length: fc.integer({ min: 1, max: 12000 }), set: fc.boolean() }), { minLength: 1, maxLength: 8 }),
    shift: fc.integer({ min: 0, max: 3 }),
    order: fc.constantFrom<BitOrder>('msb-first', 'lsb-first'),
  })
  .map(({ runs, shift, order }) => {
    const items = runs.reduce((n, r) => n + r.length, 0);
    const bits = new Uint8Array(shift + Math.ceil(items / 8)).subarray(shift);
    let at = 0;
    for (const r of runs) {
      for (let i = at; i < at + r.length; i++) if (r.set) bits[Math.floor(i / 8)] |= order === 'msb-first' ? 0x80 >> i % 8 : 1 << i % 8;
      at += r.length;
    }
    return { bits, items: bits.length * 8, order };
  });

test('core bitmap: runs, search and setting agree with a per-bit model, in both bit orders', () => {
  fc.assert(
    fc.property(bitmapArb, fc.nat(), fc.nat(), fc.boolean(), ({ bits, items, order }, a, b, value) => {
      const from = a % items;
      const to = from + (b % (items - from + 1));
      for (let i = from; i < Math.min(to, from + 64); i++) assert.equal(getBit(order, bits, i), modelBit(order, bits, i));
      const runs: Array<[number, number, boolean]> = [];
      forEachRun(order, bits, from, to, (s, e, set) => runs.push([s, e, set]));
      const expect: Array<[number, number, boolean]> = [];
      for (let i = from; i < to; i++) {
        const last = expect[expect.length - 1];
        if (last && last[2] === modelBit(order, bits, i)) last[1] = i + 1;
        else expect.push([i, i + 1, modelBit(order, bits, i)]);
      }
      assert.deepEqual(runs, expect);
      for (const set of [true, false]) {
        let first = to;
        for (let i = from; i < to; i++) {
          if (modelBit(order, bits, i) === set) {
            first = i;
            break;
          }
        }
        assert.equal(findBit(order, bits, from, to, set), first, `first ${set ? 'set' : 'clear'} bit`);
      }
      const copy = bits.slice();
      const changed = setBits(order, copy, from, to, value);
      for (let i = 0; i < items; i++) assert.equal(modelBit(order, copy, i), i >= from && i < to ? value : modelBit(order, bits, i));
      assert.equal(changed, findBit(order, bits, from, to, !value) !== to, 'changed exactly when some bit differed');
    }),
    { numRuns: 300 },
  );
});

test('core bitmap: the two orders name mirrored bits of a byte', () => {
  const b = new Uint8Array([0x05, 0x80]);
  assert.deepEqual([0, 1, 2, 8, 15].map((i) => getBit('lsb-first', b, i)), [true, false, true, false, true]);
  assert.deepEqual([5, 7, 8].map((i) => getBit('msb-first', b, i)), [true, true, true]);
  assert.equal(findBit('msb-first', b, 0, 16, true), 5);
  assert.equal(findBit('lsb-first', b, 1, 16, true), 2);
});
