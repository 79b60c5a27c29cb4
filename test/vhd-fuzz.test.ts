import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { openChain } from '../src/chain/open.js';
import { BlockError } from '../src/core/errors.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import { createImage } from '../src/ops/create.js';
import { DynamicHeader } from '../src/formats/vhd/dynamic-header.js';
import { ParentLocatorEntry } from '../src/formats/vhd/parent-locator.js';
import { corpusFile } from './helpers/corpus.js';
import { resealVhd } from './helpers/mutate.js';

const MiB = 1 << 20;

/** A folder in memory with a dynamic parent and a differencing child (W2ku + W2ru), both written. */
async function pair(): Promise<MemoryFs> {
  const fs = new MemoryFs();
  const o = fs.opener();
  await createImage({ path: '/d/parent.vhd', format: 'vhd', size: 4 * MiB, options: { force_size: 'on' }, openStore: o });
  let c = await openChain('/d/parent.vhd', { openStore: o });
  await c.write(0, new Uint8Array(3 * MiB).fill(1));
  await c.close();
  await createImage({ path: '/d/child.vhd', format: 'vhd', backing: { path: 'parent.vhd', format: 'vhd' }, openStore: o });
  c = await openChain('/d/child.vhd', { openStore: o });
  await c.write(MiB - 512, new Uint8Array(4096).fill(2));
  await c.close();
  return fs;
}

const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Recompute the footer checksums (both copies) and the header's, so a mutation reaches the checks behind them. */
async function openAndRead(fs: MemoryFs, path: string, options: Parameters<typeof openChain>[1] = {}): Promise<void> {
  const c = await openChain(path, { openStore: fs.opener(), readOnly: true, ...options });
  try {
    const buf = new Uint8Array(Math.min(c.size, 8 * MiB));
    await c.read(0, buf);
    if (c.size > buf.length) await c.read(c.size - buf.length, buf);
  } finally {
    await c.close();
  }
}

function edit(fs: MemoryFs, path: string, f: (b: Uint8Array) => Uint8Array | void, fix = true): void {
  let b = fs.files.get(path)!.bytes();
  b = f(b) ?? b;
  if (fix) resealVhd(b);
  fs.files.set(path, new MemoryStore(path, b));
}

const CASES: Array<{ name: string; kind: BlockError['kind']; mutate: (fs: MemoryFs) => void | Promise<void>; options?: Parameters<typeof openChain>[1] }> = [
  { name: 'empty file', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', () => new Uint8Array(0)) },
  { name: 'truncated file (end footer and last block gone)', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => b.slice(0, b.length - 700), false) },
  { name: 'truncated to the header area', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => b.slice(0, 1000), false) },
  { name: 'footer-only file (dynamic)', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => b.slice(b.length - 512), false) },
  { name: 'wrong footer cookies (both copies)', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => { b[0] = 0; b[b.length - 512] = 0; }) },
  { name: 'bad footer checksums (both copies)', kind: 'checksum', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => { b[70] ^= 1; b[b.length - 512 + 70] ^= 1; }, false) },
  { name: 'bad dynamic header checksum', kind: 'checksum', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => { b[512 + 900] ^= 1; }, false) },
  { name: 'wrong dynamic header cookie', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => { b[512] = 0x41; }) },
  { name: 'BAT offset past the end of the file', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => dv(b).setBigUint64(512 + DynamicHeader.offsets.tableOffset, BigInt(b.length + 4096))) },
  { name: 'BAT entry past the end of the file', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => dv(b).setUint32(1536, 0x7fffffff)) },
  { name: 'BAT entry pointing at the dynamic header', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => dv(b).setUint32(1536, 1)) },
  { name: 'block size not a power of two', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => dv(b).setUint32(512 + DynamicHeader.offsets.blockSize, 3 * MiB)) },
  { name: 'absurd block size', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => dv(b).setUint32(512 + DynamicHeader.offsets.blockSize, 2 ** 31)) },
  { name: 'max table entries too small for the size', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => dv(b).setUint32(512 + DynamicHeader.offsets.maxTableEntries, 1)) },
  { name: 'max table entries huge (BAT past the end)', kind: 'corrupt', mutate: (fs) => edit(fs, '/d/parent.vhd', (b) => dv(b).setUint32(512 + DynamicHeader.offsets.maxTableEntries, 0xfffffff0)) },
  {
    name: 'locator offset past the end',
    kind: 'corrupt',
    mutate: (fs) => edit(fs, '/d/child.vhd', (b) => dv(b).setBigUint64(512 + DynamicHeader.offsets.parentLocators + ParentLocatorEntry.offsets.dataOffset, BigInt(b.length))),
  },
  {
    name: 'locator length past the end',
    kind: 'corrupt',
    mutate: (fs) => edit(fs, '/d/child.vhd', (b) => dv(b).setUint32(512 + DynamicHeader.offsets.parentLocators + ParentLocatorEntry.offsets.dataLength, 60000)),
  },
  {
    name: 'parent UUID mismatch',
    kind: 'mismatch',
    mutate: (fs) => edit(fs, '/d/child.vhd', (b) => { b[512 + DynamicHeader.offsets.parentUniqueId] ^= 0xff; }),
  },
  {
    name: 'parent of a different size',
    kind: 'mismatch',
    mutate: async (fs) => {
      fs.files.delete('/d/parent.vhd');
      await createImage({ path: '/d/parent.vhd', format: 'vhd', size: 8 * MiB, options: { force_size: 'on' }, openStore: fs.opener() });
    },
    options: { ignoreParentId: true },
  },
  {
    name: 'parent chain loop (the child names itself)',
    kind: 'loop',
    mutate: (fs) => {
      // Both locators and the unicode name point back at the child; ignore the UUID so only the loop check can stop it.
      fs.files.set('/d/parent.vhd', new MemoryStore('/d/parent.vhd', fs.files.get('/d/child.vhd')!.bytes()));
    },
    options: { ignoreParentId: true },
  },
  { name: 'missing parent', kind: 'not-found', mutate: (fs) => void fs.files.delete('/d/parent.vhd') },
];

