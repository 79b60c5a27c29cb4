import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { openChain, type ChainOpenOptions } from '../src/chain/open.js';
import { BlockError } from '../src/core/errors.js';
import { escapeControl } from '../src/core/escape.js';
import { openFileStore } from '../src/io/file-store.js';
import type { StoreOpener } from '../src/io/store.js';
import { createImage } from '../src/ops/create.js';
import { rebaseImage } from '../src/ops/rebase.js';
import { vdisk } from './helpers/cli.js';
import { sha256, tempDir } from './helpers/oracle.js';

/*
 * Untrusted images are contained (docs/security.md): names recorded in an
 * image lead only into its folder (or folders the user allows), only
 * regular files are opened, a backing whose format is not recorded is never
 * taken for raw by probing. Each case builds its image with vdisk itself
 * (create, rebase -u, then moving files or patching an add-cow name),
 * with victim files outside the image's folder whose bytes and sizes are
 * checked before and after, and records every file vdisk opens.
 */

const MiB = 1 << 20;
const SIZE = 2 * MiB;

interface Victim {
  path: string;
  hash: string;
  size: number;
}

function victim(path: string, bytes: Uint8Array): Victim {
  writeFileSync(path, bytes);
  return { path, hash: sha256(bytes), size: bytes.length };
}

function assertIntact(v: Victim): void {
  const now = readFileSync(v.path);
  assert.equal(now.length, v.size, `${v.path}: size unchanged`);
  assert.equal(sha256(now), v.hash, `${v.path}: bytes unchanged`);
}

/** An opener that records every path opened (real paths, links resolved). */
function recording(): { openStore: StoreOpener; opened: string[] } {
  const opened: string[] = [];
  return {
    opened,
    openStore: async (path, o) => {
      const s = await openFileStore(path, o);
      opened.push(realpathSync(path));
      return s;
    },
  };
}

function assertOpenedOnlyInside(opened: string[], folder: string): void {
  const root = realpathSync(folder);
  for (const p of opened) assert.ok(!relative(root, p).startsWith('..'), `opened ${p}, outside ${root}`);
}

const refused = (kind: BlockError['kind'], match?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof BlockError, String(e));
  assert.equal(e.kind, kind, e.message);
  if (match) assert.match(e.message, match);
  return true;
};

/** Open `path`'s chain with a recording opener: it must be refused, and nothing outside `folder` opened. */
async function assertRefused(path: string, folder: string, kind: BlockError['kind'], match?: RegExp, options: ChainOpenOptions = {}): Promise<void> {
  const r = recording();
  await assert.rejects(openChain(path, { ...options, openStore: r.openStore }), refused(kind, match));
  await assert.rejects(openChain(path, { ...options, openStore: r.openStore, readOnly: true }), refused(kind, match));
  assertOpenedOnlyInside(r.opened, folder);
}

/** Write `name` NUL-terminated into an add-cow header field (backing name at 12, image file name at 1036; docs/formats/add-cow.md). */
function patchAddCowName(path: string, field: 'backing' | 'image', name: string): void {
  const b = readFileSync(path);
  const at = field === 'backing' ? 12 : 1036;
  b.fill(0, at, at + 1024);
  b.set(Buffer.from(name + '\0', 'utf8'), at);
  writeFileSync(path, b);
}

function pattern(size: number, seed: number): Uint8Array {
  return new Uint8Array(size).map((_, i) => (i * 31 + seed) & 0xff);
}

test('add-cow image file leading out (absolute, .., link): refused by open, io and resize --shrink; the victim keeps its bytes and size', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'img');
    mkdirSync(img);
    const v = victim(join(dir, 'victim.raw'), pattern(SIZE, 1));
    const top = join(img, 'top.add-cow');
    await createImage({ path: top, format: 'add-cow', size: SIZE, options: { image_file: 'data.raw' } });
    for (const name of [v.path, '../victim.raw', 'link.raw']) {
      if (name === 'link.raw') symlinkSync(v.path, join(img, 'link.raw'));
      patchAddCowName(top, 'image', name);
      await assertRefused(top, img, 'invalid-argument', /add-cow image file .* leads out of the image's folder/);
      let r = vdisk('io', '-c', 'write -P 0x66 0 64k', top);
      assert.equal(r.status, 1, r.stdout);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /leads out of the image's folder.*top\.add-cow/);
      r = vdisk('resize', '--shrink', top, '512k');
      assert.equal(r.status, 1, r.stdout);
      assertIntact(v);
    }
    // Allowed by the user: the same image opens (and may write there).
    const c = await openChain(top, { allowPaths: [dir], readOnly: true });
    assert.equal(c.size, SIZE);
    await c.close();
  } finally {
    cleanup();
  }
});

