import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, openSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { PageBlobClient } from '@azure/storage-blob';
import { convert } from '../src/ops/convert.js';
import { imageInfo } from '../src/ops/info.js';
import { VDISK_BIN, vdisk } from './helpers/cli.js';
import { requireAzurite, type Azurite } from './helpers/azurite.js';
import { pyvhdiRead, readWholeDisk, requireTool, run, tempDir, qemuImg } from './helpers/oracle.js';
import { rng, randInt, randomBytes } from './helpers/random.js';

/*
 * Issue 19, items 5-7, on Azurite: upload a VHDX chain as a fixed VHD page
 * blob (only its non-zero pages), read it back (only its written ranges),
 * interrupt and resume uploads, and the bad inputs.
 */

const MiB = 1 << 20;
const PAGE = 512;

interface Range {
  offset: number;
  length: number;
}

function merge(ranges: Range[]): Range[] {
  const out: Range[] = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length >= r.offset) last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ ...r });
  }
  return out;
}

/** The blob's written ranges as Azurite lists them (it lists adjacent writes separately: merged here). */
async function blobRanges(client: PageBlobClient): Promise<Range[]> {
  const out: Range[] = [];
  for await (const r of client.listPageRanges()) out.push({ offset: r.start, length: r.end + 1 - r.start });
  return merge(out);
}

/** Runs of 512-byte pages of `disk` holding a non-zero byte. */
function nonZeroPages(disk: Uint8Array): Range[] {
  const out: Range[] = [];
  for (let o = 0; o < disk.length; o += PAGE) {
    const page = disk.subarray(o, Math.min(disk.length, o + PAGE));
    if (page.every((b) => b === 0)) continue;
    out.push({ offset: o, length: PAGE });
  }
  return merge(out);
}

/**
 * A VHDX chain (base written by qemu-io, child made and written by vdisk:
 * qemu makes no VHDX children) with scattered data, some of it unaligned,
 * some runs of zeros over data. Returns the child and the flattened disk as
 * libvhdi reads it (pyvhdi, an outside reader), also written to chain.raw
 * for qemu-img compare.
 */
function makeChain(dir: string, size: number, seed: number, writes: number, maxLen = 300_000): { child: string; raw: string; disk: Uint8Array } {
  const base = join(dir, 'base.vhdx');
  const child = join(dir, 'child.avhdx');
  qemuImg('create', '-q', '-f', 'vhdx', base, String(size));
  const r = rng(seed);
  const script = (n: number) => {
    const cmds: string[] = [];
    for (let i = 0; i < n; i++) {
      const off = randInt(r, 0, size - 2);
      const len = Math.min(randInt(r, 1, maxLen), size - off);
      cmds.push('-c', i % 5 === 4 ? `write -z ${off} ${len}` : `write -P ${randInt(r, 1, 255)} ${off} ${len}`);
    }
    return cmds;
  };
  const baseCmds = script(writes);
  // qemu-io takes a bounded number of -c per run.
  for (let i = 0; i < baseCmds.length; i += 200) run('qemu-io', ['-f', 'vhdx', ...baseCmds.slice(i, i + 200), base]);
  const made = vdisk('create', '-q', '-f', 'vhdx', '-b', base, '-F', 'vhdx', child);
  assert.equal(made.status, 0, made.stderr);
  // Something at the very end too (the last page of a disk that is not a whole MiB).
  const childCmds = [...script(Math.ceil(writes / 2)), '-c', `write -P 126 ${size - 700} 700`];
  for (let i = 0; i < childCmds.length; i += 200) {
    const w = vdisk('io', '-f', 'vhdx', ...childCmds.slice(i, i + 200), child);
    assert.equal(w.status, 0, w.stderr);
  }
  const disk = new Uint8Array(pyvhdiRead([child, base], 0, size));
  assert.equal(disk.length, size);
  const raw = join(dir, 'chain.raw');
  writeFileSync(raw, disk);
  return { child, raw, disk };
}

/** The CLI without blocking this process (a proxy in it must keep forwarding). */
function vdiskAsync(...args: string[]): Promise<{ stdout: string; stderr: string; status: number }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [VDISK_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => resolve({ stdout, stderr, status: code ?? -1 }));
  });
}

