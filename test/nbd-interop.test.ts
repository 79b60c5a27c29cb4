import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { closeSync, copyFileSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { openChain } from '../src/chain/open.js';
import { FORMATS } from '../src/formats/registry.js';
import { mapChain, type MapEntry } from '../src/ops/map.js';
import { createImage } from '../src/ops/create.js';
import { startNbdServer, type NbdServer } from '../src/nbd/server.js';
import { requireTool, tempDir, sha256File, vdiskDigest } from './helpers/oracle.js';
import { REPO_ROOT } from './helpers/corpus.js';
import { rng, randomBytes, randInt } from './helpers/random.js';
import { NbdClient } from './helpers/nbd-client.js';

/*
 * Real NBD clients against the server: nbdinfo (--json, --map), nbdcopy,
 * qemu-io and qemu-img over nbd://, and `vdisk serve` as a process. The
 * server runs in this process, so the clients are spawned asynchronously.
 * Answers are checked against whole-disk digests and vdisk's own map.
 */

const MiB = 1 << 20;

function runAsync(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string; status: number }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { maxBuffer: 64 * MiB, encoding: 'utf8' }, (err, stdout, stderr) => {
      const status = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ stdout, stderr, status });
    });
  });
}

async function ok(cmd: string, args: string[]): Promise<string> {
  const r = await runAsync(cmd, args);
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A sparse raw disk: random data runs, the rest left as holes. */
function sparseRaw(dir: string, name: string, size: number, seed: number): string {
  const path = join(dir, name);
  writeFileSync(path, new Uint8Array(0));
  truncateSync(path, size);
  const r = rng(seed);
  const fd = openSync(path, 'r+');
  try {
    for (let i = 0; i < 6; i++) {
      const data = randomBytes(r, randInt(r, 1, 3) * 65536);
      writeSync(fd, data, 0, data.length, randInt(r, 0, size / 65536 - 4) * 65536);
    }
  } finally {
    closeSync(fd);
  }
  return path;
}

/** nbdinfo --map --json as [offset, length, type], adjacent equal types merged. */
async function nbdMap(uri: string, context?: string): Promise<[number, number, number][]> {
  const out = JSON.parse(await ok('nbdinfo', [context ? `--map=${context}` : '--map', '--json', uri])) as { offset: number; length: number; type: number }[];
  return merge(out.map((e) => [e.offset, e.length, e.type]));
}

function merge(list: [number, number, number][]): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (const e of list) {
    const last = out[out.length - 1];
    if (last && last[2] === e[2] && last[0] + last[1] === e[0]) last[1] += e[1];
    else out.push([...e]);
  }
  return out;
}

/** What `vdisk map` says, in nbdinfo's terms for base:allocation and qemu:allocation-depth. */
async function vdiskMap(path: string): Promise<{ allocation: [number, number, number][]; depth: [number, number, number][] }> {
  const chain = await openChain(path, { readOnly: true });
  const entries: MapEntry[] = [];
  try {
    for await (const e of mapChain(chain)) entries.push(e);
  } finally {
    await chain.close();
  }
  return {
    allocation: merge(entries.map((e) => [e.start, e.length, e.data ? 0 : 3])),
    depth: merge(entries.map((e) => [e.start, e.length, e.present ? e.depth + 1 : 0])),
  };
}

async function serve(path: string, options: Parameters<typeof startNbdServer>[0] = {}): Promise<NbdServer> {
  return startNbdServer({ path, port: 0, exportName: 'disk', persistent: true, ...options });
}

function tools(t: TestContext, ...names: Parameters<typeof requireTool>[1][]): boolean {
  return names.every((n) => requireTool(t, n));
}

