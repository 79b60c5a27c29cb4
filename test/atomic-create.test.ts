import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, openSync, closeSync, readdirSync, readFileSync, writeFileSync, ftruncateSync, writeSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createImage } from '../src/ops/create.js';
import { convert } from '../src/ops/convert.js';
import { openFileStore } from '../src/io/file-store.js';
import { fileHost } from '../src/io/staging.js';
import { BlockError } from '../src/core/errors.js';
import type { Store, StoreOpener } from '../src/io/store.js';
import { REPO_ROOT } from './helpers/corpus.js';
import { VDISK_BIN, vdisk } from './helpers/cli.js';
import { requireTool, run, sha256File, tempDir } from './helpers/oracle.js';
import { randInt, rng } from './helpers/random.js';

// Issue 16 item 3: create and convert write a new image under a temporary
// name and rename it into place only when complete (io/staging.ts); a
// failure, an interrupt or a full disk leaves nothing behind.

const MiB = 1 << 20;
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
const PTY_SIGNAL = join(REPO_ROOT, 'test', 'oracles', 'pty_signal.py');

/** The folder's entries, sorted (temporary files are hidden: readdir shows them). */
const listing = (dir: string) => readdirSync(dir).sort();

/** A sparse-ish raw file: 1 MiB of random data in every 4 MiB. */
function sparseInput(path: string, size: number, seed: number): void {
  const r = rng(seed);
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    const chunk = Buffer.alloc(MiB);
    for (let o = 0; o < size; o += 4 * MiB) {
      for (let i = 0; i < MiB; i += 4) chunk.writeUInt32LE(randInt(r, 0, 0xffffffff), i);
      writeSync(fd, chunk, 0, MiB, o);
    }
  } finally {
    closeSync(fd);
  }
}

