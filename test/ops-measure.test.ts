import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { FORMATS } from '../src/formats/registry.js';
import { measureImage } from '../src/ops/measure.js';
import { convert } from '../src/ops/convert.js';
import { createImage } from '../src/ops/create.js';
import { vdisk } from './helpers/cli.js';
import { qemuImg, qemuIo, requireTool, tempDir } from './helpers/oracle.js';

const MiB = 1 << 20;

const CASES: Record<string, Record<string, string>[]> = {
  raw: [{}],
  vhd: [{}, { block_size: '512k', force_size: 'on' }, { subformat: 'fixed' }, { subformat: 'fixed', force_size: 'on' }],
  vhdx: [{}, { block_size: '1M' }, { subformat: 'fixed', block_size: '2M' }],
  'add-cow': [{}],
};

/** Bytes an output takes: the file, plus the sparse image file of an add-cow counted by what it allocates. */
function outputBytes(format: string, path: string): number {
  const own = statSync(path).size;
  if (format !== 'add-cow') return own;
  return own + statSync(`${path}.raw`).blocks * 512;
}

test('measure equals the size convert produces, sparse (-S 4k) and fully allocated (-S 0), for every registered format', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const { dir, cleanup } = tempDir();
  try {
    const src = join(dir, 'src.raw');
    qemuImg('create', '-f', 'raw', src, '8M');
    // Data in 4 KiB-aligned runs without zero granules: what convert writes is exactly what block status reports.
    qemuIo('raw', src, 'write -P 0x11 0 100k', `write -P 0x22 ${3 * MiB + 4096} 300k`, `write -P 0x33 ${7.5 * MiB} 512k`);
    let n = 0;
    for (const f of FORMATS) {
      for (const options of CASES[f.name] ?? [{}]) {
        const label = `${f.name} ${JSON.stringify(options)}`;
        const m = await measureImage({ format: f.name, options, source: src });
        const sparse = join(dir, `out-${n}.${f.name}`);
        await convert({ source: src, target: sparse, targetFormat: f.name, options });
        assert.equal(outputBytes(f.name, sparse), m.required, `${label}: required`);
        const empty = join(dir, `empty-${n}.${f.name}`);
        const created = await createImage({ path: empty, format: f.name, size: 8 * MiB, options });
        const full = join(dir, `full-${n}.${f.name}`);
        await convert({ source: src, target: full, targetFormat: f.name, options, sparseSize: 0 });
        // -S 0 writes the source's 8 MiB; a format that rounds the size up (VHD geometry) has blocks past it.
        if (created.size === 8 * MiB) assert.equal(outputBytes(f.name, full), m['fully-allocated'], `${label}: fully allocated`);
        else assert.ok(outputBytes(f.name, full) <= m['fully-allocated'], `${label}: fully allocated covers the rounded size`);
        const e = await measureImage({ format: f.name, options, size: 8 * MiB });
        assert.equal(outputBytes(f.name, empty), f.name === 'raw' ? 8 * MiB : e.required, `${label}: empty`);
        assert.equal(e['fully-allocated'], m['fully-allocated']);
        n++;
      }
    }
    t.diagnostic(`measured ${n} format/option cases: ${FORMATS.map((f) => f.name).join(', ')}`);
  } finally {
    cleanup();
  }
});

test('measure through the CLI: qemu-img words and JSON; bad requests are refused', (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  try {
    let r = vdisk('measure', '-O', 'raw', '--size', '1G');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'required size: 1073741824\nfully allocated size: 1073741824');
    // qemu-img agrees for raw.
    const q = JSON.parse(qemuImg('measure', '-O', 'raw', '--size', '1G', '--output=json'));
    r = vdisk('measure', '-O', 'raw', '--size', '1G', '--output=json');
    assert.deepEqual(JSON.parse(r.stdout), { required: q.required, 'fully-allocated': q['fully-allocated'] });
    const img = join(dir, 'a.raw');
    vdisk('create', '-f', 'raw', img, '1M');
    r = vdisk('measure', '-O', 'raw', '--size', '1M', img);
    assert.equal(r.status, 1);
    r = vdisk('measure', '-O', 'raw');
    assert.equal(r.status, 1);
    r = vdisk('measure', '-O', 'raw', '-o', 'bogus=1', img);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /has no option 'bogus'/);
    r = vdisk('measure', '-O', 'nosuch', img);
    assert.equal(r.status, 1);
    r = vdisk('measure', '-O', 'raw', '--size', '9E');
    assert.notEqual(r.status, 0);
  } finally {
    cleanup();
  }
});
