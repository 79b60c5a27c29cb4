import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { vdisk } from './helpers/cli.js';
import { REPO_ROOT } from './helpers/corpus.js';
import { qemuImg, RAW_BACKING, requireTool, run, sha256File, tempDir, vdiskDigest } from './helpers/oracle.js';
import { rng, randInt } from './helpers/random.js';

/**
 * add-cow against outside oracles. No other tool reads add-cow, so the
 * oracle is test/oracles/addcow_reader.py, written from
 * docs/formats/add-cow.md alone; it reads the backing file through
 * `qemu-img convert`. A second oracle replays the same writes with qemu-io
 * on a raw copy of the backing disk: all three must agree on the whole disk.
 */
const READER = join(REPO_ROOT, 'test', 'oracles', 'addcow_reader.py');
const MiB = 1 << 20;

function pyDigest(addCow: string): { digest: string; size: number } {
  const [digest, size] = run('/usr/bin/python3', [READER, addCow]).stdout.trim().split(/\s+/);
  return { digest, size: Number(size) };
}

/** Random writes (unaligned, some zeroing), as commands both `vdisk io` and `qemu-io` understand. */
function workload(seed: number, size: number, n = 40): string[] {
  const r = rng(seed);
  const cmds: string[] = [];
  for (let i = 0; i < n; i++) {
    const off = randInt(r, 0, size - 1);
    const len = Math.min(size - off, randInt(r, 1, r() < 0.2 ? 300000 : 9000));
    cmds.push(r() < 0.15 ? `write -z ${off} ${len}` : `write -P 0x${randInt(r, 1, 255).toString(16)} ${off} ${len}`);
  }
  return cmds;
}

/** Apply `cmds` to the add-cow in a few `vdisk io` runs (each run ends with a close), with flushes between. */
function vdiskWrites(addCow: string, cmds: string[], backingAs: string[] = []): void {
  for (let i = 0; i < cmds.length; i += 15) {
    const part = cmds.slice(i, i + 15);
    part.splice(Math.floor(part.length / 2), 0, 'flush');
    const r = vdisk('io', ...backingAs, ...part.flatMap((c) => ['-c', c]), addCow);
    assert.equal(r.status, 0, r.stderr);
  }
}

/** Convert `source` (format `fmt`) to raw at `reference`, replay `cmds` on it with qemu-io, and digest it. */
async function replayDigest(source: string, fmt: string, reference: string, cmds: string[]): Promise<{ digest: string; size: number }> {
  if (source !== reference) qemuImg('convert', '-f', fmt, '-O', 'raw', source, reference);
  run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), reference]);
  return { digest: await sha256File(reference), size: statSync(reference).size };
}

/**
 * Make an add-cow over `base` (format `fmt`), write the workload with vdisk, and
 * check vdisk, the Python reader, and qemu-io replaying the writes on a raw copy all agree.
 */
async function agreeOver(dir: string, base: string, fmt: string, seed: number): Promise<void> {
  const top = join(dir, `top-${seed}.add-cow`);
  const data = `data-${seed}.raw`;
  let r = vdisk('create', '-f', 'add-cow', '-o', `backing_file=${base},image_file=${data}`, '-F', fmt, top);
  assert.equal(r.status, 0, r.stderr);
  const basePath = join(dir, base);
  const size = Number(JSON.parse(qemuImg('info', '--output=json', '-f', fmt, basePath))['virtual-size']);
  assert.equal(statSync(join(dir, data)).size, size, 'image file made sparse at the backing size');
  const cmds = workload(seed, size);
  // add-cow records no backing format: say which it is (a raw one is never probed, docs/security.md).
  const backingFormat = fmt === 'vpc' ? 'vhd' : fmt;
  const backingAs = ['--backing-as', backingFormat];
  vdiskWrites(top, cmds, backingAs);

  const want = await replayDigest(basePath, fmt, join(dir, `ref-${seed}.raw`), cmds);
  assert.equal(want.size, size);

  assert.deepEqual(pyDigest(top), want, 'Python reader vs qemu-io replay');
  assert.deepEqual(await vdiskDigest(top, { backingFormats: [backingFormat] }), want, 'vdisk vs qemu-io replay');
  r = vdisk('check', ...backingAs, top);
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /No errors were found/);
}

function baseWithData(t: TestContext, dir: string, fmt: 'raw' | 'vpc' | 'vhdx', size: number, extra: string[] = []): string | undefined {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return undefined;
  const base = join(dir, `base.${fmt === 'vpc' ? 'vhd' : fmt}`);
  qemuImg('create', '-f', fmt, ...extra, base, String(size));
  const r = rng(size + fmt.length);
  const cmds: string[] = [];
  for (let i = 0; i < 12; i++) cmds.push(`write -P 0x${randInt(r, 1, 255).toString(16)} ${randInt(r, 0, size / 512 - 600) * 512} ${randInt(r, 1, 600) * 512}`);
  run('qemu-io', ['-f', fmt, ...cmds.flatMap((c) => ['-c', c]), base]);
  return base;
}