test('SIGINT at random moments of convert -p on a terminal: no target, no temporary file, the cursor and line wrap restored', (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const src = join(dir, 'in.raw');
  sparseInput(src, 256 * MiB, 16);
  const before = listing(dir);
  const r = rng(0x5161);
  const outcomes: number[] = [];
  for (let i = 0; i < 8; i++) {
    // Half the runs count the delay from the start (Node starting, the
    // source opening), half from the bar's first frame (the copy running).
    const wait = i % 2 === 0 ? 'output' : 'start';
    const delay = wait === 'output' ? (i === 0 ? 0 : r() * 0.3) : r() * 0.8;
    const target = join(dir, 'out.vhdx');
    const res = run('/usr/bin/python3', [PTY_SIGNAL, 'SIGINT', wait, delay.toFixed(3), process.execPath, VDISK_BIN, 'convert', '-p', '-O', 'vhdx', src, target]);
    const { exit, out: b64 } = JSON.parse(res.stdout) as { exit: number; out: string };
    const out = Buffer.from(b64, 'base64').toString('latin1');
    const what = `run ${i} (${wait} +${delay.toFixed(3)} s, exit ${exit})`;
    outcomes.push(exit);
    // 0: the copy was complete and renamed into place before the signal was
    // noticed; -2: Node had not yet installed the handler, or had removed it
    // after the rename (default action: killed by SIGINT); 130: interrupted.
    assert.ok([0, 130, -2].includes(exit), `${what}: ${out}`);
    if (existsSync(target)) {
      assert.notEqual(exit, 130, `${what}: an interrupted convert left its target`);
      assert.equal(run('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'vhdx', src, target], { allowFail: true }).status, 0, `${what}: the target is not complete`);
      run('rm', [target]);
    } else {
      assert.notEqual(exit, 0, `${what}: convert succeeded but left no target`);
    }
    assert.deepEqual(listing(dir), before, `${what}: files left behind`);
    // A bar that hid the cursor (ESC[?25l) or turned line wrap off (ESC[?7l) turned them back on afterwards.
    for (const [off, on] of [['\x1b[?25l', '\x1b[?25h'], ['\x1b[?7l', '\x1b[?7h']]) {
      const last = out.lastIndexOf(off);
      if (last >= 0) assert.ok(out.indexOf(on, last) > last, `${what}: terminal left with ${JSON.stringify(off)}: ${JSON.stringify(out.slice(-200))}`);
    }
    if (exit === 130) assert.match(out, /vdisk: interrupted by SIGINT; nothing was written to .*out\.vhdx\r?\n$/, what);
  }
  // The first run is signalled as the bar first shows, mid-copy.
  assert.ok(outcomes.includes(130), `no run was interrupted mid-copy: ${outcomes.join(', ')}`);
  // SIGTERM (kill's default) the same way, as the bar first shows: exit 143.
  const res = run('/usr/bin/python3', [PTY_SIGNAL, 'SIGTERM', 'output', '0', process.execPath, VDISK_BIN, 'convert', '-p', '-O', 'vhd', src, join(dir, 'out.vhd')]);
  const { exit, out: b64 } = JSON.parse(res.stdout) as { exit: number; out: string };
  const out = Buffer.from(b64, 'base64').toString('latin1');
  assert.equal(exit, 143, out);
  assert.match(out, /\x1b\[\?25h\x1b\[\?7h.*\r\nvdisk: interrupted by SIGTERM; nothing was written to .*out\.vhd\r?\n$/s);
  assert.deepEqual(listing(dir), before);
});

/** A small tmpfs (root only; outside CI a non-root run skips). */
function smallTmpfs(t: TestContext, size: string): string | undefined {
  if (process.getuid?.() !== 0) {
    if (IN_CI) throw new Error('the ENOSPC tests mount a tmpfs and need root in CI');
    t.skip('mounting a tmpfs needs root');
    return undefined;
  }
  const { dir, cleanup } = tempDir();
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  if (m.status !== 0) {
    cleanup();
    if (IN_CI) throw new Error(`mount tmpfs failed: ${m.stderr}`);
    t.skip('cannot mount a tmpfs here');
    return undefined;
  }
  t.after(() => {
    spawnSync('umount', [dir]);
    cleanup();
  });
  return dir;
}

test('ENOSPC on a small tmpfs: create and convert fail with one line naming the image and leave nothing', (t) => {
  const dir = smallTmpfs(t, '8m');
  if (!dir) return;
  const { dir: srcDir, cleanup } = tempDir();
  t.after(cleanup);
  const src = join(srcDir, 'random.raw');
  sparseInput(src, 16 * MiB, 3); // 4 MiB of random data: fits
  const dense = join(srcDir, 'dense.raw');
  writeFileSync(dense, Buffer.alloc(16 * MiB, 0x5a)); // 16 MiB of data: does not fit
  // (The add-cow's data go to its image file, IMG.raw: that file is named.)
  const cases: Array<{ name: string; args: string[]; names?: string }> = [
    // 256 GiB in 64 KiB blocks: a 16 MiB BAT, written as 0xFFFFFFFF entries.
    { name: 'big.vhd', args: ['create', '-f', 'vhd', '-o', 'block_size=64K', 'IMG', '256G'] },
    { name: 'dense.vhdx', args: ['convert', '-O', 'vhdx', dense, 'IMG'] },
    { name: 'dense.raw', args: ['convert', '-O', 'raw', dense, 'IMG'] }, // the native copier, where there is one
    { name: 'dense.vhd', args: ['convert', '-O', 'vhd', '-t', 'writeback', dense, 'IMG'] },
    { name: 'dense.add-cow', args: ['convert', '-O', 'add-cow', dense, 'IMG'], names: 'dense.add-cow.raw' },
  ];
  for (const c of cases) {
    const img = join(dir, c.name);
    const r = vdisk(...c.args.map((a) => (a === 'IMG' ? img : a)));
    assert.equal(r.status, 1, `${c.name}: ${r.stderr}`);
    assert.equal(r.stderr, `vdisk: no space left on device (${join(dir, c.names ?? c.name)})\n`, c.name);
    assert.deepEqual(listing(dir), [], `${c.name}: files left behind`);
  }
  // The space is free again: an image that fits is made under the same name (before, a 0-byte file there blocked it).
  const ok = vdisk('convert', '-O', 'vhdx', src, join(dir, 'dense.vhdx'));
  assert.equal(ok.status, 0, ok.stderr);
  assert.deepEqual(listing(dir), ['dense.vhdx']);
});

test('ENOSPC creating an add-cow image on a full tmpfs leaves neither the header file nor the image file', (t) => {
  const dir = smallTmpfs(t, '1m');
  if (!dir) return;
  // Fill it: the add-cow's image file (sparse, no blocks) is made, its header then finds no room.
  const filler = join(dir, 'filler');
  const fd = openSync(filler, 'w');
  try {
    const chunk = Buffer.alloc(64 * 1024, 1);
    for (;;) writeSync(fd, chunk);
  } catch (e) {
    assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
  } finally {
    closeSync(fd);
  }
  const img = join(dir, 'new.add-cow');
  const r = vdisk('create', '-f', 'add-cow', img, '64M');
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr, `vdisk: no space left on device (${img})\n`);
  assert.deepEqual(listing(dir), ['filler']);
});

/** Host files whose writes fail (EIO) once `budget` bytes have been written to files matching `which`. */
function failingOpener(budget: number, which: RegExp): StoreOpener {
  let left = budget;
  return async (path, o) => {
    const store = await openFileStore(path, o);
    if (!which.test(path) || o.readOnly) return store;
    const fail = (n: number) => {
      left -= n;
      if (left < 0) throw new BlockError('io', 'write failed: injected EIO', { path, operation: 'write' });
    };
    return Object.assign(Object.create(store) as Store, {
      write: async (offset: number, data: Uint8Array) => (fail(data.length), store.write(offset, data)),
      writev: async (offset: number, parts: readonly Uint8Array[]) => (fail(parts.reduce((n, p) => n + p.length, 0)), store.writev!(offset, parts)),
      truncate: async (size: number) => (fail(0), store.truncate(size)),
    });
  };
}

test('a create that fails after writing leaves nothing, for every format; the error names the image', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  for (const [format, options] of [
    ['vhd', { block_size: '64K' }],
    ['vhd', { subformat: 'fixed' }],
    ['vhdx', {}],
    ['raw', {}],
    ['add-cow', {}],
    ['add-cow', { image_file: 'data.img' }],
  ] as const) {
    for (const budget of [0, 100, 4096, 70000]) {
      const path = join(dir, `img.${format}`);
      const what = `${format} ${JSON.stringify(options)} failing after ${budget} bytes`;
      const openStore = failingOpener(budget, /img\.|data\.img/);
      try {
        await createImage({ path, format, size: 64 * MiB, options, openStore, host: fileHost });
        // (A format that writes less than the budget succeeds: then the image is there.)
        assert.ok(existsSync(path), what);
        run('rm', ['-f', ...listing(dir).map((n) => join(dir, n))]);
      } catch (e) {
        assert.ok(e instanceof BlockError, `${what}: ${String(e)}`);
        assert.equal(e.context.path, path, `${what}: the error names ${String(e.context.path)}`);
        assert.deepEqual(listing(dir), [], `${what}: files left behind`);
      }
    }
  }
  // An add-cow's existing image file is the user's: a failed create keeps it.
  const data = join(dir, 'mine.raw');
  writeFileSync(data, Buffer.alloc(MiB, 7));
  await assert.rejects(
    createImage({ path: join(dir, 'x.add-cow'), format: 'add-cow', size: MiB, options: { image_file: 'mine.raw' }, openStore: failingOpener(0, /x\.add-cow/), host: fileHost }),
    /injected/,
  );
  assert.deepEqual(listing(dir), ['mine.raw']);
  assert.deepEqual(readFileSync(data), Buffer.alloc(MiB, 7));
});

test('an aborted create or convert rejects with the reason and leaves nothing', async (t) => {
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const src = join(dir, 'src.raw');
  sparseInput(src, 32 * MiB, 9);
  const before = listing(dir);
  const reason = new Error('stop');
  for (const fmt of ['raw', 'vhd', 'vhdx', 'add-cow']) {
    const controller = new AbortController();
    await assert.rejects(
      convert({
        source: src,
        target: join(dir, `out.${fmt}`),
        targetFormat: fmt,
        native: false,
        bufferSize: 512 * 1024,
        signal: controller.signal,
        onProgress: (done) => {
          if (done >= 8 * MiB) controller.abort(reason);
        },
      }),
      (e) => e === reason,
      fmt,
    );
    assert.deepEqual(listing(dir), before, fmt);
  }
  const controller = new AbortController();
  controller.abort(reason);
  await assert.rejects(createImage({ path: join(dir, 'new.vhdx'), format: 'vhdx', size: MiB, signal: controller.signal }), (e) => e === reason);
  assert.deepEqual(listing(dir), before);
});

test('an existing target is refused without --overwrite (and kept as it was) and replaced with it', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const src = join(dir, 'src.raw');
  sparseInput(src, 8 * MiB, 5);
  const target = join(dir, 'target.img');
  writeFileSync(target, 'not an image, but somebody\'s file\n');
  const sum = await sha256File(target);
  const attempts: string[][] = [
    ['create', '-f', 'vhdx', target, '4M'],
    ['create', '-f', 'add-cow', '-o', 'image_file=other.raw', target, '4M'],
    ['convert', '-O', 'vhd', src, target],
    ['convert', '-O', 'add-cow', '-o', 'image_file=other.raw', src, target],
  ];
  for (const args of attempts) {
    const r = vdisk(...args);
    assert.equal(r.status, 1, args.join(' '));
    assert.equal(r.stderr, `vdisk: file already exists (${target})\n`, args.join(' '));
    assert.equal(await sha256File(target), sum, args.join(' '));
    assert.deepEqual(listing(dir), ['src.raw', 'target.img'], `${args.join(' ')}: files left behind`);
  }
  // -n writes in place; --overwrite replaces: one or the other.
  const both = vdisk('convert', '-n', '--overwrite', '-O', 'raw', src, target);
  assert.equal(both.status, 1);
  assert.match(both.stderr, /choose one/);

  const created = vdisk('create', '--overwrite', '-f', 'vhdx', target, '4M');
  assert.equal(created.status, 0, created.stderr);
  assert.match(run('qemu-img', ['info', '-f', 'vhdx', target]).stdout, /virtual size: 4 MiB/);
  const inode = statSync(target).ino;
  const converted = vdisk('convert', '--overwrite', '-O', 'vhd', src, target);
  assert.equal(converted.status, 0, converted.stderr);
  assert.notEqual(statSync(target).ino, inode, 'replaced by a rename, not rewritten in place');
  assert.equal(run('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'vpc', src, target], { allowFail: true }).status, 0);
  assert.deepEqual(listing(dir), ['src.raw', 'target.img']);
  // An image cannot replace a file of its own backing chain.
  const base = join(dir, 'base.vhd');
  assert.equal(vdisk('create', '-f', 'vhd', base, '8M').status, 0);
  const baseSum = await sha256File(base);
  for (const args of [
    ['create', '--overwrite', '-f', 'vhd', '-b', 'base.vhd', base],
    ['convert', '--overwrite', '-O', 'vhd', '-B', base, src, base],
  ]) {
    const r = vdisk(...args);
    assert.equal(r.status, 1, args.join(' '));
    assert.match(r.stderr, /--overwrite would replace .*base\.vhd, which is in the new image's backing chain/, args.join(' '));
    assert.equal(await sha256File(base), baseSum);
  }
  run('rm', [base]);
  // The library: the same refusal, and the same replacement.
  await assert.rejects(createImage({ path: target, format: 'raw', size: MiB }), /file already exists/);
  await createImage({ path: target, format: 'raw', size: MiB, overwrite: true });
  assert.equal(statSync(target).size, MiB);
  assert.deepEqual(listing(dir), ['src.raw', 'target.img']);
});
