import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openChain } from '../src/chain/open.js';
import type { Chain } from '../src/chain/chain.js';
import { isBlockError } from '../src/core/errors.js';
import { createImage } from '../src/ops/create.js';
import { commitImage } from '../src/ops/commit.js';
import { rebaseImage } from '../src/ops/rebase.js';
import { VDISK_BIN, vdisk } from './helpers/cli.js';
import { requireTool, run, tempDir } from './helpers/oracle.js';

/**
 * Image locking (src/io/lock.ts): QEMU's byte-range scheme, so vdisk and
 * QEMU keep out of each other's way, and two vdisk opens (two processes, or
 * two opens in one process) too. Holders in other processes are started
 * and waited for until they say they hold the image (qemu-nbd --fork
 * returns once it serves; `vdisk serve` prints its address), never timed.
 */

const MiB = 1 << 20;
const FORMATS = ['raw', 'vhd', 'vhdx', 'add-cow'] as const;
/** QEMU's name for each format; add-cow has none (QEMU 7.2): its image file is raw. */
const QEMU_FORMAT: Record<string, string> = { raw: 'raw', vhd: 'vpc', vhdx: 'vhdx' };

async function makeImage(dir: string, format: string, name = `disk.${format}`): Promise<string> {
  const path = join(dir, name);
  await createImage({ path, format, size: 4 * MiB });
  return path;
}

async function rejectsBusy(p: Promise<unknown>, path: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isBlockError(e, 'busy'), `expected busy, got ${String(e)}`);
    assert.match(e.message, /in use by another process/);
    assert.equal(e.context.path, path);
    return true;
  });
}

for (const format of FORMATS) {
  test(`${format}: two opens in one process conflict as QEMU's permissions say`, async (t) => {
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const path = await makeImage(dir, format);
    const writer = await openChain(path);
    try {
      await rejectsBusy(openChain(path), path); // a second writer
      await rejectsBusy(openChain(path, { readOnly: true }), path); // a reader would see half-done writes
      const shared = await openChain(path, { readOnly: true, forceShare: true }); // -U: the reader's risk
      await shared.close();
      await writer.write(0, new Uint8Array(512).fill(7));
    } finally {
      await writer.close();
    }
    // Readers share with readers, and keep writers out.
    const r1 = await openChain(path, { readOnly: true });
    const r2 = await openChain(path, { readOnly: true });
    try {
      await rejectsBusy(openChain(path), path);
    } finally {
      await r1.close();
      await r2.close();
    }
    // Closing released everything: the data is there, and a writer may open.
    const again = await openChain(path);
    const got = new Uint8Array(512);
    await again.read(0, got);
    await again.close();
    assert.deepEqual(got, new Uint8Array(512).fill(7));
  });
}

test('add-cow: its image file is locked with it', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const path = await makeImage(dir, 'add-cow');
  const imageFile = `${path}.raw`;
  readFileSync(imageFile); // the name create gives it (fails loudly if that changes)
  const writer = await openChain(path);
  try {
    await rejectsBusy(openChain(imageFile, { format: 'raw' }), imageFile);
    await rejectsBusy(openChain(imageFile, { format: 'raw', readOnly: true }), imageFile);
  } finally {
    await writer.close();
  }
  const rawWriter = await openChain(imageFile, { format: 'raw' });
  try {
    await rejectsBusy(openChain(path, { readOnly: true }), imageFile);
    const shared = await openChain(path, { readOnly: true, forceShare: true });
    await shared.close();
  } finally {
    await rawWriter.close();
  }
});

test('backing files are locked for reading while a child is open', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const base = await makeImage(dir, 'vhd', 'base.vhd');
  const child = join(dir, 'child.vhd');
  await createImage({ path: child, format: 'vhd', backing: { path: base, format: 'vhd' } });
  const chain = await openChain(child);
  try {
    await rejectsBusy(openChain(base), base);
    const reader = await openChain(base, { readOnly: true });
    await reader.close();
  } finally {
    await chain.close();
  }
  const writer = await openChain(base);
  try {
    // The child's open would read a backing file someone is writing.
    await rejectsBusy(openChain(child), base);
  } finally {
    await writer.close();
  }
});

test('-U is for read-only opens only, as qemu-img', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const path = await makeImage(dir, 'vhd');
  await assert.rejects(openChain(path, { forceShare: true }), (e: unknown) => isBlockError(e, 'invalid-argument') && /read-only/.test(e.message));
  const r = vdisk('io', '-U', '-c', 'write 0 512', path);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /force-share \(-U\) can only be used with read-only images/);
});