async function download(az: Azurite, container: string, blob: string, to: string): Promise<void> {
  await az.service.getContainerClient(container).getBlobClient(blob).downloadToFile(to);
}

function cmp(a: string, fa: string, b: string, fb: string): void {
  const r = run('qemu-img', ['compare', '-f', fa, '-F', fb, a, b], { allowFail: true });
  assert.equal(r.status, 0, `qemu-img compare ${a} ${b}: ${r.stdout}${r.stderr}`);
}

test('upload a VHDX chain as a fixed VHD page blob: only its non-zero pages, footer last; read back, check --azure, qemu-img, convert to VHDX', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
  const az = await requireAzurite(t);
  if (!az) return;
  const tmp = tempDir();
  try {
    const size = 50_000_384; // not a whole MiB: the blob's disk is 48 MiB rounded up
    const { child, raw, disk: source } = makeChain(tmp.dir, size, 19, 40);
    const url = await az.sasUrl('disks', 'chain.vhd');
    const up = vdisk('convert', '-O', 'vhd', '-o', 'azure=on', child, url);
    assert.equal(up.status, 0, up.stderr);
    assert.match(up.stdout, /size rounded up from 50000384 to 50331648 bytes/);
    assert.doesNotMatch(up.stdout + up.stderr, /sig=/, 'the SAS is never printed');
    const diskSize = 48 * MiB;

    // Page ranges: exactly the source's non-zero pages, and the footer page.
    const expected = merge([...nonZeroPages(source), { offset: diskSize, length: PAGE }]);
    const client = az.service.getContainerClient('disks').getPageBlobClient('chain.vhd');
    assert.equal((await client.getProperties()).contentLength, diskSize + PAGE);
    const got = await blobRanges(client);
    assert.ok(expected.length > 10, 'the source has scattered data');
    assert.deepEqual(got, expected);

    // The blob, downloaded whole, is a fixed VHD qemu-img finds identical to the chain, at the exact size.
    const local = join(tmp.dir, 'downloaded.vhd');
    await download(az, 'disks', 'chain.vhd', local);
    cmp(raw, 'raw', local, 'vpc');
    assert.equal(Number(JSON.parse(qemuImg('info', '--output=json', '-f', 'vpc', local))['virtual-size']), diskSize);
    const check = vdisk('check', '--azure', url);
    assert.equal(check.status, 0, check.stdout + check.stderr);
    assert.equal(vdisk('check', '--azure', local).status, 0);

    // The blob as a source: info, compare, and back to a dynamic VHDX holding only the data.
    const [info] = await imageInfo(url);
    assert.equal(info.format, 'vhd');
    assert.equal(info['virtual-size'], diskSize);
    const c = vdisk('compare', child, url);
    assert.equal(c.status, 0, c.stdout + c.stderr);
    const back = join(tmp.dir, 'back.vhdx');
    const conv = vdisk('convert', '-O', 'vhdx', '-o', 'block_size=1M', url, back);
    assert.equal(conv.status, 0, conv.stderr);
    cmp(raw, 'raw', back, 'vhdx');
    // Only the data went into the VHDX: it allocates no 1 MiB block the source's data does not touch.
    const touched = new Set<number>();
    for (const r of nonZeroPages(source)) for (let b = Math.floor(r.offset / MiB); b * MiB < r.offset + r.length; b++) touched.add(b);
    // (qemu's VHDX driver reports every block as data: the file's size tells; its metadata is a few MiB.)
    const fileSize = statSync(back).size;
    assert.ok(touched.size < 40 && fileSize <= (touched.size + 8) * MiB, `VHDX file of ${fileSize} bytes, ${touched.size} blocks touched`);
    // Served over NBD (read-only: a page blob is written only by an upload).
    const writable = vdisk('serve', '--socket', join(tmp.dir, 'w.sock'), url);
    assert.notEqual(writable.status, 0);
    assert.match(writable.stderr, /page blob opens read-only/);
    if (requireTool(t, 'nbdinfo')) {
      const sock = join(tmp.dir, 'nbd.sock');
      const server = spawn(process.execPath, [VDISK_BIN, 'serve', '--read-only', '--socket', sock, url], { stdio: ['ignore', 'pipe', 'pipe'] });
      try {
        await new Promise<void>((resolve, reject) => {
          let out = '';
          server.stdout.on('data', (d: Buffer) => {
            out += d.toString();
            if (/listening/.test(out)) resolve();
          });
          server.on('exit', (code) => reject(new Error(`serve exited ${code}`)));
        });
        const nbd = await new Promise<string>((resolve) => {
          const p = spawn('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`], { stdio: ['ignore', 'pipe', 'pipe'] });
          let o = '';
          p.stdout.on('data', (d: Buffer) => (o += d.toString()));
          p.on('close', () => resolve(o.trim()));
        });
        assert.equal(Number(nbd), diskSize);
      } finally {
        server.kill('SIGTERM');
      }
    }
    // azure:// with the connection string, the convention of Microsoft's tools.
    const viaEnv = run(process.execPath, [VDISK_BIN, 'info', '--output=json', 'azure://disks/chain.vhd'], { env: { AZURE_STORAGE_CONNECTION_STRING: az.connectionString } });
    assert.equal(JSON.parse(viaEnv.stdout)['virtual-size'], diskSize);
  } finally {
    tmp.cleanup();
  }
});