test('add-cow backing leading out (absolute, .., link, /proc/self/mem, /etc/passwd): refused; convert hands out nothing', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'img');
    mkdirSync(img);
    const v = victim(join(dir, 'secret.raw'), pattern(SIZE, 2));
    const top = join(img, 'top.add-cow');
    await createImage({ path: top, format: 'add-cow', size: SIZE, options: { image_file: 'data.raw' } });
    for (const name of [v.path, '../secret.raw', '../../../../../../../etc/passwd', 'link.raw', '/proc/self/mem']) {
      if (name === 'link.raw') symlinkSync(v.path, join(img, 'link.raw'));
      patchAddCowName(top, 'backing', name);
      // With --backing-as raw too: the user's word on the format does not widen where names lead.
      await assertRefused(top, img, 'invalid-argument', /backing file .* leads out of the image's folder/, { backingFormats: ['raw'] });
      const out = join(dir, 'out.raw');
      const r = vdisk('convert', '--backing-as', 'raw', '-O', 'raw', top, out);
      assert.equal(r.status, 1, r.stdout);
      assert.match(r.stderr, /leads out of the image's folder/);
      assert.ok(!existsSync(out) || !readFileSync(out).includes(Buffer.from(pattern(64, 2))), 'no victim bytes in the output');
      rmSync(out, { force: true });
      assertIntact(v);
    }
  } finally {
    cleanup();
  }
});

test('add-cow backing with no recorded format: probed for signatures, never taken for raw unless the user says so', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const base = join(dir, 'base.raw');
    writeFileSync(base, pattern(SIZE, 3));
    const top = join(dir, 'top.add-cow');
    await createImage({ path: top, format: 'add-cow', options: { image_file: 'data.raw' }, backing: { path: 'base.raw', format: 'raw' } });
    await assert.rejects(openChain(top, { readOnly: true }), refused('invalid-argument', /no recorded format .* --backing-as raw/));
    let r = vdisk('info', '--backing-chain', top);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^vdisk: backing file 'base\.raw' has no recorded format.*\(.*top\.add-cow\)$/m);
    r = vdisk('info', '--backing-chain', '--backing-as', 'raw', top);
    assert.equal(r.status, 0, r.stderr);
    const c = await openChain(top, { readOnly: true, backingFormats: ['raw'] });
    assert.deepEqual(c.layers.map((l) => l.format), ['add-cow', 'raw']);
    await c.close();

    // CVE-2008-2004: a guest writes a VHD footer into its raw disk. Said to be raw, it stays raw.
    const vhd = join(dir, 'looks.vhd');
    await createImage({ path: vhd, format: 'vhd', size: SIZE, options: { subformat: 'fixed' } });
    rmSync(base);
    renameSync(vhd, base);
    const c2 = await openChain(top, { readOnly: true, backingFormats: ['raw'] });
    assert.deepEqual(c2.layers.map((l) => l.format), ['add-cow', 'raw']);
    assert.equal(c2.layers[1].size, statSync(base).size, 'the footer is data of the raw disk');
    await c2.close();
    // Unsaid, a signature is still found (VHD), as for qemu-img without backing_fmt.
    const c3 = await openChain(top, { readOnly: true });
    assert.deepEqual(c3.layers.map((l) => l.format), ['add-cow', 'vhd']);
    await c3.close();
  } finally {
    cleanup();
  }
});

test('FIFO, /dev/zero and directories named by an image are refused at once, even inside an allowed folder', { timeout: 60_000 }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'img');
    mkdirSync(img);
    const top = join(img, 'top.add-cow');
    await createImage({ path: top, format: 'add-cow', size: SIZE, options: { image_file: 'data.raw' } });
    const fifo = join(img, 'pipe');
    execFileSync('mkfifo', [fifo]);
    symlinkSync('/dev/zero', join(img, 'zero'));
    mkdirSync(join(img, 'sub'));
    for (const field of ['image', 'backing'] as const) {
      for (const name of ['pipe', 'zero', 'sub']) {
        patchAddCowName(top, field, name);
        // /dev allowed: the check that remains is the one on the opened file.
        await assertRefused(top, img, 'invalid-argument', /FIFO|character device|directory/, { allowPaths: ['/dev'], backingFormats: ['raw'] });
      }
      patchAddCowName(top, field, field === 'image' ? 'data.raw' : '');
    }
    // A VHD parent replaced by a FIFO: the parent name is W2ru/W2ku/unicode name, all leading to it.
    const parent = join(img, 'p.vhd');
    const child = join(img, 'c.vhd');
    await createImage({ path: parent, format: 'vhd', size: SIZE });
    await createImage({ path: child, format: 'vhd', backing: { path: 'p.vhd', format: 'vhd' } });
    rmSync(parent);
    execFileSync('mkfifo', [parent]);
    await assertRefused(child, img, 'invalid-argument', /FIFO/);
    const r = vdisk('info', '--backing-chain', child);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /is a FIFO, not a regular file/);
  } finally {
    cleanup();
  }
});

