import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { BlockError } from '../src/core/errors.js';
import { openChain, openLayer } from '../src/chain/open.js';
import { resizeChain } from '../src/index.js';
import { vdisk } from './helpers/cli.js';
import { REPO_ROOT } from './helpers/corpus.js';
import { CrashFs } from './helpers/ops-fixtures.js';
import { pyvhdiDigest, pyvhdiRead, qemuImg, readWholeDisk, requireTool, run, sha256, tempDir, vhdxReaderDigest } from './helpers/oracle.js';

/*
 * Issue 17, item 2: `vdisk resize --chain TOP SIZE` grows every layer from
 * the base up, each step crash-safe, the whole restartable. Read back by
 * vdisk, the VHD reader written from the specification (test/oracles),
 * libvhdi and qemu-img; crashed at every write and restarted.
 */

const MiB = 1 << 20;
const ORACLE = join(REPO_ROOT, 'test', 'oracles', 'vhd_reader.py');
const ok = (r: { status: number; stderr: string }) => assert.equal(r.status, 0, r.stderr);
const info = (p: string) => JSON.parse(vdisk('info', '--output=json', p).stdout);

/** base <- c1 <- c2 in `dir`, each layer with data of its own (some across block edges); returns the paths, top first. */
function makeChain(dir: string, fmt: 'vhd' | 'vhdx', size = '8M'): string[] {
  const [base, c1, c2] = ['base', 'c1', 'c2'].map((n) => join(dir, `${n}.${fmt}`));
  // force_size: exactly 8 MiB (no CHS rounding), so the sizes below are round.
  ok(vdisk('create', '-f', fmt, ...(fmt === 'vhd' ? ['-o', 'force_size=on'] : ['-o', 'block_size=1M']), base, size));
  ok(vdisk('io', '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x12 7M 1M', base));
  ok(vdisk('create', '-f', fmt, '-b', `base.${fmt}`, c1));
  ok(vdisk('io', '-c', 'write -P 0x21 1536 4096', '-c', 'write -P 0x22 6M 1536k', c1));
  ok(vdisk('create', '-f', fmt, '-b', `c1.${fmt}`, c2));
  ok(vdisk('io', '-c', 'write -P 0x31 2M 512', '-c', 'write -P 0x32 8388096 512', c2));
  return [c2, c1, base];
}

/** The disk grown: its old bytes, then zeros. */
function grownModel(old: Uint8Array, size: number): Uint8Array {
  const m = new Uint8Array(size);
  m.set(old);
  return m;
}

function vhdReaderDigest(files: string[]): { digest: string; size: number } {
  const out = run('python3', [ORACLE, ...files]).stdout.trim().split(/\s+/);
  return { digest: out[0], size: Number(out[1]) };
}