test('a page blob read as a source fetches only its written ranges', async (t) => {
  const az = await requireAzurite(t);
  if (!az) return;
  const tmp = tempDir();
  try {
    // A 64 MiB disk with 1 MiB of data in the middle, uploaded by the library.
    const raw = join(tmp.dir, 'src.raw');
    const data = randomBytes(rng(3), MiB);
    writeFileSync(raw, new Uint8Array(0));
    truncateSync(raw, 64 * MiB);
    const fd = openSync(raw, 'r+');
    writeSync(fd, data, 0, data.length, 20 * MiB);
    closeSync(fd);
    const url = await az.sasUrl('disks', 'sparse.vhd');
    const r = await convert({ source: raw, sourceOptions: { format: 'raw' }, target: url, targetFormat: 'vhd', options: { azure: 'on' } });
    assert.equal(r.written, MiB + PAGE);
    // Count the bytes Azurite sends back while vdisk converts the blob to VHDX.
    const proxy = await byteCountingProxy(az.port);
    try {
      const viaProxy = url.replace(`:${az.port}/`, `:${proxy.port}/`);
      const out = join(tmp.dir, 'back.vhdx');
      const res = await vdiskAsync('convert', '-O', 'vhdx', viaProxy, out);
      assert.equal(res.status, 0, res.stderr);
      // The written ranges (1 MiB of data and the footer), the probe's head and tail, the headers: far below 64 MiB.
      assert.ok(proxy.downstream() < 4 * MiB, `downloaded ${proxy.downstream()} bytes`);
      assert.ok(proxy.downstream() >= MiB);
      const back = await readWholeDisk(out);
      assert.deepEqual(back.subarray(20 * MiB, 21 * MiB), data);
    } finally {
      proxy.close();
    }
  } finally {
    tmp.cleanup();
  }
});