/**
 * x/img/child.FMT made by vdisk over x/img/own.FMT, then pointed by rebase -u
 * at a victim with data in x/out/: the child records the victim by a
 * relative name (..\out\victim.FMT) and an absolute one.
 */
async function childOfVictim(dir: string, fmt: 'vhd' | 'vhdx'): Promise<{ x: string; img: string; out: string; child: string; before: Victim }> {
  const x = join(dir, 'x');
  const img = join(x, 'img');
  const out = join(x, 'out');
  mkdirSync(img, { recursive: true });
  mkdirSync(out);
  const v = join(out, `victim.${fmt}`);
  await createImage({ path: v, format: fmt, size: SIZE });
  const c0 = await openChain(v);
  await c0.write(0, pattern(64 * 1024, 4));
  await c0.close();
  const child = join(img, `child.${fmt}`);
  await createImage({ path: join(img, `own.${fmt}`), format: fmt, size: SIZE });
  await createImage({ path: child, format: fmt, backing: { path: `own.${fmt}`, format: fmt } });
  await rebaseImage({ path: child, backing: { path: v, format: fmt }, unsafe: true });
  return { x, img, out, child, before: { hash: sha256(readFileSync(v)), size: statSync(v).size, path: v } };
}

/**
 * Each recorded name alone leads out: x moves to y, so the absolute name
 * names nothing and the relative one leads out; then the child is pointed
 * at the victim's new absolute path and moved one level deeper, where the
 * relative name names nothing. Returns y and the child's folder there.
 */
