import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, chmodSync, statSync, existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { vdisk, VDISK_BIN } from './helpers/cli.js';
import { qemuImg, requireTool, tempDir } from './helpers/oracle.js';
import { REPO_ROOT } from './helpers/corpus.js';

test('create, io, info, map, convert and compare on raw through the CLI', (ctx) => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'a.raw');
    let r = vdisk('create', '-f', 'raw', img, '4M');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /fmt=raw size=4194304/);
    assert.equal(statSync(img).size, 4 << 20);
    r = vdisk('io', '-c', 'write -P 0xab 1000 5000', '-c', 'read -P 0xab 1000 5000', '-c', 'flush', img);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /wrote 5000\/5000 bytes at offset 1000/);
    r = vdisk('io', '-c', 'read -P 0xab 0 512', img);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^vdisk: pattern verification failed at offset 0/);
    r = vdisk('info', '--output=json', img);
    assert.equal(r.status, 0, r.stderr);
    const info = JSON.parse(r.stdout);
    assert.equal(info.format, 'raw');
    assert.equal(info['virtual-size'], 4 << 20);
    r = vdisk('info', img);
    assert.match(r.stdout, /virtual size: 4 MiB \(4194304 bytes\)/);
    r = vdisk('map', '--output=json', img);
    // The file is sparse: data only in the file system blocks written, holes elsewhere. Which
    // blocks those are is the host's (with 4 KiB blocks: [0, 8192) data, the rest a hole), so
    // the expected map is qemu-img's, which reads the same SEEK_DATA/SEEK_HOLE answers; only
    // the fields vdisk prints are compared (QEMU 8.2 added "compressed").
    if (requireTool(ctx, 'qemu-img')) {
      const fields = ({ start, length, depth, present, zero, data, offset }: Record<string, unknown>) => ({ start, length, depth, present, zero, data, offset });
      const expected = (JSON.parse(qemuImg('map', '-f', 'raw', '--output=json', img)) as Record<string, unknown>[]).map(fields);
      assert.deepEqual(JSON.parse(r.stdout), expected);
    }
    const copy = join(t.dir, 'b.raw');
    r = vdisk('convert', '-O', 'raw', img, copy);
    assert.equal(r.status, 0, r.stderr);
    r = vdisk('compare', img, copy);
    assert.equal(r.status, 0);
    assert.match(r.stdout, /Images are identical/);
    vdisk('io', '-c', 'write -P 1 3000 1', copy);
    r = vdisk('compare', img, copy);
    assert.equal(r.status, 1);
    assert.match(r.stdout, /Content mismatch at offset 3000!/);
  } finally {
    t.cleanup();
  }
});

test('convert skips zero runs: the output is sparse', () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'a.raw');
    vdisk('create', '-f', 'raw', img, '64M');
    vdisk('io', '-c', 'write -P 7 32M 64k', img);
    const out = join(t.dir, 'out.raw');
    assert.equal(vdisk('convert', '-O', 'raw', img, out).status, 0);
    assert.ok(statSync(out).blocks * 512 < 1 << 20, `output allocates ${statSync(out).blocks * 512} bytes`);
    assert.equal(vdisk('compare', img, out).status, 0);
    const full = join(t.dir, 'full.raw');
    assert.equal(vdisk('convert', '-S', '0', '-O', 'raw', img, full).status, 0);
    assert.ok(statSync(full).blocks * 512 >= 64 << 20);
  } finally {
    t.cleanup();
  }
});

