import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { openChain } from '../src/chain/open.js';
import { amendImage } from '../src/index.js';
import { BlockError } from '../src/core/errors.js';
import { MemoryFs } from '../src/io/memory-store.js';
import { createImage } from '../src/ops/create.js';
import { imageInfo } from '../src/ops/info.js';
import { CrashFs, chainDigest } from './helpers/ops-fixtures.js';
import { vdisk } from './helpers/cli.js';
import { pyvhdiDigest, qemuImg, requireTool, run, tempDir } from './helpers/oracle.js';
import { rng, randomBytes } from './helpers/random.js';

/*
 * amend -o reset-identity=on (issue 17, item 4): new identifiers, the same
 * disk, crash-safe; children in the folder protect their parent unless
 * --force.
 */

const MiB = 1 << 20;
const ok = (r: { status: number; stderr: string; stdout: string }) => assert.equal(r.status, 0, r.stderr + r.stdout);

/** libvhdi's identifier: the VHD footer's UUID, the VHDX DataWriteGuid. */
function libvhdiId(path: string): string {
  return run('/usr/bin/python3', ['-c', 'import sys, pyvhdi\nf = pyvhdi.file(); f.open(sys.argv[1]); print(f.get_identifier())', path]).stdout.trim();
}

function specific(path: string): Record<string, unknown> {
  const r = vdisk('info', '--output=json', path);
  ok(r);
  return JSON.parse(r.stdout)['format-specific'].data;
}

test('amend -o reset-identity=on: new VHD UUID / VHDX DataWriteGuid and disk id, the same disk (libvhdi, qemu-img)', (t) => {
  if (!requireTool(t, 'pyvhdi') || !requireTool(t, 'qemu-img')) return;
  const d = tempDir();
  try {
    for (const [name, fmt, opts, qfmt] of [
      ['dyn.vhd', 'vhd', 'subformat=dynamic,force_size=on', 'vpc'],
      ['fixed.vhd', 'vhd', 'subformat=fixed,force_size=on', 'vpc'],
      ['dyn.vhdx', 'vhdx', 'subformat=dynamic', 'vhdx'],
      ['fixed.vhdx', 'vhdx', 'subformat=fixed', 'vhdx'],
    ] as const) {
      const img = join(d.dir, name);
      ok(vdisk('create', '-f', fmt, '-o', opts, img, '8M'));
      ok(vdisk('io', '-c', 'write -P 0x5a 1M 3M', '-c', 'write -P 0xa5 7M 4k', img));
      const original = join(d.dir, `orig-${name}`);
      copyFileSync(img, original);
      const idBefore = libvhdiId(img);
      const before = specific(img);
      const digest = pyvhdiDigest([img]);

      const r = vdisk('amend', '-o', 'reset-identity=on', img);
      ok(r);
      const after = specific(img);
      const idAfter = libvhdiId(img);
      assert.notEqual(idAfter, idBefore, `${name}: libvhdi sees a new identifier`);
      if (fmt === 'vhd') {
        assert.notEqual(after.uuid, before.uuid);
        assert.equal(after.uuid, idAfter);
        assert.match(r.stdout, new RegExp(`uuid: ${before.uuid} -> ${after.uuid}`));
      } else {
        assert.notEqual(after['data-write-guid'], before['data-write-guid']);
        assert.notEqual(after['virtual-disk-id'], before['virtual-disk-id']);
        assert.equal(after['data-write-guid'], idAfter);
        assert.match(r.stdout, /virtual-disk-id: .* -> /);
      }
      assert.deepEqual(pyvhdiDigest([img]), digest, `${name}: libvhdi reads the same disk`);
      assert.match(qemuImg('compare', '-f', qfmt, '-F', qfmt, img, original), /Images are identical/);
      ok(vdisk('check', img));
      if (fmt === 'vhdx') run('qemu-img', ['check', '-f', 'vhdx', img]);
    }
    // Formats with no identity, and an amend that asks for nothing, say so.
    const raw = join(d.dir, 'a.raw');
    ok(vdisk('create', '-f', 'raw', raw, '1M'));
    let r = vdisk('amend', '-o', 'reset-identity=on', raw);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /a raw image has no identity to reset/);
    r = vdisk('amend', join(d.dir, 'dyn.vhd'));
    assert.match(r.stderr, /nothing to amend/);
    r = vdisk('amend', '-o', 'size=1M', join(d.dir, 'dyn.vhd'));
    assert.match(r.stderr, /amend has no option 'size' \(options: reset-identity\)/);
    r = vdisk('amend', '-o', 'help');
    ok(r);
    assert.match(r.stdout, /reset-identity=on\|off .*Set-VHD -ResetDiskIdentifier \[default: off\]/);
  } finally {
    d.cleanup();
  }
});

