import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { createImage } from '../src/ops/create.js';
import { openChain } from '../src/chain/open.js';
import { tempDir, vdiskDigest } from './helpers/oracle.js';

test('VHD differencing discard clears sector bits: the parent shows through, also after reopen', async () => {
  const d = tempDir();
  try {
    const base = join(d.dir, 'b.vhd');
    const child = join(d.dir, 'c.vhd');
    await createImage({ path: base, format: 'vhd', size: 8 << 20 });
    let c = await openChain(base);
    await c.write(0, new Uint8Array(3 << 20).fill(1));
    await c.close();
    const before = await vdiskDigest(base);
    await createImage({ path: child, format: 'vhd', backing: { path: base } });
    c = await openChain(child);
    assert.equal(typeof c.top.trim, 'function');
    await c.write(4096, new Uint8Array(3 << 20).fill(2));
    await c.flush();
    // Discard a range that is not sector-aligned at either end: only whole sectors inside it are dropped.
    await c.trim(100, (2 << 20) + 1000);
    const b = new Uint8Array(4 << 20);
    await c.read(0, b);
    assert.equal(b[5000], 1);
    assert.equal(b[(2 << 20) + 511], 1);
    assert.equal(b[(2 << 20) + 1100], 2, 'the partial sector at the end of the range is kept');
    await c.trim(0, 8 << 20);
    await c.close();
    // After reopening everything reads from the parent again.
    assert.deepEqual(await vdiskDigest(child), before);
    const ro = await openChain(base, { readOnly: true });
    assert.equal(ro.top.trim, undefined, 'dynamic disks do not discard');
    await ro.close();
  } finally {
    d.cleanup();
  }
});
