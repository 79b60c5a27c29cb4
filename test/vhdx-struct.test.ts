import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { BlockError } from '../src/core/errors.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import { createImage } from '../src/ops/create.js';
import { openChain } from '../src/chain/open.js';
import { vhdxFormat } from '../src/formats/vhdx/index.js';
import { Header, chooseHeader, encodeHeader } from '../src/formats/vhdx/header.js';
import { RegionTableEntry, RegionTableHeader, encodeRegionTable } from '../src/formats/vhdx/region-table.js';
import { MetadataTableEntry, MetadataTableHeader } from '../src/formats/vhdx/metadata-table.js';
import { ParentLocatorHeader, decodeParentLocator, encodeParentLocator } from '../src/formats/vhdx/parent-locator.js';
import { decodeFileIdentifier } from '../src/formats/vhdx/file-identifier.js';
import { buildEntry, parseEntry } from '../src/formats/vhdx/log-entry.js';
import { findActiveSequence } from '../src/formats/vhdx/log-replay.js';
import { bitRuns, setBits } from '../src/formats/vhdx/sector-bitmap.js';
import { Bat, batGeometry } from '../src/formats/vhdx/bat.js';
import { checksumWithHole, GUIDS, guidText, sealChecksum } from '../src/formats/vhdx/layout.js';
import { corpusFile } from './helpers/corpus.js';

const KiB = 1024;
const MiB = 1 << 20;
const frag = (n: string) => new Uint8Array(readFileSync(corpusFile(`libvhdi-fragments/${n}`)));
const kind = (k: string) => (e: unknown) => e instanceof BlockError && e.kind === k;

test('libvhdi fragments decode: file identifier, header, region table, metadata table, parent locator', () => {
  // The expected values are the fragments' bytes read by hand per MS-VHDX (MANIFEST.md: single
  // structures from libvhdi's tests/data): header Version 1 (offset 66), region table EntryCount 2
  // (offset 8) naming the BAT and metadata regions, metadata table entry Offset 65536, parent locator
  // header KeyValueCount 5 (offset 18); creator "Microsoft Windows 10.0.19041.0".
  const id = new Uint8Array(64 * KiB);
  id.set(frag('file_identifier.1'));
  assert.match(decodeFileIdentifier(id).creator, /\S/);
  const h = frag('image_header.1');
  const hv = Header.decode(h);
  assert.equal(hv.checksum, checksumWithHole(h));
  assert.equal(hv.version, 1);
  const rt = frag('region_table.1');
  const rh = RegionTableHeader.decode(rt);
  assert.equal(rh.entryCount, 2);
  const ids = [0, 1].map((i) => guidText(RegionTableEntry.decode(rt, 16 + i * 32).guid)).sort();
  assert.deepEqual(ids, [GUIDS.batRegion, GUIDS.metadataRegion].sort());
  assert.equal(new TextDecoder().decode(MetadataTableHeader.decode(frag('metadata_table_header.1')).signature), 'metadata');
  assert.ok(MetadataTableEntry.decode(frag('metadata_table_entry.1')).offset >= 64 * KiB);
  const plh = ParentLocatorHeader.decode(frag('parent_locator_header.1'));
  assert.equal(guidText(plh.locatorType), GUIDS.vhdxParentLocatorType);
  assert.equal(plh.keyValueCount, 5);
});

function header(seq: bigint, extra: Partial<ReturnType<typeof Header.decode>> = {}): Uint8Array {
  return encodeHeader({
    signature: 0, checksum: 0, sequenceNumber: seq, fileWriteGuid: new Uint8Array(16).fill(1), dataWriteGuid: new Uint8Array(16).fill(2),
    logGuid: new Uint8Array(16), logVersion: 0, version: 1, logLength: MiB, logOffset: BigInt(MiB), ...extra,
  });
}