test('amend refuses while an image in the folder records this one as its parent; --force resets and names it; a copy beside its original is free', () => {
  for (const fmt of ['vhd', 'vhdx']) {
    const d = tempDir();
    try {
      const base = join(d.dir, `base.${fmt}`);
      const child = join(d.dir, `child.${fmt}`);
      ok(vdisk('create', '-f', fmt, base, '4M'));
      ok(vdisk('io', '-c', 'write -P 1 0 1M', base));
      ok(vdisk('create', '-f', fmt, '-b', `base.${fmt}`, '-F', fmt, child));
      ok(vdisk('io', '-c', 'write -P 2 2M 4k', child));
      const copy = join(d.dir, `copy.${fmt}`);
      copyFileSync(base, copy);
      // The copy shares the base's id, but the child's recorded name leads to the base: the copy is free to change.
      ok(vdisk('amend', '-o', 'reset-identity=on', copy));
      ok(vdisk('compare', child, child));
      let r = vdisk('amend', '-o', 'reset-identity=on', base);
      assert.equal(r.status, 1);
      assert.match(r.stderr, new RegExp(`1 image in this folder records this one as its parent \\(${child.replace(/[.]/g, '\\.')}\\).*--force`));
      ok(vdisk('info', '--backing-chain', child));
      r = vdisk('amend', '--force', '-o', 'reset-identity=on', base);
      ok(r);
      assert.match(r.stdout, /no longer open over/);
      r = vdisk('info', '--backing-chain', child);
      assert.equal(r.status, 1, 'the child no longer matches its parent');
      assert.match(r.stderr, /is not the one this image was made from/);
      // The fix the message names: record the parent's new identity in the child.
      ok(vdisk('rebase', '-u', '-b', `base.${fmt}`, '-F', fmt, child));
      ok(vdisk('io', '-c', 'read -P 1 0 1M', '-c', 'read -P 2 2M 4k', child));
    } finally {
      d.cleanup();
    }
  }
});

test('crash at every step of a reset: every image opens, shows the same disk, and has the old or the new identity', async () => {
  for (const format of ['vhd', 'vhdx']) {
    const mem = new MemoryFs();
    const openStore = mem.opener();
    const path = `/d/a.${format}`;
    // Small blocks keep the file small: every crash point copies it a few times.
    await createImage({ path, format, size: 2 * MiB, options: format === 'vhd' ? { force_size: 'on', block_size: '512k' } : { block_size: '1M' }, openStore });
    const c = await openChain(path, { openStore });
    await c.write(MiB - 4096, randomBytes(rng(3), 65536));
    await c.close();
    const fs0 = await CrashFs.from({ [path]: mem.files.get(path)!.bytes() });
    const ids = async (fs: CrashFs) => {
      const i = (await imageInfo(path, { openStore: fs.opener() }))[0]['format-specific']!.data;
      return format === 'vhd' ? [i.uuid] : [i['data-write-guid'], i['virtual-disk-id']];
    };
    const digest = await chainDigest(path, { openStore: fs0.opener() });
    const old = await ids(fs0);
    const dry = await fs0.clone();
    dry.used = 0;
    const result = await amendImage({ path, options: { 'reset-identity': 'on' }, openOptions: { openStore: dry.opener() } });
    const neu = await ids(dry);
    assert.deepEqual(result.changes.map((x) => x.new), neu);
    assert.ok(neu.every((v, i) => v !== old[i]));
    const total = dry.used;
    for (let k = 0; k < total; k++) {
      const fs = await fs0.clone();
      fs.used = 0;
      fs.budget = k;
      await assert.rejects(amendImage({ path, options: { 'reset-identity': 'on' }, openOptions: { openStore: fs.opener() } }), (e) => e instanceof BlockError && e.kind === 'io');
      for (const [mode, seed] of [['durable', 1], ['all', 1], ['subset', 1]] as const) {
        const after = await fs.clone(mode, seed + k);
        const what = `${format}: crash after ${k} of ${total} operations (${mode} ${seed})`;
        assert.equal(await chainDigest(path, { openStore: after.opener() }), digest, what);
        const got = await ids(after);
        // Each identifier is whole: its old value or a new one (VHDX: the two change in two steps, each atomic).
        for (const v of got) assert.match(String(v), /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, what);
        if (mode === 'subset') continue;
        // And the image takes a reset again.
        const again = await after.clone();
        await amendImage({ path, options: { 'reset-identity': 'on' }, openOptions: { openStore: again.opener() } });
        assert.equal(await chainDigest(path, { openStore: again.opener() }), digest, `${what}: reset again`);
      }
    }
  }
});
