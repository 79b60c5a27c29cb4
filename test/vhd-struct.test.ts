import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { BlockError, isBlockError } from '../src/core/errors.js';
import { Footer, chsBytes, chsForSectors, decodeFooter, encodeFooter, roundSizeToChs, vhdChecksum } from '../src/formats/vhd/footer.js';
import { DynamicHeader, decodeDynamicHeader, encodeDynamicHeader } from '../src/formats/vhd/dynamic-header.js';
import { PlatformCode, decodeLocatorData, decodeLocatorEntries, macxToPath } from '../src/formats/vhd/parent-locator.js';
import { BitmapCache, findBit, forEachRun, setBits, bitmapBytes } from '../src/formats/vhd/sector-bitmap.js';
import { batmapChecksum } from '../src/formats/vhd/batmap.js';
import { plannedSize } from '../src/formats/vhd/create.js';
import { corpusFile } from './helpers/corpus.js';

const at0 = { offset: 0 };

// Expected values of the libvhdi fragments (MANIFEST.md: a VHD footer and dynamic header of a
// differencing disk, from libvhdi's tests/data), read by hand per the VHD spec: footer disk type 4
// (differencing), data offset 512; dynamic header block size 2 MiB, parent unicode name "dynamic.vhd".
test('libvhdi fragment: a differencing disk footer decodes, checksum verified, and re-encodes byte for byte', () => {
  const buf = readFileSync(corpusFile('libvhdi-fragments/file_footer.1'));
  const { footer, checksumOk } = decodeFooter(buf, at0);
  assert.ok(checksumOk);
  assert.equal(footer.diskType, 'differencing');
  assert.equal(footer.dataOffset, 512);
  assert.deepEqual(encodeFooter(footer), new Uint8Array(buf));
});

test('libvhdi fragment: a dynamic header decodes (parent name UTF-16BE, locators), and re-encodes byte for byte', () => {
  const buf = readFileSync(corpusFile('libvhdi-fragments/dynamic_disk_header.1'));
  const { header, checksumOk } = decodeDynamicHeader(buf, at0);
  assert.ok(checksumOk);
  assert.equal(header.blockSize, 2 << 20);
  assert.equal(header.parentUnicodeName, 'dynamic.vhd');
  assert.deepEqual(encodeDynamicHeader(header), new Uint8Array(buf));
  // The locators point outside this 1 KiB fragment: bounds checks refuse them against its size...
  assert.throws(() => decodeLocatorEntries(header.parentLocators, 1024), (e: unknown) => isBlockError(e, 'corrupt'));
  // ...and accept them against a file large enough.
  const locs = decodeLocatorEntries(header.parentLocators, 1 << 30);
  assert.ok(locs.some((l) => l.platform === 'W2ku') && locs.some((l) => l.platform === 'W2ru'));
});

test('footer: single-field corruptions give the right error kind', () => {
  const good = readFileSync(corpusFile('libvhdi-fragments/file_footer.1'));
  const mutate = (f: (b: Uint8Array, dv: DataView) => void, fix = true) => {
    const b = new Uint8Array(good);
    const dv = new DataView(b.buffer);
    f(b, dv);
    if (fix) dv.setUint32(Footer.offsets.checksum, vhdChecksum(b, Footer.offsets.checksum));
    return b;
  };
  assert.throws(() => decodeFooter(mutate((b) => (b[0] = 0x41)), at0), (e: unknown) => isBlockError(e, 'corrupt'));
  assert.equal(decodeFooter(mutate((b) => (b[100] ^= 1), false), at0).checksumOk, false);
  assert.throws(() => decodeFooter(mutate((_, dv) => dv.setUint32(Footer.offsets.diskType, 9)), at0), (e: unknown) => isBlockError(e, 'corrupt'));
  assert.throws(() => decodeFooter(mutate((_, dv) => dv.setUint32(Footer.offsets.diskType, 5)), at0), (e: unknown) => isBlockError(e, 'unsupported'));
  assert.throws(() => decodeFooter(mutate((_, dv) => dv.setUint32(Footer.offsets.fileFormatVersion, 0x20000)), at0), (e: unknown) => isBlockError(e, 'unsupported'));
  assert.throws(() => decodeFooter(mutate((_, dv) => dv.setBigUint64(Footer.offsets.currentSize, 2n ** 63n)), at0), (e: unknown) => isBlockError(e, 'corrupt'));
  assert.throws(() => decodeFooter(mutate((_, dv) => dv.setBigUint64(Footer.offsets.currentSize, 1000n)), at0), (e: unknown) => isBlockError(e, 'corrupt'));
  assert.throws(() => decodeFooter(good.subarray(0, 300), at0), (e: unknown) => isBlockError(e, 'corrupt'));
});

test('dynamic header: cookie, version, block size (not a power of two, too small, absurd)', () => {
  const good = readFileSync(corpusFile('libvhdi-fragments/dynamic_disk_header.1'));
  const bad = (f: (dv: DataView, b: Uint8Array) => void, kind: BlockError['kind']) => {
    const b = new Uint8Array(good);
    f(new DataView(b.buffer), b);
    assert.throws(() => decodeDynamicHeader(b, at0), (e: unknown) => isBlockError(e, kind));
  };
  bad((_, b) => (b[3] = 0), 'corrupt');
  bad((dv) => dv.setUint32(DynamicHeader.offsets.headerVersion, 0x30000), 'unsupported');
  for (const bs of [3 << 20, 256, 0, 2 ** 31]) bad((dv) => dv.setUint32(DynamicHeader.offsets.blockSize, bs), 'corrupt');
  bad((dv) => dv.setBigUint64(DynamicHeader.offsets.tableOffset, 2n ** 60n), 'corrupt');
});