test('header choice: higher sequence wins, a bad copy falls back, equal sequences must be identical', () => {
  assert.equal(chooseHeader([header(5n), header(6n)], false).current.slot, 1);
  assert.equal(chooseHeader([header(7n), header(6n)], false).current.slot, 0);
  const bad = header(9n);
  bad[100] ^= 1;
  const c = chooseHeader([bad, header(3n)], false);
  assert.equal(c.current.slot, 1);
  assert.match(c.problems.join(), /checksum/);
  assert.equal(chooseHeader([header(4n), header(4n)], false).current.slot, 0);
  assert.throws(() => chooseHeader([header(4n), header(4n, { logLength: 2 * MiB })], false), kind('corrupt'));
  assert.throws(() => chooseHeader([bad, bad], false), kind('checksum'));
  assert.throws(() => chooseHeader([header(1n, { version: 2 }), header(1n, { version: 2 })], false), kind('unsupported'));
  assert.throws(() => chooseHeader([header(1n, { logOffset: 12345n }), new Uint8Array(4096)], false), kind('corrupt'));
  assert.equal(chooseHeader([bad, bad], true).checksumIgnored, true);
});

test('parent locator: round trip, malformed entries are corrupt', () => {
  const loc = new Map([['parent_linkage', '{abc}'], ['relative_path', '.\\p.vhdx']]);
  const raw = encodeParentLocator(loc);
  assert.deepEqual(decodeParentLocator(raw), loc);
  const bad = raw.slice();
  new DataView(bad.buffer).setUint32(20 + 4, 100000, true); // value offset past the item
  assert.throws(() => decodeParentLocator(bad), kind('corrupt'));
  const odd = raw.slice();
  new DataView(odd.buffer).setUint16(20 + 8, 3, true); // odd key length
  assert.throws(() => decodeParentLocator(odd), kind('corrupt'));
  const many = raw.slice();
  new DataView(many.buffer).setUint16(18, 60000, true);
  assert.throws(() => decodeParentLocator(many), kind('corrupt'));
  const dup = encodeParentLocator(new Map([['a', '1']]));
  assert.throws(() => decodeParentLocator(dup.subarray(0, 10)), kind('corrupt'));
});

test('log entries: round trip, wrap-around, torn or forged entries are not valid, sequence gaps end a sequence', () => {
  const guid = new Uint8Array(16).fill(9);
  const log = new Uint8Array(64 * KiB);
  const sector = (b: number) => {
    const s = new Uint8Array(4096);
    for (let i = 0; i < 4096; i++) s[i] = (i * 7 + b) & 0xff;
    return s;
  };
  const put = (pos: number, seq: bigint, tail: number, n: number) => {
    const e = buildEntry({ sequenceNumber: seq, logGuid: guid, position: pos, tail, flushedFileOffset: MiB, lastFileOffset: 2 * MiB, sectors: Array.from({ length: n }, (_, i) => ({ offset: MiB + i * 4096, data: sector(Number(seq) + i) })) });
    for (let i = 0; i < e.length; i += 4096) log.set(e.subarray(i, i + 4096), (pos + i) % log.length);
    return e.length;
  };
  const len1 = put(0, 10n, 0, 2);
  const p = parseEntry(log, 0, guid)!;
  assert.equal(p.writes.length, 2);
  assert.deepEqual((p.writes[1] as { data: Uint8Array }).data, sector(11));
  // A second entry that wraps around the end of the log, its tail pointing at the first.
  put(len1, 11n, 0, 1);
  assert.deepEqual(findActiveSequence(log, guid)!.map((e) => e.sequenceNumber), [10n, 11n]);
  const wrapPos = log.length - 4096;
  put(wrapPos, 12n, wrapPos, 1);
  assert.equal(parseEntry(log, wrapPos, guid)!.writes.length, 1);
  assert.deepEqual(findActiveSequence(log, guid)!.map((e) => e.sequenceNumber), [12n]);
  // Torn data sector: the sequence number halves no longer match.
  const torn = log.slice();
  torn[len1 + 4096 + 5] ^= 0xff;
  assert.equal(parseEntry(torn, len1, guid), null);
  // Wrong GUID, wrong checksum, huge descriptor count.
  assert.equal(parseEntry(log, 0, new Uint8Array(16)), null);
  const forged = log.slice();
  new DataView(forged.buffer).setUint32(24, 0xffffffff, true);
  assert.equal(parseEntry(forged, 0, guid), null);
  sealChecksum(forged.subarray(0, len1));
  assert.equal(parseEntry(forged, 0, guid), null);
  // A gap: an entry with sequence 14 after 12 starts no sequence with it, and a tail outside the run is not valid.
  const gap = new Uint8Array(64 * KiB);
  log.fill(0);
  const l = put(0, 12n, 0, 1);
  put(l, 14n, 0, 1);
  gap.set(log);
  assert.deepEqual(findActiveSequence(gap, guid)!.map((e) => e.sequenceNumber), [12n]);
});

