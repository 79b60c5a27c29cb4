import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openChain } from '../src/chain/open.js';
import type { Extent } from '../src/core/extent.js';
import { createImage } from '../src/ops/create.js';
import { tempDir } from './helpers/oracle.js';
import { randomBytes, rng } from './helpers/random.js';

// Image.mapCached is a synchronous shortcut for blockStatus that the chain
// takes on every read; readHost reads a data extent by the host offset the
// map gave. If either disagreed with the slow path, reads through a chain
// would silently return wrong bytes. Both are checked here against
// blockStatus and read on differencing layers with scattered, unaligned
// writes (sector bitmaps with mixed bits), cold and warm, and chain reads
// against a flat model of everything written.

const MiB = 1 << 20;

const CASES: { name: string; format: string; options: Record<string, string> }[] = [
  { name: 'VHD differencing', format: 'vhd', options: {} },
  { name: 'VHDX differencing, 512-byte sectors, 1 MiB blocks', format: 'vhdx', options: { block_size: '1M' } },
  { name: 'VHDX differencing, 4096-byte sectors, 1 MiB blocks', format: 'vhdx', options: { block_size: '1M', logical_sector_size: '4096' } },
  { name: 'add-cow', format: 'add-cow', options: {} },
];

for (const c of CASES) {
  test(`mapCached and readHost agree with blockStatus and read: ${c.name}`, async () => {
    const t = tempDir();
    try {
      const size = 16 * MiB;
      const base = join(t.dir, `base.${c.format}`);
      const top = join(t.dir, `top.${c.format}`);
      const baseOptions = c.format === 'add-cow' ? { subformat: 'dynamic' } : { ...c.options };
      const baseFormat = c.format === 'add-cow' ? 'vhd' : c.format;
      await createImage({ path: base, format: baseFormat, size, options: baseFormat === 'vhd' ? { subformat: 'dynamic', force_size: 'on' } : baseOptions });
      // The base holds data everywhere, so a child sector misreported as
      // present (or absent) reads wrong bytes, not coincidental zeros.
      const r = rng(c.name.length * 7919);
      const model = randomBytes(r, size);
      {
        const b = await openChain(base);
        await b.write(0, model);
        await b.close();
      }
      const childOptions = c.format === 'add-cow' ? { image_file: join(t.dir, 'top.raw') } : c.options;
      await createImage({ path: top, format: c.format, size, options: childOptions, backing: { path: base, format: baseFormat } });
      {
        const chain = await openChain(top);
        for (let i = 0; i < 40; i++) {
          const len = 1 + Math.floor(r() * 20000);
          const off = Math.floor(r() * (size - len));
          const data = randomBytes(r, len);
          await chain.write(off, data);
          model.set(data, off);
        }
        await chain.close();
      }
      const chain = await openChain(top, { readOnly: true });
      try {
        const layer = chain.layers[0];
        assert.ok(layer.mapCached, `${c.format} offers mapCached`);
        assert.ok(layer.readHost, `${c.format} offers readHost`);
        let answered = 0;
        for (let i = 0; i < 300; i++) {
          const len = 1 + Math.floor(r() * (i % 3 === 0 ? 3 * MiB : 9000));
          const off = Math.floor(r() * (size - len));
          const cold: Extent[] | undefined = layer.mapCached(off, len);
          const slow = await layer.blockStatus(off, len);
          if (cold) assert.deepEqual(cold, slow, `cold map of ${len} bytes at ${off}`);
          // blockStatus loaded what it needed: now the shortcut must answer, the same.
          const warm: Extent[] | undefined = layer.mapCached(off, len);
          assert.ok(warm, `warm map of ${len} bytes at ${off} answered`);
          assert.deepEqual(warm, slow, `warm map of ${len} bytes at ${off}`);
          if (cold) answered++;
          for (const e of slow) {
            if (e.kind !== 'data' || e.hostOffset === undefined) continue;
            const viaHost = new Uint8Array(e.length);
            const viaRead = new Uint8Array(e.length);
            await layer.readHost(e.hostOffset, viaHost);
            await layer.read(e.offset, viaRead);
            assert.deepEqual(viaHost, viaRead, `data extent of ${e.length} bytes at ${e.offset}`);
          }
        }
        // And the chain, which takes these shortcuts, reads what was written.
        for (let i = 0; i < 200; i++) {
          const len = 1 + Math.floor(r() * (i % 4 === 0 ? 2 * MiB : 9000));
          const off = Math.floor(r() * (size - len));
          const got = new Uint8Array(len);
          await chain.read(off, got);
          assert.ok(Buffer.from(got).equals(model.subarray(off, off + len)), `chain read of ${len} bytes at ${off}`);
        }
        // The cache did its job: most lookups after the first few needed no read.
        assert.ok(answered > 150, `mapCached answered ${answered} of 300 cold lookups`);
      } finally {
        await chain.close();
      }
    } finally {
      t.cleanup();
    }
  });
}