test('resize --chain grows a VHD chain of three from the base up: vdisk and the spec reader read the old disk and zeros; libvhdi and qemu-img agree where they can read', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'pyvhdi')) return;
  const { dir, cleanup } = tempDir();
  try {
    const chain = makeChain(dir, 'vhd');
    const [top, c1, base] = chain;
    const old = await readWholeDisk(top, { readOnly: true });
    assert.equal(vhdReaderDigest(chain).digest, sha256(old));
    const libvhdiBefore = pyvhdiRead(chain, 0, 8 * MiB);
    // 20 MiB: 10 blocks of 2 MiB where the BATs hold 4, so every layer's BAT moves to the end of its file.
    const r = vdisk('resize', '--chain', top, '20M');
    ok(r);
    assert.match(r.stdout, /Chain of 3 layers is 20971520 bytes/);
    const model = grownModel(old, 20 * MiB);
    for (const p of chain) assert.equal(info(p)['virtual-size'], 20 * MiB, p);
    assert.equal(sha256(await readWholeDisk(top, { readOnly: true })), sha256(model), 'vdisk');
    assert.deepEqual(vhdReaderDigest(chain), { digest: sha256(model), size: 20 * MiB }, 'the VHD reader written from the specification');
    // libvhdi takes a VHD's size from the footer's original size, which a resize now sets to the new size (as
    // Hyper-V does; docs/formats/vhd.md): it sees 20 MiB. In the first 8 MiB it reads what it read before the
    // resize — not quite the old disk: libvhdi 20210425 reads zeros for sectors 11..15 of c1's first block (bitmap
    // bits clear: the parent's 0x11), before any resize too, where vdisk, the specification's reader and qemu-img
    // read the parent's bytes — and zeros in the grown range.
    assert.equal(pyvhdiDigest(chain).size, 20 * MiB, 'libvhdi sees the new size');
    assert.ok(pyvhdiRead(chain, 0, 8 * MiB).equals(libvhdiBefore), 'libvhdi reads what it read before');
    assert.ok(pyvhdiRead(chain, 8 * MiB, 12 * MiB).every((b) => b === 0), 'libvhdi reads zeros in the grown range');
    // qemu-img's vpc driver follows no VHD parent (it opens a differencing VHD alone, no backing file): it checks the
    // base, grown, by content, and every layer's size (by the footer's current size; by default it goes by CHS geometry).
    const opts = (p: string) => `driver=vpc,force_size_calc=current_size,file.filename=${p}`;
    for (const p of chain) assert.equal(JSON.parse(qemuImg('info', '--output=json', '--image-opts', opts(p)))['virtual-size'], 20 * MiB, p);
    const raw = join(dir, 'base.raw');
    writeFileSync(raw, await readWholeDisk(base, { readOnly: true }));
    const cmp = run('qemu-img', ['compare', '--image-opts', opts(base), `driver=raw,file.filename=${raw}`], { allowFail: true });
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    // Every child records its parent's modification time as it now is (VHD "Parent Time Stamp", seconds).
    for (const [child, parent] of [[top, c1], [c1, base]]) {
      const recorded = Date.parse(info(child)['format-specific'].data.parent.timestamp);
      assert.equal(recorded, Math.floor(statSync(parent).mtimeMs / 1000) * 1000, `${child} records ${parent}'s time`);
    }
    for (const p of chain) ok(vdisk('check', p));
    // Again: nothing left to do, nothing written.
    const mtimes = chain.map((p) => statSync(p).mtimeMs);
    const again = vdisk('resize', '--chain', top, '20M');
    ok(again);
    assert.equal((again.stdout.match(/already 20971520 bytes/g) ?? []).length, 3);
    assert.deepEqual(chain.map((p) => statSync(p).mtimeMs), mtimes);
  } finally {
    cleanup();
  }
});

test('resize --chain grows a VHDX chain of three: DataWriteGuids and parent linkages stay valid; libvhdi and the spec reader read the model', async (t) => {
  if (!requireTool(t, 'pyvhdi')) return;
  const { dir, cleanup } = tempDir();
  try {
    const chain = makeChain(dir, 'vhdx');
    const [top, , base] = chain;
    const old = await readWholeDisk(top, { readOnly: true });
    assert.equal(pyvhdiDigest(chain).digest, sha256(old));
    const guids = chain.map((p) => info(p)['format-specific'].data['data-write-guid']);
    ok(vdisk('resize', '--chain', top, '20M'));
    const model = grownModel(old, 20 * MiB);
    for (const p of chain) assert.equal(info(p)['virtual-size'], 20 * MiB, p);
    assert.deepEqual(chain.map((p) => info(p)['format-specific'].data['data-write-guid']), guids, 'a grow changes no DataWriteGuid');
    assert.equal(sha256(await readWholeDisk(top, { readOnly: true })), sha256(model));
    assert.deepEqual(pyvhdiDigest(chain), { digest: sha256(model), size: 20 * MiB });
    assert.deepEqual(vhdxReaderDigest(chain), { digest: sha256(model), size: 20 * MiB }, 'the specification\'s reader (checks each parent_linkage too)');
    for (const p of chain) ok(vdisk('check', p));
    // A plain resize of the base alone keeps the chain opening too (VHDX children may be smaller than their parent).
    ok(vdisk('resize', base, '24M'));
    assert.equal(sha256(await readWholeDisk(top, { readOnly: true })), sha256(model));
  } finally {
    cleanup();
  }
});

test('resize --chain grows a mixed chain (add-cow over VHD) and refuses what it does not do before writing anything', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const base = join(dir, 'base.vhd');
    const top = join(dir, 'top.add-cow');
    ok(vdisk('create', '-f', 'vhd', '-o', 'force_size=on', base, '8M'));
    ok(vdisk('io', '-c', 'write -P 0x41 7M 1M', base));
    ok(vdisk('create', '-f', 'add-cow', '-b', 'base.vhd', '-F', 'vhd', top));
    ok(vdisk('io', '-c', 'write -P 0x42 0 4096', top));
    const old = await readWholeDisk(top, { readOnly: true });
    const mtimes = [top, base].map((p) => statSync(p).mtimeMs);
    // Refused, nothing written: a relative size, --shrink, a size below a layer's.
    let r = vdisk('resize', '--chain', top, '+4M');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /absolute size/);
    r = vdisk('resize', '--chain', '--shrink', top, '4M');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /only grows/);
    r = vdisk('resize', '--chain', top, '4M');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /only grows a chain/);
    assert.deepEqual([top, base].map((p) => statSync(p).mtimeMs), mtimes);
    ok(vdisk('resize', '--chain', top, '16M'));
    assert.equal(info(top)['virtual-size'], 16 * MiB);
    assert.equal(info(base)['virtual-size'], 16 * MiB);
    assert.equal(sha256(await readWholeDisk(top, { readOnly: true })), sha256(grownModel(old, 16 * MiB)));
  } finally {
    cleanup();
  }
});

