import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FORMATS } from '../src/formats/registry.js';
import { VDISK_BIN, vdisk } from './helpers/cli.js';
import { qemuImg, requireTool, tempDir } from './helpers/oracle.js';

/*
 * What README.md promises of the command line (issue 17, item 3), each
 * through the real launcher.
 */

const MiB = 1 << 20;

function ok(r: { status: number; stderr: string; stdout: string }, what = ''): void {
  assert.equal(r.status, 0, `${what}: ${r.stderr}${r.stdout}`);
}

/** base.vhd (0x11 over its first MiB) and child.vhd over it (0x22 at 2 MiB). */
function chain(dir: string): { base: string; child: string } {
  const base = join(dir, 'base.vhd');
  const child = join(dir, 'child.vhd');
  ok(vdisk('create', '-f', 'vhd', '-o', 'force_size=on', base, '4M'));
  ok(vdisk('io', '-c', 'write -P 0x11 0 1M', base));
  ok(vdisk('create', '-f', 'vhd', '-b', 'base.vhd', '-F', 'vhd', child));
  ok(vdisk('io', '-c', 'write -P 0x22 2M 64k', child));
  return { base, child };
}

test('compare --layer-only compares the named layers alone, also when a parent is missing', () => {
  const t = tempDir();
  try {
    const { base, child } = chain(t.dir);
    // The child's own layer: its 64 KiB at 2 MiB, zeros elsewhere.
    const own = join(t.dir, 'own.raw');
    ok(vdisk('create', '-f', 'raw', own, '4M'));
    ok(vdisk('io', '-c', 'write -P 0x22 2M 64k', own));
    let r = vdisk('compare', child, own);
    assert.equal(r.status, 1, 'the chain shows the base too');
    r = vdisk('compare', '--layer-only', child, own);
    assert.equal(r.status, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /Images are identical/);
    rmSync(base);
    r = vdisk('compare', child, own);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /not found/);
    ok(vdisk('compare', '--layer-only', child, own), 'no parent needed');
    // The other open options of README's list are there too.
    ok(vdisk('compare', '--layer-only', '--depth-limit', '1', '--ignore-parent-id', child, own));
  } finally {
    t.cleanup();
  }
});

test('serve --layer-only exports the named layer alone (its parent missing); qemu-img reads it over NBD', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  try {
    const { base, child } = chain(d.dir);
    rmSync(base);
    const sock = join(d.dir, 's.sock');
    const p = spawn(process.execPath, [VDISK_BIN, 'serve', '--layer-only', '-r', '--socket', sock, child], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exit = new Promise<number>((r) => p.on('exit', (c) => r(c ?? -1)));
    let out = '';
    let err = '';
    p.stderr.on('data', (c) => (err += c));
    await new Promise<void>((resolve, reject) => {
      p.stdout.on('data', (c) => {
        out += c;
        if (/listening on/.test(out)) resolve();
      });
      void exit.then((c) => reject(new Error(`serve exited ${c}: ${err}`)));
    });
    const copy = join(d.dir, 'copy.raw');
    qemuImg('convert', '-f', 'raw', `nbd+unix:///?socket=${sock}`, '-O', 'raw', copy);
    assert.equal(await exit, 0, 'not persistent: done after the one client');
    const bytes = readFileSync(copy);
    assert.equal(bytes.length, 4 * MiB);
    assert.ok(bytes.subarray(0, 2 * MiB).every((x) => x === 0), 'the missing base is not read');
    assert.ok(bytes.subarray(2 * MiB, 2 * MiB + 65536).every((x) => x === 0x22));
  } finally {
    d.cleanup();
  }
});

test('-o help lists every creation option of a format with its default (create and convert), and needs no file', () => {
  for (const f of FORMATS) {
    for (const args of [['create', '-f', f.name, '-o', 'help'], ['convert', '-O', f.name, '-o', '?']]) {
      const r = vdisk(...args);
      ok(r, args.join(' '));
      if (f.createOptions.length === 0) assert.match(r.stdout, new RegExp(`${f.name} has no creation options`));
      for (const o of f.createOptions) {
        const line = r.stdout.split('\n').find((l) => l.trimStart().startsWith(`${o.name}=`));
        assert.ok(line, `${f.name}: ${o.name} listed`);
        assert.ok(line.includes(o.description), `${o.name}: its meaning`);
        if (o.default !== undefined) assert.ok(line.includes(`[default: ${o.default}]`), `${o.name}: its default`);
      }
    }
  }
  // The defaults the table states are what create really does (VHD: 2 MiB blocks, dynamic).
  const t = tempDir();
  try {
    const img = join(t.dir, 'a.vhd');
    ok(vdisk('create', '-f', 'vhd', img, '8M'));
    const spec = JSON.parse(vdisk('info', '--output=json', img).stdout)['format-specific'].data;
    assert.equal(spec['block-size'], 2 * MiB);
    assert.equal(spec['disk-type'], 'dynamic');
  } finally {
    t.cleanup();
  }
  // Without -o help a file is still required (a usage error, exit 2).
  const r = vdisk('create', '-f', 'vhd');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /missing required argument 'image'/);
  assert.equal(vdisk('convert', '-O', 'raw', 'a').status, 2);
});