test('commit and rebase take the write lock of the layers they change', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const base = await makeImage(dir, 'vhd', 'base.vhd');
  const top = join(dir, 'top.vhd');
  await createImage({ path: top, format: 'vhd', backing: { path: base, format: 'vhd' } });
  const w = await openChain(top);
  await w.write(0, new Uint8Array(4096).fill(9));
  await w.close();
  const baseBytes = readFileSync(base);

  // commit writes the base: a reader of the base keeps it out, and nothing changes.
  let reader: Chain = await openChain(base, { readOnly: true });
  try {
    await rejectsBusy(commitImage({ path: top }), base);
  } finally {
    await reader.close();
  }
  assert.deepEqual(readFileSync(base), baseBytes);

  // rebase writes the top: a reader of the top keeps it out.
  const other = await makeImage(dir, 'vhd', 'other.vhd');
  const topBytes = readFileSync(top);
  reader = await openChain(top, { readOnly: true });
  try {
    await rejectsBusy(rebaseImage({ path: top, backing: { path: other, format: 'vhd' } }), top);
  } finally {
    await reader.close();
  }
  assert.deepEqual(readFileSync(top), topBytes);

  // Unhindered, both run (commit re-reads the base it holds: no conflict with itself).
  await commitImage({ path: top });
  await rebaseImage({ path: top, backing: { path: other, format: 'vhd' } });
});

test('without the native addon, writes are refused unless VDISK_LOCKING=off; reads go on unlocked', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const path = await makeImage(dir, 'vhd');
  // The CLI bundle looks for the addon only beside itself (io/native.ts packageRoot): a copy elsewhere has none.
  mkdirSync(join(dir, 'pkg', 'dist'), { recursive: true });
  const bundle = join(dir, 'pkg', 'dist', 'vdisk.cjs');
  copyFileSync(join(VDISK_BIN, '..', '..', 'dist', 'vdisk.cjs'), bundle);
  const cli = (env: Record<string, string>, ...args: string[]) => run(process.execPath, [bundle, ...args], { allowFail: true, env });
  const before = readFileSync(path);
  let r = cli({}, 'io', '-c', 'write -P 0x11 0 512', path);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /cannot lock the image for writing \(vdisk's native addon is not built.*VDISK_LOCKING=off/);
  assert.deepEqual(readFileSync(path), before);
  r = cli({}, 'io', '-r', '-c', 'read 0 512', path);
  assert.equal(r.status, 0, r.stderr);
  r = cli({ VDISK_LOCKING: 'off' }, 'io', '-c', 'write -P 0x11 0 512', path);
  assert.equal(r.status, 0, r.stderr);
});

/** Start a process and wait until its output shows `ready` (it then holds the image). */
async function holder(t: TestContext, cmd: string, args: string[], ready: RegExp): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => {
    child.kill();
  });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const look = (d: Buffer) => {
      out += d.toString();
      if (ready.test(out)) resolve();
    };
    child.stdout!.on('data', look);
    child.stderr!.on('data', look);
    child.on('exit', (code) => reject(new Error(`${cmd} ${args.join(' ')} exited ${code} before holding the image: ${out}`)));
  });
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill();
  await gone;
}

/** qemu-nbd holding `image` (read-write unless `readOnly`) until the returned stop is called. */
function qemuNbd(t: TestContext, dir: string, format: string, image: string, readOnly = false): () => void {
  const pidFile = join(dir, 'qemu-nbd.pid');
  run('qemu-nbd', ['-f', format, '-k', join(dir, 'q.sock'), '--fork', '--pid-file', pidFile, ...(readOnly ? ['-r'] : []), image]);
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  let stopped = false;
  const kill = () => {
    if (stopped) return;
    stopped = true;
    process.kill(pid);
  };
  t.after(kill);
  return kill;
}

const inUse = /image is in use by another process/;