test('bad input: one clear line, non-zero exit, nothing written', () => {
  const t = tempDir();
  try {
    const cases: [string[], RegExp][] = [
      [['info', join(t.dir, 'missing.vhd')], /^vdisk: no such file \(.*missing\.vhd\)\n$/],
      [['info', t.dir], /^vdisk: is a directory, not an image file/],
      [['create', '-f', 'nope', join(t.dir, 'x'), '1M'], /^vdisk: unknown format 'nope'/],
      [['create', '-f', 'raw', join(t.dir, 'x'), '-5'], /^vdisk: /],
      [['create', '-f', 'raw', join(t.dir, 'x'), '1000'], /not a multiple of 512/],
      [['create', '-f', 'raw', join(t.dir, 'x'), '99999999P'], /^vdisk: .*(too large|larger)/],
      [['create', '-f', 'raw', join(t.dir, 'x'), 'lots'], /^vdisk: invalid size 'lots'/],
      [['create', '-f', 'raw', '-o', 'cluster_size=64k', join(t.dir, 'x'), '1M'], /has no option 'cluster_size'/],
      [['io', '-c', 'read 0 512', join(t.dir, 'missing.raw')], /^vdisk: no such file/],
      [['frobnicate'], /^vdisk: unknown command 'frobnicate'/],
    ];
    for (const [args, re] of cases) {
      const r = vdisk(...args);
      assert.notEqual(r.status, 0, args.join(' '));
      assert.match(r.stderr, re, args.join(' '));
    }
    assert.ok(!existsSync(join(t.dir, 'x')), 'a failed create left a file behind');

    const img = join(t.dir, 'small.raw');
    vdisk('create', '-f', 'raw', img, '1M');
    const r = vdisk('io', '-c', 'write 1M 512', img);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /outside the disk/);
    // compare: 2 on error
    assert.equal(vdisk('compare', img, join(t.dir, 'none.raw')).status, 2);
    // --verbose adds the cause chain
    const v = vdisk('--verbose', 'info', join(t.dir, 'missing.vhd'));
    assert.match(v.stderr, /caused by: .*ENOENT/);

    if (process.getuid?.() !== 0) {
      const locked = join(t.dir, 'locked.raw');
      writeFileSync(locked, Buffer.alloc(512));
      chmodSync(locked, 0);
      assert.match(vdisk('info', locked).stderr, /permission denied/);
    }
    mkdirSync(join(t.dir, 'd'));
  } finally {
    t.cleanup();
  }
});

test('create refuses to overwrite an existing file', () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'a.raw');
    writeFileSync(img, 'precious');
    const r = vdisk('create', '-f', 'raw', img, '1M');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /already exists/);
    assert.equal(readFileSync(img, 'utf8'), 'precious');
  } finally {
    t.cleanup();
  }
});

test("README's set-up command, after `npm ci`, runs the demo as written", () => {
  // The first line of the README's first code block: `npm ci && <command>  # comment`.
  const line = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8').split('\n').find((l) => l.startsWith('npm ci && '));
  assert.ok(line, 'README starts with the set-up command');
  const command = line.replace(/^npm ci && /, '').replace(/\s+#.*$/, '');
  const r = spawnSync('sh', ['-c', command], { cwd: REPO_ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, `${command}: ${r.stderr}${r.stdout}`);
  assert.match(r.stdout, /demo done/);
});

test('demo runs end to end', () => {
  const r = vdisk('demo');
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /Images are identical/);
  // Every copy the demo makes has its source's size: no "Warning: Image size mismatch!", no "sizes differ".
  assert.doesNotMatch(r.stdout + r.stderr, /mismatch|sizes differ|Warning/i);
  assert.match(r.stdout, /demo done/);
});

test('convert -t: unsafe (default) and writeback both produce the same image; bad modes are refused', () => {
  const t = tempDir();
  try {
    const img = join(t.dir, 'a.raw');
    vdisk('create', '-f', 'raw', img, '8M');
    vdisk('io', '-c', 'write -P 9 1M 3M', img);
    for (const mode of ['unsafe', 'writeback']) {
      const out = join(t.dir, `${mode}.vhd`);
      const r = vdisk('convert', '-t', mode, '-O', 'vhd', img, out);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(vdisk('compare', img, out).status, 0);
    }
    const r = vdisk('convert', '-t', 'none', '-O', 'raw', img, join(t.dir, 'x.raw'));
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /^vdisk: option '-t, --cache <mode>' argument 'none' is invalid/);
  } finally {
    t.cleanup();
  }
});