test('parent locator data: W2ku/W2ru UTF-16LE, MacX file URL, deprecated ASCII', () => {
  const le = (s: string) => new Uint8Array(Buffer.from(s, 'utf16le'));
  assert.equal(decodeLocatorData(PlatformCode.W2ru, le('.\\win8.vhd')), '.\\win8.vhd');
  assert.equal(decodeLocatorData(PlatformCode.W2ku, le('C:\\a\\b.vhd')), 'C:\\a\\b.vhd');
  assert.equal(decodeLocatorData(PlatformCode.MacX, new TextEncoder().encode('file://localhost/Users/x/My%20Disk.vhd')), '/Users/x/My Disk.vhd');
  assert.equal(macxToPath('file:///tmp/p.vhd'), '/tmp/p.vhd');
  assert.equal(decodeLocatorData(PlatformCode.Wi2r, new TextEncoder().encode('..\\p.vhd\0junk')), '..\\p.vhd');
  assert.equal(decodeLocatorData(PlatformCode.Mac, new Uint8Array(8)), undefined);
});

test('CHS geometry follows the spec appendix; sizes round up to a whole geometry unless force_size', () => {
  // Geometries recorded by Windows, VirtualBox and Hyper-V in the corpus.
  assert.deepEqual(chsForSectors(41943040 / 512), { cylinders: 963, heads: 5, sectorsPerTrack: 17 });
  assert.deepEqual(chsForSectors(1073741824 / 512), { cylinders: 2080, heads: 16, sectorsPerTrack: 63 });
  assert.deepEqual(chsForSectors(136365211648 / 512), { cylinders: 65278, heads: 16, sectorsPerTrack: 255 });
  assert.deepEqual(chsForSectors(10485760 / 512), { cylinders: 301, heads: 4, sectorsPerTrack: 17 });
  // Rounding up: 10 MiB -> 10514432 (what qemu-img gives too; interop test checks it), always >= request and a CHS product.
  assert.equal(roundSizeToChs(10 << 20).size, 10514432);
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 2 ** 28 }), (sectors) => {
      const { size, chs } = roundSizeToChs(sectors * 512);
      assert.ok(size >= sectors * 512);
      if (sectors < 65535 * 16 * 255) assert.equal(size, chsBytes(chs));
    }),
    { numRuns: 300 },
  );
  // At the geometry's maximum (about 127 GiB) the size is kept exactly.
  assert.equal(roundSizeToChs(200 * 2 ** 30).size, 200 * 2 ** 30);
  assert.equal(plannedSize(10 << 20, true).size, 10 << 20);
});

test('sector bitmaps: runs, bit search and setting agree with a per-bit model', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 40 }), fc.nat(), fc.nat(), (bytes, a, b) => {
      const bits = bytes.length * 8;
      const from = a % bits;
      const to = from + (b % (bits - from + 1));
      const bit = (m: Uint8Array, i: number) => (m[i >> 3] & (0x80 >> (i & 7))) !== 0;
      const runs: Array<[number, number, boolean]> = [];
      forEachRun(bytes, from, to, (s, e, set) => runs.push([s, e, set]));
      const expect: Array<[number, number, boolean]> = [];
      for (let i = from; i < to; i++) {
        const last = expect[expect.length - 1];
        if (last && last[2] === bit(bytes, i)) last[1] = i + 1;
        else expect.push([i, i + 1, bit(bytes, i)]);
      }
      assert.deepEqual(runs, expect);
      let firstSet = to;
      for (let i = from; i < to; i++) if (bit(bytes, i)) { firstSet = i; break; }
      assert.equal(findBit(bytes, from, to, true), firstSet);
      const copy = bytes.slice();
      const changed = setBits(copy, from, to);
      for (let i = 0; i < bits; i++) assert.equal(bit(copy, i), (i >= from && i < to) || bit(bytes, i));
      assert.equal(changed, findBit(bytes, from, to, false) !== to, 'changed exactly when some bit was clear');
    }),
    { numRuns: 500 },
  );
  assert.equal(bitmapBytes(2 << 20), 512);
  assert.equal(bitmapBytes(512), 512);
  assert.equal(bitmapBytes(256 << 20), 65536);
});

test('bitmap cache: least recently used clean entries go; dirty ones stay until written', () => {
  const c = new BitmapCache(2);
  c.put(1, new Uint8Array(1), true);
  c.put(2, new Uint8Array(1));
  c.put(3, new Uint8Array(1));
  c.put(4, new Uint8Array(1));
  assert.ok(c.get(1), 'dirty entry pinned');
  assert.equal(c.get(2), undefined);
  assert.deepEqual(c.dirty().map(([b]) => b), [1]);
  c.markClean(1);
  assert.equal(c.dirtyCount(), 0);
});

test('batmap checksum: one complement of the byte sum (an empty map gives 0xffffffff, as in xapi.vhd)', () => {
  assert.equal(batmapChecksum(new Uint8Array(512)), 0xffffffff);
  assert.equal(batmapChecksum(new Uint8Array([1, 2, 3])), ~6 >>> 0);
});