for (const format of FORMATS) {
  test(`${format}: vdisk and QEMU keep out of each other's way`, async (t) => {
    if (!requireTool(t, 'qemu-nbd') || !requireTool(t, 'qemu-io')) return;
    const { dir, cleanup } = tempDir();
    t.after(cleanup);
    const path = await makeImage(dir, format);
    // QEMU opens what it knows: the add-cow's image file (raw) stands in for add-cow.
    const qemuPath = format === 'add-cow' ? `${path}.raw` : path;
    const qemuFormat = QEMU_FORMAT[format] ?? 'raw';

    // A QEMU writer (qemu-nbd, as a VM would hold it) keeps vdisk's writers and readers out.
    const before = readFileSync(qemuPath);
    const stopNbd = qemuNbd(t, dir, qemuFormat, qemuPath);
    let r = vdisk('io', '-c', 'write -P 0x55 0 512', path);
    assert.notEqual(r.status, 0, 'vdisk wrote an image QEMU has open for writing');
    assert.match(r.stderr, inUse);
    assert.ok(r.stderr.includes(qemuPath), r.stderr);
    r = vdisk('io', '-r', '-c', 'read 0 512', path);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, inUse);
    r = vdisk('io', '-r', '-U', '-c', 'read 0 512', path);
    assert.equal(r.status, 0, r.stderr);
    assert.match(vdisk('info', path).stderr, inUse);
    assert.equal(vdisk('info', '-U', path).status, 0);
    assert.equal(vdisk('compare', '-U', path, path).status, 0);
    stopNbd();
    assert.deepEqual(readFileSync(qemuPath), before);

    // vdisk writing (serve) keeps QEMU's writers and format readers out.
    const serve = await holder(t, process.execPath, [VDISK_BIN, 'serve', '-k', join(dir, 'v.sock'), path], /listening on/);
    let q = run('qemu-io', ['-f', qemuFormat, '-c', 'write -P 0x66 0 512', qemuPath], { allowFail: true });
    assert.notEqual(q.status, 0, 'QEMU wrote an image vdisk has open for writing');
    assert.match(q.stderr, /Failed to get "write" lock/);
    if (format === 'vhd' || format === 'vhdx') {
      // QEMU's format readers refuse to share write: they see vdisk's.
      q = run('qemu-io', ['-r', '-f', qemuFormat, '-c', 'read 0 512', qemuPath], { allowFail: true });
      assert.notEqual(q.status, 0);
      assert.match(q.stderr, /Failed to get shared "write" lock/);
    }
    // And vdisk against vdisk, in two processes.
    r = vdisk('io', '-c', 'write 0 512', path);
    assert.notEqual(r.status, 0, 'two vdisk writers');
    assert.match(r.stderr, inUse);
    await stop(serve);

    // vdisk reading (serve -r) keeps QEMU's writers out, but not QEMU's readers.
    const reader = await holder(t, process.execPath, [VDISK_BIN, 'serve', '-r', '-k', join(dir, 'r.sock'), path], /listening on/);
    q = run('qemu-io', ['-f', qemuFormat, '-c', 'write 0 512', qemuPath], { allowFail: true });
    assert.notEqual(q.status, 0);
    assert.match(q.stderr, /Failed to get "write" lock/);
    run('qemu-io', ['-r', '-f', qemuFormat, '-c', 'read 0 512', qemuPath]);
    await stop(reader);

    // Nothing left held.
    r = vdisk('io', '-c', 'write -P 0x77 0 512', path);
    assert.equal(r.status, 0, r.stderr);
    run('qemu-io', ['-f', qemuFormat, '-c', 'read -P 0x77 0 512', qemuPath]);
  });
}

test('two vdisk writers at once: one is refused, and no written data is lost', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const path = join(dir, 'disk.vhd');
  await createImage({ path, format: 'vhd', size: 64 * MiB });
  // Each writer allocates blocks of its own (VHD: 2 MiB blocks), updating the BAT and footer as it goes.
  const writes = (pattern: number, first: number) => Array.from({ length: 8 }, (_, i) => ['-c', `write -P ${pattern} ${(first + 2 * i) * 2 * MiB} 4096`]).flat();
  const start = (pattern: number, first: number) =>
    new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [VDISK_BIN, 'io', ...writes(pattern, first), path], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('exit', (status) => resolve({ status, stderr }));
    });
  const [a, b] = await Promise.all([start(0xaa, 0), start(0xbb, 1)]);
  for (const [r, pattern, first] of [[a, 0xaa, 0], [b, 0xbb, 1]] as const) {
    if (r.status !== 0) {
      assert.match(r.stderr, inUse); // refused before writing anything
      continue;
    }
    const reads = Array.from({ length: 8 }, (_, i) => ['-c', `read -P ${pattern} ${(first + 2 * i) * 2 * MiB} 4096`]).flat();
    const check = vdisk('io', ...reads, path);
    assert.equal(check.status, 0, `a writer that exited 0 lost its data: ${check.stdout}${check.stderr}`);
  }
});