test('SIGINT at a random moment of a CLI upload, then --resume: the blob ends identical to the source', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
  const az = await requireAzurite(t);
  if (!az) return;
  const tmp = tempDir();
  try {
    const { child, raw, disk } = makeChain(tmp.dir, 96 * MiB, 7, 300, 600_000);
    const seed = Date.now() % 100_000;
    const delay = randInt(rng(seed), 0, 800);
    const url = await az.sasUrl('disks', 'resume.vhd');
    const proc = spawn(process.execPath, [VDISK_BIN, 'convert', '-O', 'vhd', '-o', 'azure=on', child, url], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number>((resolve) => proc.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : -1))));
    // The random moment is counted from the blob's creation (the upload under way), not from the process start.
    const blob = az.service.getContainerClient('disks').getBlobClient('resume.vhd');
    let finished = false;
    void exited.then(() => (finished = true));
    while (!finished && !(await blob.exists())) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, delay));
    proc.kill('SIGINT');
    const status = await exited;
    const msg = `seed ${seed}, SIGINT ${delay} ms into the upload`;
    t.diagnostic(`${msg}: exit ${status}`);
    assert.ok(status === 130 || status === 0, `${msg}: exit ${status}: ${stderr}`);
    if (status === 130) {
      assert.match(stderr, /--resume/, msg);
      // No footer yet: Azure (and check --azure) would not take the blob.
      assert.notEqual(vdisk('check', '--azure', url).status, 0, msg);
      // Without --resume an existing blob is refused.
      const again = vdisk('convert', '-O', 'vhd', '-o', 'azure=on', child, url);
      assert.notEqual(again.status, 0);
      assert.match(again.stderr, /--resume/);
    }
    const resumed = vdisk('convert', '-O', 'vhd', '-o', 'azure=on', '--resume', child, url);
    assert.equal(resumed.status, 0, `${msg}: ${resumed.stderr}`);
    const local = join(tmp.dir, 'resumed.vhd');
    await download(az, 'disks', 'resume.vhd', local);
    cmp(raw, 'raw', local, 'vpc');
    assert.equal(vdisk('check', '--azure', url).status, 0, msg);
    const client = az.service.getContainerClient('disks').getPageBlobClient('resume.vhd');
    assert.deepEqual(await blobRanges(client), merge([...nonZeroPages(disk), { offset: 96 * MiB, length: PAGE }]), msg);
  } finally {
    tmp.cleanup();
  }
});

test('--resume over a blob holding another disk: pages that differ are sent again, pages the source lacks are cleared', async (t) => {
  const az = await requireAzurite(t);
  if (!az) return;
  const tmp = tempDir();
  try {
    const size = 24 * MiB;
    const a = new Uint8Array(size);
    const b = new Uint8Array(size);
    a.set(randomBytes(rng(1), 3 * MiB), 2 * MiB); // only in a: cleared
    a.set(randomBytes(rng(2), MiB), 10 * MiB);
    b.set(a.subarray(10 * MiB, 11 * MiB), 10 * MiB); // the same in both: kept, not sent
    b[10 * MiB + 4096] ^= 0xff; // ...but for one page
    b.set(randomBytes(rng(3), MiB), 16 * MiB); // only in b: sent
    writeFileSync(join(tmp.dir, 'a.raw'), a);
    writeFileSync(join(tmp.dir, 'b.raw'), b);
    const url = await az.sasUrl('disks', 'over.vhd');
    await convert({ source: join(tmp.dir, 'a.raw'), sourceOptions: { format: 'raw' }, target: url, targetFormat: 'vhd', options: { azure: 'on' } });
    const r = await convert({ source: join(tmp.dir, 'b.raw'), sourceOptions: { format: 'raw' }, target: url, targetFormat: 'vhd', options: { azure: 'on' }, resume: true });
    // One differing page, 1 MiB only in b, and the footer.
    assert.equal(r.written, PAGE + MiB + PAGE);
    const local = join(tmp.dir, 'over.vhd');
    await download(az, 'disks', 'over.vhd', local);
    cmp(join(tmp.dir, 'b.raw'), 'raw', local, 'vpc');
    const client = az.service.getContainerClient('disks').getPageBlobClient('over.vhd');
    assert.deepEqual(await blobRanges(client), merge([...nonZeroPages(b), { offset: size, length: PAGE }]));
  } finally {
    tmp.cleanup();
  }
});