test('--version prints the package version; the CLI runs from the one-file bundle and its code cache', () => {
  const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  const r = vdisk('--version');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), pkg.version);
  // bin/vdisk.cjs runs dist/vdisk.cjs (scripts/bundle.mjs) with a code
  // cache: make sure the launcher points at a bundle that exists, that the
  // build left a cache V8 accepts, and that a stale cache is only a slower
  // start (rejected, then rewritten), never a failure.
  const launcher = readFileSync(join(REPO_ROOT, 'bin', 'vdisk.cjs'), 'utf8');
  assert.match(launcher, /'dist', 'vdisk\.cjs'/);
  const bundle = join(REPO_ROOT, 'dist', 'vdisk.cjs');
  assert.ok(existsSync(bundle));
  const cache = `${bundle}.v8-cache`;
  assert.ok(existsSync(cache), 'the build writes the code cache');
  const good = readFileSync(cache);
  // A rejected cache (another Node, a damaged file) is left alone — the launcher never writes into the
  // package's folder, which may be node_modules — and one of its own is kept in the user's cache folder.
  const t = tempDir();
  try {
    writeFileSync(cache, Buffer.from('not a V8 code cache'));
    const env = { ...process.env, XDG_CACHE_HOME: t.dir };
    for (let i = 0; i < 2; i++) {
      const again = spawnSync(process.execPath, [VDISK_BIN, '--version'], { encoding: 'utf8', env });
      assert.equal(again.status, 0, again.stderr);
      assert.equal(again.stdout.trim(), pkg.version);
    }
    assert.deepEqual(readFileSync(cache), Buffer.from('not a V8 code cache'), 'the shipped cache is not rewritten');
    const mine = readdirSync(join(t.dir, 'vdisk'));
    assert.equal(mine.length, 1, 'one cache of its own, for this Node');
    assert.match(mine[0], /^cli-v\d+.*\.v8-cache$/);
  } finally {
    writeFileSync(cache, good);
    t.cleanup();
  }
});

test('a run defines only the command it names, and help still reaches every command', () => {
  // Command help, after a global option: the one command defined is enough.
  const one = vdisk('--verbose', 'convert', '--help');
  assert.equal(one.status, 0, one.stderr);
  assert.match(one.stdout, /Usage: vdisk convert \[options\] <source> <target>/);
  // `help CMD`, the program's help and a misspelt command get the whole program.
  const viaHelp = vdisk('help', 'measure');
  assert.equal(viaHelp.status, 0, viaHelp.stderr);
  assert.match(viaHelp.stdout, /Usage: vdisk measure/);
  const all = vdisk('--help');
  for (const name of ['info', 'create', 'convert', 'compare', 'map', 'io', 'demo', 'check', 'commit', 'rebase', 'resize', 'measure', 'amend', 'serve']) {
    assert.match(all.stdout, new RegExp(`^  ${name} `, 'm'), `${name} is listed`);
  }
  const typo = vdisk('conver', 'a', 'b');
  assert.equal(typo.status, 2);
  assert.match(typo.stderr, /unknown command 'conver'[\s\S]*Did you mean convert\?/);
});

test("the exit status follows the command that ran, not the words on the line (an argument may be 'compare')", () => {
  const t = tempDir();
  try {
    // Run from the folder, so that an image can be named plainly `compare`.
    const run = (...args: string[]) => {
      const r = spawnSync(process.execPath, [VDISK_BIN, ...args], { cwd: t.dir, encoding: 'utf8' });
      return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
    };
    assert.equal(run('create', '-f', 'raw', 'compare', '1M').status, 0);
    assert.equal(run('create', '-f', 'raw', 'other.raw', '1M').status, 0);
    assert.equal(run('io', '-c', 'write -P 7 4096 512', 'other.raw').status, 0);
    // compare: 0 same, 1 different, 2 error.
    assert.equal(run('compare', 'compare', 'compare').status, 0);
    assert.equal(run('compare', 'compare', 'other.raw').status, 1);
    assert.equal(run('compare', 'compare', 'none.raw').status, 2);
    // Any other command fails with 1, even with an argument that reads 'compare'.
    const cases: [string[], RegExp][] = [
      [['info', '-f', 'compare', 'other.raw'], /^vdisk: unknown format 'compare'/],
      [['io', '-c', 'read -P 1 0 512', 'compare'], /^vdisk: pattern verification failed/],
      [['--verbose', 'convert', '-O', 'raw', 'compare', 'compare'], /^vdisk: .*exists/],
      [['map', join('missing', 'compare')], /^vdisk: no such file/],
    ];
    for (const [args, re] of cases) {
      const r = run(...args);
      assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(' '));
    }
  } finally {
    t.cleanup();
  }
});