/**
 * Crash `resize --chain` at every mutating operation (write, truncate,
 * flush) across the chain's files; for what the disks could hold after
 * each crash (only what was flushed, everything, a random part of the rest
 * in random order): every layer opens on its own, the same request run again
 * finishes the job, and the whole chain then opens (strictly) and reads the
 * old disk followed by zeros.
 */
async function crashEveryWrite(fmt: 'vhd' | 'vhdx'): Promise<number> {
  const { dir, cleanup } = tempDir();
  let files: Record<string, Uint8Array>;
  try {
    makeChain(dir, fmt);
    files = Object.fromEntries(['base', 'c1', 'c2'].map((n) => [`/d/${n}.${fmt}`, new Uint8Array(readFileSync(join(dir, `${n}.${fmt}`)))]));
  } finally {
    cleanup();
  }
  const top = `/d/c2.${fmt}`;
  const layers = ['c2', 'c1', 'base'].map((n) => `/d/${n}.${fmt}`);
  // 12 MiB: 6 blocks of 2 MiB where a VHD's BAT holds 4, so the VHD layers' BATs move; the VHDX BATs have room.
  const size = 12 * MiB;
  const clean = await CrashFs.from(files);
  const old = await readWholeDisk(top, { openStore: clean.opener(), readOnly: true });
  const model = sha256(grownModel(old, size));
  await resizeChain({ path: top, size, openStore: clean.opener() });
  const total = clean.used;
  assert.ok(total > 6, `resize --chain made ${total} mutating operations`);
  for (let k = 0; k < total; k++) {
    const fs = await CrashFs.from(files);
    fs.budget = k;
    await assert.rejects(resizeChain({ path: top, size, openStore: fs.opener() }), (e) => e instanceof BlockError && /injected crash/.test(e.message));
    for (const [mode, seed] of [['durable', 1], ['all', 1], ['subset', k + 1]] as const) {
      const after = await fs.clone(mode, seed);
      const what = `crash at operation ${k} of ${total}, ${mode} ${seed}`;
      for (const l of layers) {
        const img = await openLayer(l, { openStore: after.opener(), readOnly: true });
        await img.close();
      }
      const r = await resizeChain({ path: top, size, openStore: after.opener() });
      assert.deepEqual(r.layers.map((l) => l.newSize), [size, size, size], what);
      const chain = await openChain(top, { openStore: after.opener(), readOnly: true });
      try {
        assert.deepEqual(chain.layers.map((l) => l.size), [size, size, size], what);
        const disk = new Uint8Array(size);
        await chain.read(0, disk);
        assert.equal(sha256(disk), model, what);
      } finally {
        await chain.close();
      }
    }
  }
  return total;
}

test('resize --chain of a VHD chain crashed at every write: each layer opens, the same command finishes the job', async (t) => {
  t.diagnostic(`${await crashEveryWrite('vhd')} crash points`);
});

test('resize --chain of a VHDX chain crashed at every write: each layer opens, the same command finishes the job', async (t) => {
  t.diagnostic(`${await crashEveryWrite('vhdx')} crash points`);
});

test('a VHD chain half grown (base grown alone) is refused by the ordinary open, and resize --chain finishes it', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const chain = makeChain(dir, 'vhd');
    const [top, , base] = chain;
    const old = await readWholeDisk(top, { readOnly: true });
    ok(vdisk('resize', base, '12M'));
    await assert.rejects(openChain(top, { readOnly: true }), (e) => e instanceof BlockError && e.kind === 'mismatch' && /resize --chain/.test(e.message));
    const r = await resizeChain({ path: top, size: 12 * MiB });
    assert.deepEqual(r.layers.map((l) => [l.oldSize, l.newSize]), [[8 * MiB, 12 * MiB], [8 * MiB, 12 * MiB], [12 * MiB, 12 * MiB]]);
    assert.equal(sha256(await readWholeDisk(top, { readOnly: true })), sha256(grownModel(old, 12 * MiB)));
  } finally {
    cleanup();
  }
});