async function refuseEachNameAlone(dir: string, x: string, fmt: 'vhd' | 'vhdx'): Promise<{ y: string; deepDir: string }> {
  const y = join(dir, 'y');
  renameSync(x, y);
  const moved = join(y, 'img', `child.${fmt}`);
  await assertRefused(moved, join(y, 'img'), 'invalid-argument', new RegExp(`'\\.\\.\\\\out\\\\victim\\.${fmt}' leads out`));
  await rebaseImage({ path: moved, backing: { path: join(y, 'out', `victim.${fmt}`), format: fmt }, unsafe: true });
  const deepDir = join(y, 'img', 'deep');
  mkdirSync(deepDir);
  renameSync(moved, join(deepDir, `child.${fmt}`));
  await assertRefused(join(deepDir, `child.${fmt}`), deepDir, 'invalid-argument', /leads out of the image's folder/);
  return { y, deepDir };
}

test('VHD parent names leading out: W2ku (absolute), W2ru (..), the unicode name through a link; the victim is never opened', async () => {
  const { dir, cleanup } = tempDir();
  try {
    // rebase -u records the victim: W2ku = its absolute path, W2ru = ..\out\victim.vhd, unicode name = victim.vhd.
    const { x, img, out, child, before } = await childOfVictim(dir, 'vhd');
    await assertRefused(child, img, 'invalid-argument', /backing file .* leads out of the image's folder/);
    const r = vdisk('info', '--backing-chain', child);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /leads out of the image's folder/);
    // Allowed, the same chain opens: the refusal is containment, not a broken image.
    const ok = await openChain(child, { allowPaths: [out], readOnly: true });
    assert.equal(ok.layers.length, 2);
    await ok.close();
    // W2ru alone, then W2ku alone.
    await refuseEachNameAlone(dir, x, 'vhd');
    // The unicode name alone (victim.vhd, in the child's folder) is a link leading out: the folders move
    // again, so that neither W2ru nor W2ku names a file.
    const z = join(dir, 'z');
    renameSync(join(dir, 'y'), z);
    symlinkSync(join(z, 'out', 'victim.vhd'), join(z, 'img', 'deep', 'victim.vhd'));
    await assertRefused(join(z, 'img', 'deep', 'child.vhd'), join(z, 'img', 'deep'), 'invalid-argument', /'victim\.vhd' leads out/);
    assertIntact({ ...before, path: join(z, 'out', 'victim.vhd') });
  } finally {
    cleanup();
  }
});

test('VHDX parent locator leading out: relative_path (..) and absolute_win32_path; a link in the folder', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { x, img, child, before } = await childOfVictim(dir, 'vhdx');
    // Both relative_path (..\out\victim.vhdx) and absolute_win32_path lead out.
    await assertRefused(child, img, 'invalid-argument', /leads out of the image's folder/);
    // relative_path alone, then absolute_win32_path alone.
    const { y } = await refuseEachNameAlone(dir, x, 'vhdx');
    assertIntact({ ...before, path: join(y, 'out', 'victim.vhdx') });
    // A parent inside the folder that is a link leading out.
    const c2 = join(y, 'img', 'c2.vhdx');
    const own2 = join(y, 'img', 'own2.vhdx');
    await createImage({ path: own2, format: 'vhdx', size: SIZE });
    await createImage({ path: c2, format: 'vhdx', backing: { path: 'own2.vhdx', format: 'vhdx' } });
    rmSync(own2);
    symlinkSync(join(y, 'out', 'victim.vhdx'), own2);
    await assertRefused(c2, join(y, 'img'), 'invalid-argument', /leads out of the image's folder/);
  } finally {
    cleanup();
  }
});

test('a name inside the folder (and a subfolder) still opens; the add-cow image file is read-only when the add-cow is', async () => {
  const { dir, cleanup } = tempDir();
  try {
    mkdirSync(join(dir, 'sub'));
    const base = join(dir, 'sub', 'base.vhd');
    await createImage({ path: base, format: 'vhd', size: SIZE });
    const top = join(dir, 'top.add-cow');
    await createImage({ path: top, format: 'add-cow', options: { image_file: 'sub/data.raw' }, backing: { path: 'sub/base.vhd' } });
    for (const readOnly of [true, false]) {
      const modes = new Map<string, boolean>();
      const openStore: StoreOpener = async (p, o) => {
        modes.set(p, Boolean(o.readOnly));
        return openFileStore(p, o);
      };
      const c = await openChain(top, { openStore, readOnly });
      assert.deepEqual(c.layers.map((l) => l.format), ['add-cow', 'vhd']);
      await c.close();
      assert.equal(modes.get(join(dir, 'sub', 'data.raw')), readOnly, `image file read-only = ${readOnly}`);
      assert.equal(modes.get(base), true, 'backing read-only');
    }
  } finally {
    cleanup();
  }
});

test('control characters in recorded names are escaped in info and errors; JSON keeps the exact name', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const top = join(dir, 'top.add-cow');
    await createImage({ path: top, format: 'add-cow', size: SIZE, options: { image_file: 'data.raw' } });
    const name = 'x\nimage: forged.vhd\x1b[2J\u202e';
    patchAddCowName(top, 'backing', name);
    let r = vdisk('info', top);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(!r.stdout.includes('\nimage: forged'), r.stdout);
    assert.ok(!r.stdout.includes('\x1b'), 'no escape sequence reaches the terminal');
    assert.match(r.stdout, /^backing file: x\\nimage: forged\.vhd\\x1b\[2J\\u202e/m);
    r = vdisk('info', '--output=json', top);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout)['backing-filename'], name);
    assert.ok(!/[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/.test(r.stdout.replaceAll('\n', '')), 'JSON text carries escapes only');
    r = vdisk('info', '--backing-chain', top);
    assert.equal(r.status, 1);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(r.stderr.includes('x\\nimage: forged.vhd\\x1b[2J\\u202e'), r.stderr);
    assert.equal(escapeControl('a\tb\u0085c\\d'), 'a\\tb\\x85c\\d');
  } finally {
    cleanup();
  }
});

test("the user's own names are not refused: create and convert -o image_file= in another folder; later opens need --allow-path", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    mkdirSync(a);
    mkdirSync(b);
    const top = join(a, 'top.add-cow');
    let r = vdisk('create', '-f', 'add-cow', '-o', 'image_file=../b/x.raw', top, '1M');
    assert.equal(r.status, 0, r.stderr);
    assert.ok(existsSync(join(b, 'x.raw')));
    r = vdisk('convert', '--allow-path', b, '-O', 'add-cow', '-o', 'image_file=../b/y.raw', top, join(a, 'copy.add-cow'));
    assert.equal(r.status, 0, r.stderr);
    // An image read later is an image like any other: its names are checked.
    r = vdisk('io', '-c', 'write -P 0x5a 0 4k', top);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /add-cow image file '\.\.\/b\/x\.raw' leads out of the image's folder/);
    r = vdisk('io', '--allow-path', b, '-c', 'write -P 0x5a 0 4k', '-c', 'read -P 0x5a 0 4k', top);
    assert.equal(r.status, 0, r.stderr);
  } finally {
    cleanup();
  }
});