test('nbdinfo --json: size, flags and block sizes per image capability', async (t) => {
  if (!tools(t, 'nbdinfo')) return;
  const d = tempDir('vdisk-nbd-');
  try {
    const path = sparseRaw(d.dir, 'a.raw', 8 * MiB, 1);
    for (const readOnly of [false, true]) {
      const server = await serve(path, { readOnly, shared: readOnly ? 1 : 4 });
      try {
        const info = JSON.parse(await ok('nbdinfo', ['--json', server.address]));
        const e = info.exports[0];
        assert.equal(info.protocol, 'newstyle-fixed');
        assert.equal(info.structured, true);
        assert.equal(e['export-name'], 'disk');
        assert.equal(e['export-size'], 8 * MiB);
        assert.equal(e.is_read_only, readOnly);
        assert.equal(e.can_flush, true);
        assert.equal(e.can_fua, !readOnly);
        assert.equal(e.can_zero, !readOnly);
        assert.equal(e.can_trim, false, 'raw cannot discard');
        assert.equal(e.can_fast_zero, false);
        assert.equal(e.can_multi_conn, !readOnly);
        assert.equal(e.can_df, true);
        assert.equal(e.can_cache, false);
        assert.deepEqual([e.block_size_minimum, e.block_size_preferred, e.block_size_maximum], [512, 4096, 32 * MiB]);
        assert.ok(e.contexts.includes('base:allocation'));
      } finally {
        await server.close();
      }
    }
  } finally {
    d.cleanup();
  }
});

test('raw: nbdinfo --map equals vdisk map, nbdcopy equals the disk, qemu-img compare agrees', async (t) => {
  if (!tools(t, 'nbdinfo', 'nbdcopy', 'qemu-img')) return;
  const d = tempDir('vdisk-nbd-');
  try {
    const path = sparseRaw(d.dir, 'a.raw', 16 * MiB, 2);
    const expected = await vdiskMap(path);
    const server = await serve(path, { readOnly: true, shared: 4 });
    try {
      assert.deepEqual(await nbdMap(server.address), expected.allocation);
      assert.deepEqual(await nbdMap(server.address, 'qemu:allocation-depth'), expected.depth);
      const out = join(d.dir, 'copy.raw');
      await ok('nbdcopy', [server.address, out]);
      assert.equal(await sha256File(out), (await vdiskDigest(path)).digest);
      assert.match(await ok('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', server.address, path]), /identical/);
      writeFileSync(join(d.dir, 'other.raw'), Buffer.alloc(16 * MiB, 1));
      const diff = await runAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', server.address, join(d.dir, 'other.raw')]);
      assert.equal(diff.status, 1, 'a different image is reported different');
    } finally {
      await server.close();
    }
  } finally {
    d.cleanup();
  }
});

/** qemu-io commands: aligned and unaligned pattern writes, zeroes, discards. */
function ioCommands(seed: number, size: number): string[] {
  const r = rng(seed);
  const cmds: string[] = [];
  for (let i = 0; i < 24; i++) {
    const off = randInt(r, 0, size - 300_000);
    const len = randInt(r, 1, 300_000);
    if (i % 6 === 5) cmds.push(`write -z ${off} ${len}`);
    else cmds.push(`write -P 0x${randInt(r, 1, 255).toString(16)} ${off} ${len}`);
  }
  cmds.push('flush');
  return cmds;
}