test('bad input: read-only SAS, expired SAS, a blob of another size, a source over 32 TiB, a blob that is not a VHD, the network failing mid-upload', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const az = await requireAzurite(t);
  if (!az) return;
  const tmp = tempDir();
  try {
    const raw = join(tmp.dir, 'src.raw');
    writeFileSync(raw, randomBytes(rng(9), 8 * MiB));
    truncateSync(raw, 32 * MiB);
    const up = (url: string, ...extra: string[]) => vdisk('convert', '-f', 'raw', '-O', 'vhd', '-o', 'azure=on', ...extra, raw, url);
    const oneLine = (s: string) => assert.equal(s.trim().split('\n').length, 1, s);

    const readOnly = up(await az.sasUrl('disks', 'ro.vhd', 'r'));
    assert.notEqual(readOnly.status, 0);
    assert.match(readOnly.stderr, /does not give the permission|authentication failed|refused/);
    oneLine(readOnly.stderr);

    const expired = up(await az.sasUrl('disks', 'exp.vhd', 'racwd', new Date(Date.now() - 60_000)));
    assert.notEqual(expired.status, 0);
    assert.match(expired.stderr, /expired|authentication failed/);
    oneLine(expired.stderr);

    // A blob of another size is refused without --resume (and left as it was); with --resume it is made right.
    const other = await az.sasUrl('disks', 'other.vhd');
    await az.service.getContainerClient('disks').getPageBlobClient('other.vhd').create(64 * MiB);
    const refused = up(other);
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /67108864 bytes where this disk needs 33554944.*--resume/);
    oneLine(refused.stderr);
    assert.equal((await az.service.getContainerClient('disks').getPageBlobClient('other.vhd').getProperties()).contentLength, 64 * MiB);
    assert.equal(up(other, '--resume').status, 0);
    const local = join(tmp.dir, 'other.vhd');
    await download(az, 'disks', 'other.vhd', local);
    cmp(raw, 'raw', local, 'vpc');

    const huge = join(tmp.dir, 'huge.vhdx');
    qemuImg('create', '-q', '-f', 'vhdx', huge, '33T');
    const tooBig = vdisk('convert', '-O', 'vhd', '-o', 'azure=on', huge, await az.sasUrl('disks', 'huge.vhd'));
    assert.notEqual(tooBig.status, 0);
    assert.match(tooBig.stderr, /at most 32 TiB/);
    oneLine(tooBig.stderr);
    assert.equal(await az.service.getContainerClient('disks').getBlobClient('huge.vhd').exists(), false, 'nothing created');

    const junk = az.service.getContainerClient('disks').getPageBlobClient('junk.vhd');
    await junk.create(4 * MiB);
    await junk.uploadPages(Buffer.alloc(MiB, 0x41), 3 * MiB, MiB);
    const info = vdisk('info', await az.sasUrl('disks', 'junk.vhd'));
    assert.notEqual(info.status, 0);
    assert.match(info.stderr, /last 512 bytes are not a VHD footer/);
    oneLine(info.stderr);
    const junkCheck = vdisk('check', '--azure', await az.sasUrl('disks', 'junk.vhd'));
    assert.notEqual(junkCheck.status, 0);
    assert.match(junkCheck.stdout, /not a VHD/);

    // The network goes away after ~3 MiB of the upload: retries with backoff, then one clear line; --resume finishes it.
    const proxy = await byteCountingProxy(az.port, 3 * MiB);
    try {
      const url = await az.sasUrl('disks', 'net.vhd');
      const failed = await vdiskAsync('convert', '-f', 'raw', '-O', 'vhd', '-o', 'azure=on', raw, url.replace(`:${az.port}/`, `:${proxy.port}/`));
      assert.notEqual(failed.status, 0);
      assert.match(failed.stderr, /network failure.*--resume/);
      oneLine(failed.stderr);
      assert.notEqual(vdisk('check', '--azure', url).status, 0, 'no footer: not a disk yet');
      const resumed = up(url, '--resume');
      assert.equal(resumed.status, 0, resumed.stderr);
      const netLocal = join(tmp.dir, 'net.vhd');
      await download(az, 'disks', 'net.vhd', netLocal);
      cmp(raw, 'raw', netLocal, 'vpc');
    } finally {
      proxy.close();
    }
  } finally {
    tmp.cleanup();
  }
});

/**
 * A TCP proxy on 127.0.0.1 in front of Azurite that counts the bytes coming
 * back; with `cutAfter`, once that many bytes went up it drops every
 * connection and stops listening (the network is gone).
 */
async function byteCountingProxy(target: number, cutAfter?: number): Promise<{ port: number; downstream: () => number; close: () => void }> {
  let down = 0;
  let up = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(target, '127.0.0.1');
    sockets.add(client).add(upstream);
    client.on('data', (d: Buffer) => {
      up += d.length;
      if (cutAfter !== undefined && up > cutAfter) {
        server.close();
        for (const s of sockets) s.destroy();
        return;
      }
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      down += d.length;
      client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    downstream: () => down,
    close: () => {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}