test('bit runs and bit setting match a naive per-bit model', () => {
  const bits = new Uint8Array(64);
  setBits(bits, 3, 10, true);
  setBits(bits, 40, 100, true);
  setBits(bits, 60, 5, false);
  const naive = (i: number) => ((bits[i >> 3] >> (i & 7)) & 1) === 1;
  for (const [start, count] of [[0, 512], [1, 300], [37, 100], [60, 5]]) {
    const runs: [number, number, boolean][] = [];
    bitRuns(bits, start, count, (f, n, s) => runs.push([f, n, s]));
    let pos = start;
    for (const [f, n, s] of runs) {
      assert.equal(f, pos);
      for (let i = f; i < f + n; i++) assert.equal(naive(i), s);
      pos += n;
    }
    assert.equal(pos, start + count);
  }
});

test('BAT geometry follows the specification formulas', () => {
  const g = batGeometry(64 * 1024 * 1024 * MiB, 32 * MiB, 512, false);
  assert.equal(g.chunkRatio, 128);
  assert.equal(g.dataBlocks, 2 * 1024 * 1024);
  assert.equal(g.entryCount, g.dataBlocks + Math.floor((g.dataBlocks - 1) / 128));
  const d = batGeometry(10 * MiB, MiB, 4096, true);
  assert.equal(d.chunkRatio, 32768);
  assert.equal(d.entryCount, 32769);
  const bat = new Bat(batGeometry(4 * MiB, MiB, 512, false), new Uint8Array(4096));
  Bat.encode(new DataView(bat.bytes.buffer), 8, 6, 5 * 1024 * MiB);
  assert.equal(bat.state(1), 6);
  assert.equal(bat.offset(1), 5 * 1024 * MiB);
});

// ---- whole files with one defect -------------------------------------------------

async function fresh(options: Record<string, string> = {}, differencing = false): Promise<{ fs: MemoryFs; bytes: Uint8Array }> {
  const fs = new MemoryFs();
  const openStore = fs.opener();
  await createImage({ path: '/d/p.vhdx', format: 'vhdx', size: 8 * MiB, options: { block_size: '1M', ...options }, openStore });
  if (differencing) {
    await createImage({ path: '/d/x.vhdx', format: 'vhdx', backing: { path: '/d/p.vhdx' }, options: { block_size: '1M' }, openStore });
    const c = await openChain('/d/x.vhdx', { openStore });
    await c.write(512, new Uint8Array(512).fill(1));
    await c.close();
  } else {
    const c = await openChain('/d/p.vhdx', { openStore });
    await c.write(0, new Uint8Array(MiB).fill(1));
    await c.close();
    fs.files.set('/d/x.vhdx', new MemoryStore('/d/x.vhdx', fs.files.get('/d/p.vhdx')!.bytes()));
  }
  return { fs, bytes: fs.files.get('/d/x.vhdx')!.bytes() };
}

async function openBytes(fs: MemoryFs, bytes: Uint8Array, readOnly = true) {
  fs.files.set('/d/x.vhdx', new MemoryStore('/d/x.vhdx', bytes));
  const store = await fs.opener()('/d/x.vhdx', { readOnly });
  return vhdxFormat.open({ store, path: '/d/x.vhdx', readOnly, openStore: fs.opener(), options: {} });
}

/** Layout of a vdisk-created file with a 1 MiB log: metadata at 2 MiB, BAT at 3 MiB. */
const MD = 2 * MiB;
const BAT = 3 * MiB;

function patchRegionTables(bytes: Uint8Array, regions: Parameters<typeof encodeRegionTable>[0]): void {
  const t = encodeRegionTable(regions);
  bytes.set(t, 192 * KiB);
  bytes.set(t, 256 * KiB);
}