const BACKINGS = [
  { fmt: 'raw', file: 'base.raw', extra: [], seeds: [1, 2, 3] },
  { fmt: 'vpc', file: 'base.vhd', extra: ['-o', 'subformat=dynamic'], seeds: [4] },
  { fmt: 'vhdx', file: 'base.vhdx', extra: [], seeds: [5] },
] as const;

for (const b of BACKINGS) {
  test(`add-cow over a qemu-made ${b.fmt} backing: vdisk, the Python reader and qemu-io agree on random workloads`, async (t) => {
    const d = tempDir();
    try {
      if (!baseWithData(t, d.dir, b.fmt, 8 * MiB, [...b.extra])) return;
      for (const seed of b.seeds) await agreeOver(d.dir, b.file, b.fmt, seed);
    } finally {
      d.cleanup();
    }
  });
}

for (const [fmt, qfmt, ext] of [['vhd', 'vpc', 'vhd'], ['vhdx', 'vhdx', 'vhdx']] as const) {
  test(`add-cow over a ${fmt.toUpperCase()} chain (qemu-made parent, vdisk-made differencing child): vdisk equals the qemu-io replay`, async (t) => {
    const d = tempDir();
    try {
      const base = baseWithData(t, d.dir, qfmt, 8 * MiB, qfmt === 'vpc' ? ['-o', 'subformat=dynamic'] : []);
      if (!base) return;
      const child = join(d.dir, `child.${ext}`);
      let r = vdisk('create', '-f', fmt, '-b', `base.${ext}`, '-F', fmt, child);
      assert.equal(r.status, 0, r.stderr);
      const size = Number(JSON.parse(qemuImg('info', '--output=json', '-f', qfmt, base))['virtual-size']);
      const childCmds = workload(21, size, 15);
      vdiskWrites(child, childCmds);
      const top = join(d.dir, 'top.add-cow');
      r = vdisk('create', '-f', 'add-cow', '-b', `child.${ext}`, '-o', 'image_file=top.raw', top);
      assert.equal(r.status, 0, r.stderr);
      const topCmds = workload(22, size, 30);
      vdiskWrites(top, topCmds);
      // qemu-img has no differencing support for these formats, so neither it nor the Python reader
      // (which reads backings through it) can serve here: replay both layers' writes on the parent instead.
      const want = await replayDigest(base, qfmt, join(d.dir, 'reference.raw'), [...childCmds, ...topCmds]);
      assert.deepEqual(await vdiskDigest(top), want);
      const map = JSON.parse(vdisk('map', '--output=json', top).stdout) as { depth: number }[];
      assert.deepEqual([...new Set(map.map((e) => e.depth))].sort(), [0, 1, 2], 'map shows all three layers');
    } finally {
      d.cleanup();
    }
  });
}

test('add-cow over a VHDX backing (qemu-made): all three agree', async (t) => {
  const d = tempDir();
  try {
    if (!baseWithData(t, d.dir, 'vhdx', 8 * MiB)) return;
    await agreeOver(d.dir, 'base.vhdx', 'vhdx', 5);
  } finally {
    d.cleanup();
  }
});

test('add-cow without backing, and an add-cow over an add-cow: Python reader agrees with vdisk', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  try {
    const lower = join(d.dir, 'lower.add-cow');
    let r = vdisk('create', '-f', 'add-cow', '-o', 'image_file=lower.raw', lower, '4M');
    assert.equal(r.status, 0, r.stderr);
    vdiskWrites(lower, workload(7, 4 * MiB, 20));
    const lowerDigest = await vdiskDigest(lower);
    assert.deepEqual(pyDigest(lower), lowerDigest);
    // The upper add-cow's backing is an add-cow, which qemu-img cannot read: the reference is the
    // lower disk flattened by the Python reader, with the same writes replayed by qemu-io.
    const upper = join(d.dir, 'upper.add-cow');
    r = vdisk('create', '-f', 'add-cow', '-b', 'lower.add-cow', '-o', 'image_file=upper.raw', upper);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(await vdiskDigest(upper), lowerDigest, 'a fresh child shows its backing');
    const cmds = workload(8, 4 * MiB, 20);
    vdiskWrites(upper, cmds);
    const reference = join(d.dir, 'reference.raw');
    run('/usr/bin/python3', [READER, lower, reference]);
    assert.deepEqual(await vdiskDigest(upper), await replayDigest(reference, 'raw', reference, cmds));
  } finally {
    d.cleanup();
  }
});

