import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkImage } from '../src/ops/check.js';
import { createImage } from '../src/ops/create.js';
import { measureImage } from '../src/ops/measure.js';
import { vdisk } from './helpers/cli.js';
import { requireTool, run, tempDir, qemuImg } from './helpers/oracle.js';

/*
 * Issue 19, items 3 and 4 on local files: `-o azure=on` makes what Azure
 * takes, and `check --azure` names everything Azure would refuse.
 */

const MiB = 1 << 20;

async function azureProblems(path: string): Promise<string[]> {
  const [r] = await checkImage({ path, azure: true });
  return r.problems.map((p) => p.message);
}

test('create -o azure=on: fixed, rounded up to a whole MiB with a note, 20 MiB to 32 TiB; qemu-img and check --azure agree', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const tmp = tempDir();
  try {
    const p = join(tmp.dir, 'a.vhd');
    const r = vdisk('create', '-f', 'vhd', '-o', 'azure=on', p, '30000128');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /size rounded up from 30000128 to 30408704 bytes/);
    assert.equal(statSync(p).size, 29 * MiB + 512);
    assert.equal(Number(JSON.parse(qemuImg('info', '--output=json', '-f', 'vpc', p))['virtual-size']), 29 * MiB);
    const info = JSON.parse(vdisk('info', '--output=json', p).stdout);
    assert.equal(info['format-specific'].data['disk-type'], 'fixed');
    assert.deepEqual(await azureProblems(p), []);
    const c = vdisk('check', '--azure', p);
    assert.equal(c.status, 0, c.stdout + c.stderr);
    assert.match(c.stdout, /Azure would take this image/);
    // A whole MiB: no note.
    const q = vdisk('create', '-f', 'vhd', '-o', 'azure=on', join(tmp.dir, 'b.vhd'), '32M');
    assert.equal(q.status, 0, q.stderr);
    assert.doesNotMatch(q.stdout, /rounded up/);

    const lib = await createImage({ path: join(tmp.dir, 'c.vhd'), format: 'vhd', size: 21 * MiB + 512, options: { azure: 'on' } });
    assert.equal(lib.size, 22 * MiB);
    assert.match(lib.note ?? '', /from 22020608 to 23068672/);

    for (const [size, re] of [
      ['19M', /at least 20 MiB/],
      ['33T', /larger than the vhd format allows|at most 32 TiB/],
    ] as const) {
      const bad = vdisk('create', '-f', 'vhd', '-o', 'azure=on', join(tmp.dir, `bad-${size}.vhd`), size);
      assert.notEqual(bad.status, 0);
      assert.match(bad.stderr, re);
    }
    const dyn = vdisk('create', '-f', 'vhd', '-o', 'azure=on,subformat=dynamic', join(tmp.dir, 'd.vhd'), '32M');
    assert.notEqual(dyn.status, 0);
    assert.match(dyn.stderr, /fixed VHD/);
  } finally {
    tmp.cleanup();
  }
});

test('convert -O vhd -o azure=on: qemu-img compare finds it identical to the source, check --azure passes; measure gives the upload size', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const tmp = tempDir();
  try {
    const src = join(tmp.dir, 'src.vhdx');
    qemuImg('create', '-f', 'vhdx', src, '30000128'); // not a whole MiB, not even a whole sector... of 4 KiB
    run('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x5a 1M 64k', '-c', 'write -P 0x33 29999104 1024', src]);
    const out = join(tmp.dir, 'out.vhd');
    const r = vdisk('convert', '-O', 'vhd', '-o', 'azure=on', src, out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /size rounded up from 30000128 to 30408704 bytes/);
    const cmp = run('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vpc', src, out], { allowFail: true });
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    assert.deepEqual(await azureProblems(out), []);

    const m = await measureImage({ format: 'vhd', options: { azure: 'on' }, source: src });
    assert.equal(m.required, 30408704 + 512);
    assert.ok(m['upload-size']! >= 64 * 1024 + 1024 + 512 && m['upload-size']! < m.required, String(m['upload-size']));
    const cli = vdisk('measure', '-O', 'vhd', '-o', 'azure=on', src);
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stdout, new RegExp(`upload size: ${m['upload-size']}`));
  } finally {
    tmp.cleanup();
  }
});

test('check --azure: one line per reason Azure would refuse, non-zero exit', async () => {
  const tmp = tempDir();
  try {
    const good = join(tmp.dir, 'good.vhd');
    await createImage({ path: good, format: 'vhd', size: 20 * MiB, options: { azure: 'on' } });
    const bytes = readFileSync(good);
    const variant = (name: string, edit: (b: Buffer) => Buffer) => {
      const p = join(tmp.dir, name);
      writeFileSync(p, edit(Buffer.from(bytes)));
      return p;
    };
    const footerAt = bytes.length - 512;
    const cases: Array<[string, string, RegExp[]]> = [
      [variant('raw.img', (b) => b.subarray(0, footerAt)), 'not a VHD', [/not a VHD/]],
      [variant('cookie.vhd', (b) => (b.write('xonectix', footerAt), b)), 'bad cookie', [/not a VHD|cookie/]],
      [variant('sum.vhd', (b) => (b[footerAt + 64] ^= 1, b)), 'bad checksum', [/checksum is wrong/]],
      [variant('after.vhd', (b) => Buffer.concat([b, Buffer.alloc(1000, 7)])), 'bytes after the footer', [/1000 bytes after the footer/]],
      [variant('short.vhd', (b) => Buffer.concat([b.subarray(0, footerAt - MiB), b.subarray(footerAt)])), 'length', [/length 19923456 is not the virtual size \+ 512 \(20972032\)/]],
    ];
    // Not a whole MiB, and too small, in one image (and qemu's own fixed VHD of 10 MiB is not whole MiB once CHS-rounded).
    const odd = join(tmp.dir, 'odd.vhd');
    await createImage({ path: odd, format: 'vhd', size: 10 * MiB, options: { subformat: 'fixed' } });
    cases.push([odd, 'size', [/not a whole number of MiB/, /below Azure's minimum of 20 MiB/]]);
    const dyn = join(tmp.dir, 'dyn.vhd');
    await createImage({ path: dyn, format: 'vhd', size: 32 * MiB, options: { force_size: 'on' } });
    cases.push([dyn, 'dynamic', [/not a fixed VHD \(dynamic\)/]]);
    for (const [p, what, res] of cases) {
      const problems = await azureProblems(p);
      for (const re of res) assert.ok(problems.some((m) => re.test(m)), `${what}: ${problems.join(' | ')}`);
      const c = vdisk('check', '--azure', p);
      assert.notEqual(c.status, 0, `${what}: exit status`);
      const lines = c.stdout.split('\n').filter((l) => l.startsWith('ERROR: Azure:'));
      assert.equal(lines.length, problems.length, c.stdout);
    }
    assert.deepEqual(await azureProblems(good), []);
    assert.equal(vdisk('check', '--azure', good).status, 0);
  } finally {
    tmp.cleanup();
  }
});

