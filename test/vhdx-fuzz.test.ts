import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { BlockError } from '../src/core/errors.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import { vhdxFormat } from '../src/formats/vhdx/index.js';
import { corpusFile } from './helpers/corpus.js';
import { dirtyDifferencingVhdx, resealVhdx } from './helpers/mutate.js';

const KiB = 1024;
const MiB = 1 << 20;

/** Where the interesting structures of a file are: header section, log, metadata, BAT (read from the file itself). */
function targets(file: Uint8Array): { offset: number; length: number }[] {
  const dv = new DataView(file.buffer, file.byteOffset);
  const out = [{ offset: 0, length: 320 * KiB }];
  const logOffset = Number(dv.getBigUint64(64 * KiB + 80, true));
  const logLength = dv.getUint32(64 * KiB + 76, true);
  if (logOffset + logLength <= file.length) out.push({ offset: logOffset, length: Math.min(logLength, 64 * KiB) });
  const count = dv.getUint32(192 * KiB + 8, true);
  for (let i = 0; i < Math.min(count, 4); i++) {
    const at = 192 * KiB + 16 + i * 32;
    const off = Number(dv.getBigUint64(at + 16, true));
    if (off + 64 * KiB <= file.length) out.push({ offset: off, length: 64 * KiB + 4 * KiB });
  }
  return out;
}

/** Re-seal the checksums of both headers and region tables, so mutations reach the structures behind them. */
async function exercise(bytes: Uint8Array, readOnly: boolean): Promise<void> {
  const fs = new MemoryFs();
  fs.files.set('/f/x.vhdx', new MemoryStore('/f/x.vhdx', bytes));
  const store = await fs.opener()('/f/x.vhdx', { readOnly });
  const img = await vhdxFormat.open({ store, path: '/f/x.vhdx', readOnly, openStore: fs.opener(), options: {} });
  try {
    const ext = await img.blockStatus(0, img.size);
    let reads = 0;
    for (const e of ext) {
      if (e.kind !== 'data' || reads++ > 8) continue;
      await img.read(e.offset, new Uint8Array(Math.min(e.length, MiB)));
    }
    await img.read(0, new Uint8Array(Math.min(img.size, 64 * KiB)));
    if (!readOnly && img.size >= 2 * MiB) await img.write(MiB, new Uint8Array(img.logicalSectorSize * 3).fill(7));
    await img.check?.({});
  } finally {
    await img.close();
  }
}

async function seeds(): Promise<{ name: string; bytes: Uint8Array }[]> {
  const out: { name: string; bytes: Uint8Array }[] = ['dissect/dynamic.vhdx', 'dissect/fixed.vhdx', 'discutils/vhdx-log-replay.vhdx', 'dissect/differencing.avhdx'].map((rel) => ({
    name: rel,
    bytes: new Uint8Array(readFileSync(corpusFile(rel))),
  }));
  // A differencing child of our own with partial blocks (sector bitmaps) and its log left dirty.
  out.push({ name: 'own differencing (dirty log)', bytes: (await dirtyDifferencingVhdx()).dirty });
  return out;
}

test('mutated corpus files: only BlockError escapes open, read, write and check', async () => {
  const files = await seeds();
  const mutation = fc.record({
    file: fc.nat({ max: files.length - 1 }),
    target: fc.nat(),
    edits: fc.array(
      fc.record({
        at: fc.nat(),
        width: fc.constantFrom(1, 2, 4, 8),
        value: fc.oneof(fc.constantFrom(0, 1, 0xff, 0xffffffff, 0x7fffffff, 0x100000, 4096, 2047, 2048), fc.nat({ max: 0xffffffff })),
      }),
      { minLength: 1, maxLength: 6 },
    ),
    resealed: fc.boolean(),
    readOnly: fc.boolean(),
  });
  let opened = 0;
  await fc.assert(
    fc.asyncProperty(mutation, async (m) => {
      const seed = files[m.file];
      const bytes = seed.bytes.slice();
      const ts = targets(bytes);
      const t = ts[m.target % ts.length];
      const dv = new DataView(bytes.buffer);
      for (const e of m.edits) {
        const at = t.offset + (e.at % Math.max(1, t.length - 8));
        if (e.width === 1) dv.setUint8(at, e.value & 0xff);
        else if (e.width === 2) dv.setUint16(at, e.value & 0xffff, true);
        else if (e.width === 4) dv.setUint32(at, e.value >>> 0, true);
        else dv.setBigUint64(at, BigInt(e.value) * BigInt(e.value & 0xffff), true);
      }
      if (m.resealed) resealVhdx(bytes);
      try {
        await exercise(bytes, m.readOnly);
        opened++;
      } catch (e) {
        if (!(e instanceof BlockError)) {
          throw new Error(`${seed.name}: non-BlockError escaped: ${(e as Error)?.stack ?? e}`);
        }
      }
    }),
    { numRuns: 250, seed: 20240601 },
  );
  assert.ok(opened > 20, `only ${opened} mutated files opened: the mutations never get past the first checks`);
});

test('truncated files: only BlockError', async () => {
  const bytes = new Uint8Array(readFileSync(corpusFile('dissect/dynamic.vhdx')));
  for (const len of [0, 8, 4096, 64 * KiB + 100, 200 * KiB, MiB, 2 * MiB, 3 * MiB + 5]) {
    await assert.rejects(exercise(bytes.slice(0, len), true), (e: unknown) => e instanceof BlockError, `length ${len}`);
  }
});