test('qemu-io writes patterns through nbd:// that vdisk then reads from the image file', async (t) => {
  if (!tools(t, 'qemu-io', 'qemu-img')) return;
  const d = tempDir('vdisk-nbd-');
  try {
    const size = 8 * MiB;
    const path = sparseRaw(d.dir, 'a.raw', size, 3);
    const reference = join(d.dir, 'ref.raw');
    copyFileSync(path, reference);
    const cmds = ioCommands(4, size);
    const server = await serve(path);
    try {
      await ok('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), server.address]);
      await ok('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 12345 4321', server.address]);
    } finally {
      await server.close();
    }
    await ok('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), '-c', 'write -P 0xab 12345 4321', reference]);
    // The whole disk as vdisk reads it equals qemu-io's own writes to a local copy.
    assert.equal((await vdiskDigest(path)).digest, (await vdiskDigest(reference)).digest);
    const chain = await openChain(path, { readOnly: true });
    try {
      const buf = new Uint8Array(4321);
      await chain.read(12345, buf);
      assert.ok(buf.every((x) => x === 0xab));
    } finally {
      await chain.close();
    }
  } finally {
    d.cleanup();
  }
});

for (const format of ['vhd', 'vhdx']) {
  test(`nbdcopy over several connections writes a disk into a fresh dynamic ${format} behind the server; qemu-img agrees`, async (t) => {
    if (!tools(t, 'nbdcopy', 'qemu-img')) return;
    const d = tempDir('vdisk-nbd-');
    try {
      const size = 32 * MiB;
      const src = sparseRaw(d.dir, 'src.raw', size, 11);
      // Unaligned edits on top, so requests that share blocks (and zero runs) arrive together.
      const fd = openSync(src, 'r+');
      writeSync(fd, new Uint8Array(70_000).fill(0x5c), 0, 70_000, 3 * MiB + 1000);
      closeSync(fd);
      const target = join(d.dir, `t.${format}`);
      await createImage({ path: target, format, size, options: format === 'vhd' ? { force_size: 'on' } : {} });
      const server = await serve(target, { shared: 4 });
      try {
        // nbdcopy opens up to 4 connections when the server offers multi-conn, 64 requests each.
        await ok('nbdcopy', ['--flush', '--connections=4', src, server.address]);
      } finally {
        await server.close();
      }
      const fmt = format === 'vhd' ? 'vpc' : 'vhdx';
      const cmp = await runAsync('qemu-img', ['compare', '-f', fmt, '-F', 'raw', target, src]);
      assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
      if (format === 'vhdx') await ok('qemu-img', ['check', '-f', 'vhdx', target]);
      assert.equal((await vdiskDigest(target)).digest, (await vdiskDigest(src)).digest);
    } finally {
      d.cleanup();
    }
  });
}

/** Make base + child in one format through the library; content written through the chain. */
async function differencingChain(dir: string, format: string, size: number): Promise<string | undefined> {
  const base = join(dir, `base.${format}`);
  const child = join(dir, `child.${format}`);
  for (const baseFormat of [format, 'raw']) {
    const basePath = baseFormat === 'raw' ? join(dir, 'base.raw') : base;
    try {
      if (baseFormat === 'raw') sparseRaw(dir, 'base.raw', size, 5);
      else {
        await createImage({ path: basePath, format: baseFormat, size });
        const c = await openChain(basePath);
        const r = rng(5);
        for (let i = 0; i < 6; i++) await c.write(randInt(r, 0, size - 300_000), randomBytes(r, randInt(r, 1, 300_000)));
        await c.flush();
        await c.close();
      }
      await createImage({ path: child, format, backing: { path: basePath, format: baseFormat } });
    } catch {
      rmSync(child, { force: true });
      continue;
    }
    const c = await openChain(child);
    const r = rng(6);
    for (let i = 0; i < 5; i++) await c.write(randInt(r, 0, size - 200_000), randomBytes(r, randInt(r, 1, 200_000)));
    await c.writeZeroes(MiB, 3 * 65536);
    await c.flush();
    await c.close();
    return child;
  }
  return undefined;
}

for (const format of FORMATS.filter((f) => f.name !== 'raw' && f.create).map((f) => f.name)) {
  test(`${format} differencing chain served: nbdcopy, nbdinfo --map and qemu-io writes`, async (t) => {
    if (!tools(t, 'nbdinfo', 'nbdcopy', 'qemu-io')) return;
    const d = tempDir('vdisk-nbd-');
    try {
      const size = 8 * MiB;
      const child = await differencingChain(d.dir, format, size);
      if (!child) {
        t.skip(`${format} cannot make a differencing image`);
        return;
      }
      const expected = await vdiskMap(child);
      assert.ok(expected.depth.some((e) => e[2] === 2), 'some data comes from the backing file');
      const before = await vdiskDigest(child);
      const server = await serve(child, { shared: 4 });
      const reference = join(d.dir, 'ref.raw');
      const cmds = ioCommands(7, size);
      try {
        assert.deepEqual(await nbdMap(server.address), expected.allocation);
        assert.deepEqual(await nbdMap(server.address, 'qemu:allocation-depth'), expected.depth);
        await ok('nbdcopy', [server.address, reference]);
        assert.equal(await sha256File(reference), before.digest, 'nbdcopy equals the chain as vdisk reads it');
        await ok('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), server.address]);
      } finally {
        await server.close();
      }
      // The same writes applied by qemu-io to the flat copy: the chain must now read the same.
      await ok('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), reference]);
      assert.equal((await vdiskDigest(child)).digest, await sha256File(reference));
    } finally {
      d.cleanup();
    }
  });
}

/** Start `vdisk serve` in a child process through the real launcher and wait for its address. */
interface ServeProcess {
  address: string;
  exit: Promise<number>;
  kill: (sig: NodeJS.Signals) => void;
  /** Resolves once the server has written a line matching `re` to stderr (with -v: its connection log). */
  logged: (re: RegExp) => Promise<void>;
}

function serveProcess(args: string[]): Promise<ServeProcess> {
  const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', 'vdisk.cjs'), ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = new Promise<number>((r) => child.on('exit', (code) => r(code ?? -1)));
  let out = '';
  let err = '';
  child.stderr.on('data', (c) => (err += c));
  const logged = (re: RegExp) =>
    new Promise<void>((resolve, reject) => {
      const look = () => {
        if (!re.test(err)) return false;
        child.stderr.off('data', look);
        resolve();
        return true;
      };
      if (look()) return;
      child.stderr.on('data', look);
      void exit.then((code) => reject(new Error(`vdisk serve exited ${code} before logging ${re}: ${err}`)));
    });
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (c) => {
      out += c;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve({ address: m[1], exit, kill: (sig) => child.kill(sig), logged });
    });
    void exit.then((code) => reject(new Error(`vdisk serve exited ${code}: ${err}`)));
  });
}