test('CLI: info and map describe the add-cow layer; bad input fails with one clear line and writes nothing', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  try {
    qemuImg('create', '-f', 'raw', join(d.dir, 'base.raw'), '2M');
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 2M', join(d.dir, 'base.raw')]);
    const top = join(d.dir, 'top.add-cow');
    let r = vdisk('create', '-f', 'add-cow', '-o', 'backing_file=base.raw,image_file=DATA.raw', top);
    assert.equal(r.status, 0, r.stderr);
    r = vdisk('io', '--backing-as', 'raw', '-c', 'write -P 0x22 1000 5000', '-c', 'write -z 1M 4096', top);
    assert.equal(r.status, 0, r.stderr);
    const info = JSON.parse(vdisk('info', '--backing-as', 'raw', '--output=json', top).stdout);
    assert.equal(info.format, 'add-cow');
    assert.equal(info['virtual-size'], 2 * MiB);
    assert.equal(info['backing-filename'], 'base.raw');
    assert.deepEqual(info['format-specific'], {
      type: 'add-cow',
      data: { 'backing-file': 'base.raw', 'image-file': 'DATA.raw', 'image-file-path': join(d.dir, 'DATA.raw'), 'allocated-bytes': 5632 + 4096, 'bitmap-bytes': 512 },
    });
    const map = JSON.parse(vdisk('map', '--backing-as', 'raw', '--output=json', top).stdout) as { start: number; length: number; depth: number }[];
    assert.deepEqual(
      map.map((e) => [e.start, e.length, e.depth]),
      [[0, 512, 1], [512, 5632, 0], [6144, MiB - 6144, 1], [MiB, 4096, 0], [MiB + 4096, MiB - 4096, 1]],
    );
    const before = readFileSync(top);
    // Probed as add-cow by its magic, refused for its version: never silently raw.
    const bad = Buffer.from(before);
    bad.writeUInt32BE(7, 8);
    const badPath = join(d.dir, 'bad.add-cow');
    writeFileSync(badPath, bad);
    r = vdisk('info', badPath);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /^vdisk: add-cow version 7 is not supported/);
    r = vdisk('create', '-f', 'add-cow', '-o', 'backing_file=base.raw,image_file=top.add-cow', join(d.dir, 'x.add-cow'));
    assert.notEqual(r.status, 0);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!existsSync(join(d.dir, 'x.add-cow')));
    assert.deepEqual(readFileSync(top), before);
  } finally {
    d.cleanup();
  }
});

test('CLI lifecycle: commit empties the add-cow into its base; resize and rebase keep a layout the Python reader reads', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const d = tempDir();
  try {
    const base = baseWithData(t, d.dir, 'raw', 4 * MiB);
    if (!base) return;
    const top = join(d.dir, 'top.add-cow');
    let r = vdisk('create', '-f', 'add-cow', '-b', 'base.raw', '-F', 'raw', '-o', 'image_file=top.raw', top);
    assert.equal(r.status, 0, r.stderr);
    vdiskWrites(top, workload(31, 4 * MiB, 20), ['--backing-as', 'raw']);
    const before = await vdiskDigest(top, RAW_BACKING);
    r = vdisk('commit', '--backing-as', 'raw', top);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(await qemuDigestRaw(base), before, 'the base now holds the disk');
    assert.deepEqual(await vdiskDigest(top, RAW_BACKING), before);
    assert.equal(JSON.parse(vdisk('info', '--backing-as', 'raw', '--output=json', top).stdout)['format-specific'].data['allocated-bytes'], 0);

    r = vdisk('resize', '--backing-as', 'raw', top, '6M');
    assert.equal(r.status, 0, r.stderr);
    vdiskWrites(top, workload(32, 6 * MiB, 15), ['--backing-as', 'raw']);
    assert.deepEqual(pyDigest(top), await vdiskDigest(top, RAW_BACKING), 'after a grow');
    r = vdisk('resize', '--backing-as', 'raw', '--shrink', top, '3000k');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(top).size, 2068 + Math.ceil((3000 * 1024) / 512 / 8));
    assert.deepEqual(pyDigest(top), await vdiskDigest(top, RAW_BACKING), 'after a shrink');
    r = vdisk('resize', '--backing-as', 'raw', top, '5M');
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(pyDigest(top), await vdiskDigest(top, RAW_BACKING), 'after growing back: dropped bits stay dropped');

    qemuImg('create', '-f', 'raw', join(d.dir, 'other.raw'), '5M');
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 5M', join(d.dir, 'other.raw')]);
    r = vdisk('rebase', '--backing-as', 'raw', '-u', '-b', 'other.raw', '-F', 'raw', top);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(vdisk('info', '--backing-as', 'raw', '--output=json', top).stdout)['backing-filename'], 'other.raw');
    assert.deepEqual(pyDigest(top), await vdiskDigest(top, RAW_BACKING), 'after rebase -u');
    r = vdisk('check', '--backing-as', 'raw', top);
    assert.equal(r.status, 0, r.stderr + r.stdout);
  } finally {
    d.cleanup();
  }
});

async function qemuDigestRaw(path: string): Promise<{ digest: string; size: number }> {
  return { digest: await sha256File(path), size: statSync(path).size };
}
