import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openSync, readSync, writeSync, closeSync, statSync, writeFileSync } from 'node:fs';
import { createImage } from '../src/ops/create.js';
import { openChain } from '../src/chain/open.js';
import { checkImage, checkExitCode } from '../src/ops/check.js';
import { qemuImg, requireTool, tempDir } from './helpers/oracle.js';
import { randomBytes, rng } from './helpers/random.js';

const MiB = 1 << 20;

async function write(path: string, ops: Array<[number, Uint8Array | number]>): Promise<void> {
  const c = await openChain(path);
  try {
    for (const [off, d] of ops) {
      if (typeof d === 'number') await c.trim(off, d);
      else await c.write(off, d);
    }
  } finally {
    await c.close();
  }
}

/** Make a VHD's block unallocated in its BAT, as a released block is (the file keeps its bytes). */
function releaseVhdBlock(path: string, block: number): void {
  const fd = openSync(path, 'r+');
  try {
    const footer = Buffer.alloc(512);
    readSync(fd, footer, 0, 512, 0);
    const header = Buffer.alloc(1024);
    readSync(fd, header, 0, 1024, Number(footer.readBigUInt64BE(16)));
    const table = Number(header.readBigUInt64BE(16));
    writeSync(fd, Buffer.from([0xff, 0xff, 0xff, 0xff]), 0, 4, table + block * 4);
  } finally {
    closeSync(fd);
  }
}

for (const format of ['vhd', 'vhdx'] as const) {
  test(`${format}: a released block's place is reused by the next new block (the file does not grow), its old bytes never show, check is clean`, async (t) => {
    if (!requireTool(t, 'qemu-img')) return;
    const d = tempDir();
    t.after(d.cleanup);
    const path = join(d.dir, `r.${format}`);
    await createImage({ path, format, size: 16 * MiB, options: format === 'vhdx' ? { block_size: '1M' } : { block_size: '1048576' } });
    const data = randomBytes(rng(5), 4 * MiB);
    await write(path, [[0, data]]);
    const expected = new Uint8Array(16 * MiB);
    expected.set(data);
    // Block 1 released: a VHDX discard, or (VHD, which has no discard that frees) the BAT entry cleared as compact does.
    if (format === 'vhdx') await write(path, [[MiB, MiB]]);
    else releaseVhdBlock(path, 1);
    expected.fill(0, MiB, 2 * MiB);
    const size = statSync(path).size;
    const report = await checkImage({ path });
    assert.equal(checkExitCode(report), 0, JSON.stringify(report[0].problems));
    assert.ok(report[0].problems.some((p) => p.severity === 'info' && /inside the file are free/.test(p.message)), 'the hole is reported as free space');
    // Two new blocks: the first goes into the hole, the second at the end.
    const small = randomBytes(rng(6), 4096);
    await write(path, [[9 * MiB + 8192, small], [12 * MiB, small]]);
    expected.set(small, 9 * MiB + 8192);
    expected.set(small, 12 * MiB);
    const blockSpan = format === 'vhdx' ? MiB : MiB + 512;
    assert.equal(statSync(path).size, size + blockSpan, 'one block reused the hole, one grew the file');
    const raw = join(d.dir, 'expected.raw');
    writeFileSync(raw, expected);
    qemuImg('compare', '-f', format === 'vhd' ? 'vpc' : 'vhdx', '-F', 'raw', path, raw);
    const after = await checkImage({ path });
    assert.equal(checkExitCode(after), 0);
    assert.ok(!after[0].problems.some((p) => /free/.test(p.message)), 'no hole left');
  });
}