function itemOffset(bytes: Uint8Array, id: string): number {
  for (let i = 0; i < 10; i++) {
    const e = MetadataTableEntry.decode(bytes, MD + 32 + i * 32);
    if (guidText(e.itemId) === id) return MD + e.offset;
  }
  throw new Error('no item');
}

test('bad input: each defect is a BlockError of the right kind', async () => {
  const { fs, bytes } = await fresh();
  const cases: [string, (b: Uint8Array) => void, string][] = [
    ['block size not a power of two', (b) => new DataView(b.buffer).setUint32(itemOffset(b, GUIDS.fileParameters), 3 * MiB, true), 'corrupt'],
    ['block size zero', (b) => new DataView(b.buffer).setUint32(itemOffset(b, GUIDS.fileParameters), 0, true), 'corrupt'],
    ['logical sector size 1024', (b) => new DataView(b.buffer).setUint32(itemOffset(b, GUIDS.logicalSectorSize), 1024, true), 'corrupt'],
    ['virtual size above 64 TiB', (b) => new DataView(b.buffer).setBigUint64(itemOffset(b, GUIDS.virtualDiskSize), 2n ** 47n, true), 'unsupported'],
    ['BAT entry into the header section', (b) => new DataView(b.buffer).setUint32(BAT, 6 | (0 << 20), true), 'corrupt'],
    ['BAT entry past the end', (b) => new DataView(b.buffer).setUint32(BAT + 4, 0x10000, true), 'corrupt'],
    ['BAT entry with an invalid state', (b) => new DataView(b.buffer).setUint32(BAT + 8, 5, true), 'corrupt'],
    ['PARTIALLY_PRESENT without a parent', (b) => (b[BAT] = (b[BAT] & ~7) | 7), 'corrupt'],
    ['metadata item past the region', (b) => new DataView(b.buffer).setUint32(MD + 32 + 16, MiB - 4, true), 'corrupt'],
    ['metadata entry count above 2047', (b) => new DataView(b.buffer).setUint16(MD + 10, 3000, true), 'corrupt'],
    ['unknown required metadata item', (b) => (b[MD + 32] ^= 0xff), 'unsupported'],
    ['missing required metadata item', (b) => new DataView(b.buffer).setUint16(MD + 10, 2, true), 'corrupt'],
    ['unknown required region', (b) => patchRegionTables(b, [
      { guid: GUIDS.batRegion, offset: BAT, length: MiB, required: true },
      { guid: GUIDS.metadataRegion, offset: MD, length: MiB, required: true },
      { guid: '01234567-89ab-cdef-0123-456789abcdef', offset: 5 * MiB, length: MiB, required: true },
    ]), 'unsupported'],
    ['overlapping regions', (b) => patchRegionTables(b, [
      { guid: GUIDS.batRegion, offset: BAT, length: MiB, required: true },
      { guid: GUIDS.metadataRegion, offset: BAT, length: MiB, required: true },
    ]), 'corrupt'],
    ['region overlapping the log', (b) => patchRegionTables(b, [
      { guid: GUIDS.batRegion, offset: MiB, length: MiB, required: true },
      { guid: GUIDS.metadataRegion, offset: MD, length: MiB, required: true },
    ]), 'corrupt'],
    ['region inside the header section', (b) => patchRegionTables(b, [
      { guid: GUIDS.batRegion, offset: 0, length: MiB, required: true },
      { guid: GUIDS.metadataRegion, offset: MD, length: MiB, required: true },
    ]), 'corrupt'],
    ['region past the end', (b) => patchRegionTables(b, [
      { guid: GUIDS.batRegion, offset: 1024 * MiB, length: MiB, required: true },
      { guid: GUIDS.metadataRegion, offset: MD, length: MiB, required: true },
    ]), 'corrupt'],
    ['both region tables with bad checksums', (b) => { b[192 * KiB + 100] ^= 1; b[256 * KiB + 100] ^= 1; }, 'checksum'],
    ['region entry count above 2047', (b) => { for (const o of [192 * KiB, 256 * KiB]) { new DataView(b.buffer).setUint32(o + 8, 5000, true); sealChecksum(b.subarray(o, o + 64 * KiB)); } }, 'corrupt'],
    ['no file identifier', (b) => b.fill(0, 0, 8), 'corrupt'],
  ];
  for (const [name, patch, want] of cases) {
    const b = bytes.slice();
    patch(b);
    await assert.rejects(openBytes(fs, b), (e: unknown) => {
      assert.ok(e instanceof BlockError, `${name}: ${e}`);
      assert.equal(e.kind, want, `${name}: ${e.message}`);
      return true;
    });
  }
  // The unpatched file opens.
  await (await openBytes(fs, bytes.slice())).close();
});

