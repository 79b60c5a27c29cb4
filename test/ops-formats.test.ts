import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { vdisk } from './helpers/cli.js';
import { pyvhdiDigest, qemuDigest, qemuImg, qemuIo, requireTool, run, tempDir, vdiskDigest } from './helpers/oracle.js';

/*
 * commit, rebase, resize and check on VHD and VHDX files made by qemu-img,
 * results read back by qemu-img (VHDX) and libvhdi (both, chains included).
 */

const MiB = 1 << 20;
const ok = (r: { status: number; stderr: string }) => assert.equal(r.status, 0, r.stderr);

for (const [fmt, qfmt] of [['vhd', 'vpc'], ['vhdx', 'vhdx']] as const) {
  test(`${fmt}: commit and rebase a child made by vdisk over qemu-img parents`, async (t) => {
    if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
    const { dir, cleanup } = tempDir();
    try {
      const a = join(dir, `a.${fmt}`);
      const b = join(dir, `b.${fmt}`);
      const opts = fmt === 'vhd' ? ['-o', 'subformat=dynamic,force_size=on'] : [];
      qemuImg('create', '-f', qfmt, ...opts, a, '8M');
      qemuImg('create', '-f', qfmt, ...opts, b, '8M');
      qemuIo(qfmt, a, 'write -P 0x11 0 4M', 'write -P 0x12 6M 1M');
      qemuIo(qfmt, b, 'write -P 0x11 0 2M', 'write -P 0x23 5M 2M');
      const child = join(dir, `c.${fmt}`);
      ok(vdisk('create', '-f', fmt, '-b', `a.${fmt}`, child));
      ok(vdisk('io', '-c', 'write -P 0x44 1M 512k', '-c', 'write -z 3M 4096', '-c', 'write -P 0x45 6995968 8192', child));
      const before = (await vdiskDigest(child)).digest;
      assert.equal(pyvhdiDigest([child, a]).digest, before);
      // Safe rebase onto b: same content, read by libvhdi over the new parent.
      let r = vdisk('rebase', '-b', `b.${fmt}`, child);
      ok(r);
      assert.equal(JSON.parse(vdisk('info', '--output=json', child).stdout)['backing-filename'].replace(/^\.[\\/]/, ''), `b.${fmt}`);
      assert.equal((await vdiskDigest(child)).digest, before);
      assert.equal(pyvhdiDigest([child, b]).digest, before);
      // A backing of another size: refused for VHD (the specification ties a child's size to its parent's), nothing changes;
      // a VHDX child may have another size than its parent (issue 17): the disk stays the same over it, then goes back to b.
      const big = join(dir, `big.${fmt}`);
      qemuImg('create', '-f', qfmt, ...opts, big, '16M');
      r = vdisk('rebase', '-b', `big.${fmt}`, child);
      if (fmt === 'vhd') {
        assert.equal(r.status, 1);
        assert.match(r.stderr, /same size/);
      } else {
        ok(r);
        assert.equal(pyvhdiDigest([child, big]).digest, before);
        ok(vdisk('rebase', '-b', `b.${fmt}`, child));
      }
      assert.equal((await vdiskDigest(child)).digest, before);
      // Commit into b: b alone now shows the disk.
      r = vdisk('commit', child);
      ok(r);
      assert.equal((await vdiskDigest(child)).digest, before);
      assert.equal((await vdiskDigest(b)).digest, before);
      assert.equal(pyvhdiDigest([b]).digest, before);
      assert.equal(pyvhdiDigest([child, b]).digest, before);
      if (fmt === 'vhdx') {
        const raw = join(dir, 'b.raw');
        ok(vdisk('convert', '-O', 'raw', child, raw));
        assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'vhdx', raw, b], { allowFail: true }).status, 0);
        assert.equal(run('qemu-img', ['check', '-f', 'vhdx', b], { allowFail: true }).status, 0);
      }
      ok(vdisk('check', b));
      ok(vdisk('check', child));
    } finally {
      cleanup();
    }
  });

  test(`${fmt}: resize grows and (VHDX) shrinks a qemu-img image; limits and --shrink enforced`, async (t) => {
    if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
    const { dir, cleanup } = tempDir();
    try {
      const img = join(dir, `r.${fmt}`);
      const opts = fmt === 'vhd' ? ['-o', 'subformat=dynamic,force_size=on'] : [];
      qemuImg('create', '-f', qfmt, ...opts, img, '8M');
      qemuIo(qfmt, img, 'write -P 0x31 0 8M');
      const before = await vdiskDigest(img);
      // Grow far enough that the BAT must grow (VHD: 2 MiB blocks, a 512-byte BAT sector holds 128).
      let r = vdisk('resize', img, fmt === 'vhd' ? '300M' : '3G');
      ok(r);
      const grown = await vdiskDigest(img);
      assert.equal(grown.size, fmt === 'vhd' ? 300 * MiB : 3 * 1024 * MiB);
      // libvhdi takes a VHD's size from the footer's original size, which a resize leaves as created
      // (spec: "size at creation time"); qemu-img reads the current size of a qemu-made file.
      if (fmt === 'vhdx') assert.equal(pyvhdiDigest([img]).digest, grown.digest);
      assert.equal((await qemuDigest(img, qfmt)).digest, grown.digest);
      const head = join(dir, 'head.raw');
      ok(vdisk('convert', '-O', 'raw', img, head));
      qemuIo('raw', head, 'read -P 0x31 0 8M', 'read -P 0 8M 8M');
      r = vdisk('resize', img, '8M');
      assert.equal(r.status, 1);
      assert.match(r.stderr, /--shrink/);
      r = vdisk('resize', img, fmt === 'vhd' ? '2041G' : '65T');
      assert.equal(r.status, 1);
      assert.equal((await vdiskDigest(img)).digest, grown.digest);
      if (fmt === 'vhdx') {
        assert.equal(run('qemu-img', ['check', '-f', 'vhdx', img], { allowFail: true }).status, 0);
        r = vdisk('resize', '--shrink', img, '8M');
        ok(r);
        assert.equal((await vdiskDigest(img)).digest, before.digest);
        assert.equal(pyvhdiDigest([img]).digest, before.digest);
      }
      ok(vdisk('check', img));
    } finally {
      cleanup();
    }
  });
}