test('convert -q prints nothing, even with -p', () => {
  const t = tempDir();
  try {
    const src = join(t.dir, 'a.raw');
    ok(vdisk('create', '-f', 'raw', src, '1M'));
    const r = vdisk('convert', '-q', '-p', '-O', 'vhd', src, join(t.dir, 'b.vhd'));
    ok(r);
    assert.equal(r.stdout + r.stderr, '');
  } finally {
    t.cleanup();
  }
});

test('info without --backing-chain shows full-backing-filename, and says when the parent cannot be found without failing', () => {
  const t = tempDir();
  try {
    const { base, child } = chain(t.dir);
    let r = vdisk('info', '--output=json', child);
    ok(r);
    let j = JSON.parse(r.stdout);
    assert.equal(j['backing-filename'], 'base.vhd');
    assert.equal(j['full-backing-filename'], base);
    assert.equal(j['backing-file-problem'], undefined);
    r = vdisk('info', child);
    assert.match(r.stdout, new RegExp(`backing file: base\\.vhd \\(actual path: ${base.replace(/[.]/g, '\\.')}\\)`));
    rmSync(base);
    r = vdisk('info', '--output=json', child);
    ok(r, 'the child is described all the same');
    j = JSON.parse(r.stdout);
    assert.equal(j['full-backing-filename'], base, 'where the recorded name leads');
    assert.match(j['backing-file-problem'], /backing file 'base\.vhd' not found/);
    r = vdisk('info', child);
    ok(r);
    assert.match(r.stdout, /backing file problem: backing file 'base\.vhd' not found/);
  } finally {
    t.cleanup();
  }
});

test('a bad checksum error names --ignore-checksums, which then opens the image', () => {
  const t = tempDir();
  try {
    const vhd = join(t.dir, 'f.vhd');
    ok(vdisk('create', '-f', 'vhd', '-o', 'subformat=fixed', vhd, '1M'));
    const b = readFileSync(vhd);
    b[b.length - 512 + 64] ^= 0xff; // the footer's checksum field
    writeFileSync(vhd, b);
    const vhdx = join(t.dir, 'd.vhdx');
    ok(vdisk('create', '-f', 'vhdx', vhdx, '1M'));
    const x = readFileSync(vhdx);
    for (const at of [64 * 1024, 128 * 1024]) x[at + 4] ^= 0xff; // both headers' checksums
    writeFileSync(vhdx, x);
    for (const img of [vhd, vhdx]) {
      const r = vdisk('info', img);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /checksum/);
      assert.match(r.stderr, /--ignore-checksums opens it anyway/);
      ok(vdisk('info', '--ignore-checksums', img), img);
    }
  } finally {
    t.cleanup();
  }
});

test('create and convert into a missing folder say the folder is missing, and name the file asked for', () => {
  const t = tempDir();
  try {
    const missing = join(t.dir, 'nope');
    for (const args of [
      ['create', '-f', 'vhd', join(missing, 'a.vhd'), '1M'],
      ['create', '-f', 'raw', join(missing, 'a.raw'), '1M'],
    ]) {
      const r = vdisk(...args);
      assert.equal(r.status, 1);
      assert.equal(r.stderr.trim(), `vdisk: folder ${missing} does not exist (make it first) (${args[3]})`);
    }
    const src = join(t.dir, 's.raw');
    ok(vdisk('create', '-f', 'raw', src, '1M'));
    const r = vdisk('convert', '-O', 'vhdx', src, join(missing, 'c.vhdx'));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /folder .*nope does not exist/);
    assert.deepEqual(readdirSync(t.dir).sort(), ['s.raw']);
  } finally {
    t.cleanup();
  }
});