test('bad input: a PARTIALLY_PRESENT block whose sector bitmap block is missing', async () => {
  const { fs, bytes } = await fresh({}, true);
  const img = await openBytes(fs, bytes.slice());
  assert.deepEqual((await img.blockStatus(0, 2048)).map((e) => e.kind), ['unallocated', 'data', 'unallocated']);
  await img.close();
  // 1 MiB blocks, 512-byte sectors: chunk ratio 4096, the chunk's bitmap entry is BAT index 4096.
  const b = bytes.slice();
  new DataView(b.buffer).setUint32(BAT + 4096 * 8, 0, true);
  await assert.rejects(openBytes(fs, b), kind('corrupt'));
});

test('ZERO blocks of a differencing disk read as zeros and report zero (never the parent)', async () => {
  const { fs, bytes } = await fresh({}, true);
  const p = await openChain('/d/p.vhdx', { openStore: fs.opener() });
  await p.write(MiB, new Uint8Array(MiB).fill(9));
  await p.close();
  // Relink: the parent's DataWriteGuid changed with that write.
  const b = bytes.slice();
  new DataView(b.buffer).setUint32(BAT + 8, 2, true); // block 1: PAYLOAD_BLOCK_ZERO
  fs.files.set('/d/x.vhdx', new MemoryStore('/d/x.vhdx', b));
  const c = await openChain('/d/x.vhdx', { openStore: fs.opener(), readOnly: true, ignoreParentId: true });
  const got = new Uint8Array(2 * MiB);
  await c.read(MiB, got.subarray(0, MiB));
  assert.ok(got.subarray(0, MiB).every((x) => x === 0));
  assert.deepEqual((await c.top.blockStatus(MiB, MiB)).map((e) => e.kind), ['zero']);
  // Reads inside the block, sector-aligned or not: each is one zero extent of the top layer, which
  // the chain answers without going to the parent (Chain.readFrom's single-extent path).
  for (const [offset, length] of [[MiB + 8192, 4096], [MiB + 1000, 3000], [2 * MiB - 512, 512]]) {
    const part = new Uint8Array(length).fill(0xee);
    await c.read(offset, part);
    assert.ok(part.every((x) => x === 0), `read ${offset}+${length} of the ZERO block is not all zeros`);
  }
  await c.close();
});

test('write guids: FileWriteGuid changes on the first write after open, DataWriteGuid on the first guest-visible write', async () => {
  const { fs } = await fresh();
  const open = async (readOnly: boolean) => {
    const store = await fs.opener()('/d/p.vhdx', { readOnly });
    return vhdxFormat.open({ store, path: '/d/p.vhdx', readOnly, openStore: fs.opener(), options: {} });
  };
  const info = async () => {
    const i = await open(true);
    const s = i.info().specific;
    await i.close();
    return s;
  };
  const before = await info();
  const w = await open(false);
  await w.close(); // no write: nothing changes
  assert.equal((await info())['data-write-guid'], before['data-write-guid']);
  assert.equal((await info())['file-write-guid'], before['file-write-guid']);
  const w2 = await open(false);
  await w2.write(4096, new Uint8Array(4096).fill(3));
  await w2.write(8192, new Uint8Array(4096).fill(3));
  await w2.close();
  const after = await info();
  assert.notEqual(after['data-write-guid'], before['data-write-guid']);
  assert.notEqual(after['file-write-guid'], before['file-write-guid']);
  assert.equal(after['log-guid'], '00000000-0000-0000-0000-000000000000');
  // Header sequence: each header update writes both copies once.
  assert.ok((after['sequence-number'] as number) > (before['sequence-number'] as number));
});