for (const c of CASES) {
  test(`bad input: ${c.name} -> ${c.kind}`, async () => {
    const fs = await pair();
    await c.mutate(fs);
    await assert.rejects(openAndRead(fs, '/d/child.vhd', c.options), (e: unknown) => {
      assert.ok(e instanceof BlockError, `not a BlockError: ${e}`);
      assert.equal(e.kind, c.kind, e.message);
      return true;
    });
  });
}

test('bad input: a damaged end footer with a good copy at 0 opens (read-only, said in info)', async () => {
  const fs = await pair();
  edit(fs, '/d/parent.vhd', (b) => { b[b.length - 512] = 0; }, false);
  const c = await openChain('/d/parent.vhd', { openStore: fs.opener(), readOnly: true });
  assert.match((c.top.info().specific.warnings as string[]).join(' '), /footer at the end of the file is damaged/);
  const buf = new Uint8Array(3 * MiB);
  await c.read(0, buf);
  assert.ok(buf.every((x) => x === 1));
  await c.close();
});

test('fuzz: mutated corpus and vdisk-made footers, headers, BATs and locators only ever raise BlockError', async () => {
  const sources: Array<[string, Uint8Array]> = [];
  for (const f of ['go-vhd/win8-child.vhd', 'go-vhd/xapi.vhd', 'dfvfs/fat-differential.vhd', 'vhd-forensic/minimal.vhd', 'imhex/vhd.hexpat.vhd']) {
    sources.push([f, new Uint8Array(readFileSync(corpusFile(f)))]);
  }
  const made = await pair();
  sources.push(['child', made.files.get('/d/child.vhd')!.bytes()]);
  let opened = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.nat({ max: sources.length - 1 }),
      fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 }), fc.boolean()), { minLength: 1, maxLength: 6 }),
      fc.boolean(),
      async (which, edits, fix) => {
        const [, original] = sources[which];
        const b = original.slice();
        for (const [pos, value, atEnd] of edits) {
          // Mutate the metadata: the first 16 KiB (footer copy, header, BAT, locators) or the end footer.
          const span = Math.min(b.length, atEnd ? 512 : 16384);
          const at = atEnd ? b.length - span + (pos % span) : pos % span;
          b[at] = value;
        }
        if (fix) resealVhd(b);
        const fs = new MemoryFs();
        fs.files.set('/f/x.vhd', new MemoryStore('/f/x.vhd', b));
        fs.files.set('/f/win8.vhd', new MemoryStore('/f/win8.vhd', b)); // a parent candidate that is itself mutated
        try {
          await openAndRead(fs, '/f/x.vhd', { ignoreParentId: true });
          opened++;
        } catch (e) {
          if (!(e instanceof BlockError)) throw e;
        }
        try {
          await openAndRead(fs, '/f/x.vhd', { layerOnly: true, ignoreChecksums: true });
        } catch (e) {
          if (!(e instanceof BlockError)) throw e;
        }
      },
    ),
    { numRuns: 400, seed: 20240601 },
  );
  assert.ok(opened > 0, 'some mutations leave an image that still opens');
});