test('vdisk serve: prints its address, serves, stops on SIGTERM after flushing; exits after the last client unless persistent', async (t) => {
  if (!tools(t, 'nbdinfo', 'qemu-io')) return;
  const d = tempDir('vdisk-nbd-');
  try {
    const path = sparseRaw(d.dir, 'a.raw', 4 * MiB, 8);
    const p = await serveProcess(['serve', '-f', 'raw', '--port', '0', '--export-name', 'x', '--persistent', path]);
    assert.match(p.address, /^nbd:\/\/127\.0\.0\.1:\d+\/x$/);
    const info = JSON.parse(await ok('nbdinfo', ['--json', p.address]));
    assert.equal(info.exports[0]['export-size'], 4 * MiB);
    await ok('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1000 3000', p.address]);
    p.kill('SIGTERM');
    assert.equal(await p.exit, 0);
    assert.ok(readFileSync(path).subarray(1000, 4000).every((x) => x === 0x5a));

    const sock = join(d.dir, 's.sock');
    const q = await serveProcess(['serve', '-f', 'raw', '--socket', sock, '--read-only', path]);
    assert.equal(q.address, `nbd+unix:///?socket=${sock}`);
    await ok('nbdinfo', ['--json', q.address]);
    assert.equal(await q.exit, 0, 'not persistent: exits after the client leaves');

    const bad = await runAsync(process.execPath, [join(REPO_ROOT, 'bin', 'vdisk.cjs'), 'serve', '--port', '99999', path]);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /^vdisk: port must be 0\.\.65535/);
  } finally {
    d.cleanup();
  }
});

test('vdisk serve --idle-timeout: a client that sends nothing is dropped and its slot served to the next; bad values refused', async () => {
  const d = tempDir('vdisk-nbd-');
  let p: ServeProcess | undefined;
  try {
    const path = sparseRaw(d.dir, 'a.raw', MiB, 3);
    const bad = await runAsync(process.execPath, [join(REPO_ROOT, 'bin', 'vdisk.cjs'), 'serve', '--idle-timeout', '-1', path]);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /^vdisk: --idle-timeout must be a number of seconds >= 0 \(got -1\)/);
    p = await serveProcess(['serve', '-f', 'raw', '--port', '0', '--shared', '1', '--persistent', '--idle-timeout', '2', '-v', path]);
    const port = Number(/:(\d+)\//.exec(p.address)![1]);
    const idle = await NbdClient.connect({ port });
    await new Promise((r) => idle.socket.once('close', r)); // never, without the idle timeout
    // The slot is free once the server has finished with the dropped client,
    // which it logs; the client can see its socket close before that.
    await p.logged(/client 1: disconnected/);
    const next = await NbdClient.connect({ port });
    assert.equal((await next.read(0, 512)).length, 512);
    await next.disconnect();
    p.kill('SIGTERM');
    assert.equal(await p.exit, 0);
    p = undefined;
  } finally {
    p?.kill('SIGKILL'); // a persistent server left by a failed assertion would keep the test file running
    d.cleanup();
  }
});
