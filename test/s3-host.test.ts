import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import type * as S3 from '@aws-sdk/client-s3';
import { openChain } from '../src/chain/open.js';
import { isBlockError } from '../src/core/errors.js';
import { openFileStore } from '../src/io/file-store.js';
import { setRemoteOptions } from '../src/io/remote-options.js';
import { s3Client, s3Sdk } from '../src/io/s3-client.js';
import { openS3Sink } from '../src/io/s3-sink.js';
import type { Store } from '../src/io/store.js';
import { convert } from '../src/ops/convert.js';
import { imageInfo } from '../src/ops/info.js';
import { startCeph, stopCeph, hasCeph, type Ceph } from './helpers/ceph.js';
import { vdisk, VDISK_BIN } from './helpers/cli.js';
import { pyvhdiDigest, qemuDigest, qemuImg, qemuIo, requireTool, sha256, tempDir, vdiskDigest } from './helpers/oracle.js';
import { chainDigest, makeChain, makeEveryFormat, MiB } from './helpers/remote-fixtures.js';

/*
 * Images in S3 on a real Ceph RADOS Gateway (test/helpers/ceph.ts), started
 * once for this file: chains read across a bucket prefix, every format
 * converted from S3, raw written to S3 by multipart upload (and aborted
 * cleanly on failure and on SIGINT), `serve` of an S3 image read by nbdcopy,
 * and the bad inputs. Locally without Ceph the tests skip; under CI=true they fail.
 */
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
const BUCKET = 'vdisk-tests';
const tmp = tempDir('vdisk-s3-');
let cluster: Ceph | undefined;
let sdk: typeof S3;
let client: S3.S3Client;

before(() => setRemoteOptions({}));
after(() => {
  // The SDK's connections and the daemons would keep this process from ending.
  if (cluster) client.destroy();
  stopCeph();
  tmp.cleanup();
});

/** The cluster, the SDK's environment set for this process and its children, and the test bucket. */
async function ceph(t: TestContext): Promise<Ceph | undefined> {
  if (!hasCeph()) {
    if (IN_CI) throw new Error('Ceph (radosgw, ceph-mon, ceph-osd, ceph-common) is required in CI but not installed (see .ci/run)');
    t.skip('Ceph not installed');
    return undefined;
  }
  if (!cluster) {
    // Room for what the tests store: parts of aborted uploads stay until the gateway's garbage collection (hours
    // by default), and a full memstore OSD blocks every request instead of failing it.
    const c = await startCeph(4 * 2 ** 30);
    Object.assign(process.env, c.env);
    sdk = s3Sdk();
    client = s3Client();
    await client.send(new sdk.CreateBucketCommand({ Bucket: BUCKET }));
    cluster = c;
  }
  return cluster;
}

async function upload(key: string, file: string): Promise<string> {
  await client.send(new sdk.PutObjectCommand({ Bucket: BUCKET, Key: key, Body: readFileSync(file) }));
  return `s3://${BUCKET}/${key}`;
}

async function download(key: string): Promise<Buffer> {
  const r = await client.send(new sdk.GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await r.Body!.transformToByteArray());
}

async function uploadsLeft(prefix: string): Promise<number> {
  const r = await client.send(new sdk.ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }));
  return r.Uploads?.length ?? 0;
}

async function exists(key: string): Promise<boolean> {
  try {
    await client.send(new sdk.HeadObjectCommand({ Bucket: BUCKET, Key: key }));
    return true;
  } catch {
    return false;
  }
}

function vdiskAsync(...args: string[]): Promise<{ stdout: string; stderr: string; status: number }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [VDISK_BIN, ...args], { maxBuffer: 64 << 20 }, (e, stdout, stderr) => resolve({ stdout, stderr, status: e ? Number(e.code ?? 1) : 0 }));
  });
}

for (const format of ['vhdx', 'vhd'] as const) {
  test(`a ${format} chain (base + 2 children) in S3 reads as libvhdi reads the local files`, async (t) => {
    if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
    if (!(await ceph(t))) return;
    const dir = join(tmp.dir, `chain-${format}`);
    mkdirSync(dir);
    const { top, files } = makeChain(dir, format);
    for (const f of files) await upload(`chains/${format}/${f.slice(dir.length + 1)}`, f);
    const url = `s3://${BUCKET}/chains/${format}/top.${format}`;
    const infos = await imageInfo(url, { backingChain: true });
    assert.deepEqual(
      infos.map((i) => i.filename),
      [`top.${format}`, `mid.${format}`, `base.${format}`].map((n) => `s3://${BUCKET}/chains/${format}/${n}`),
    );
    assert.equal((await vdiskDigest(url)).digest, chainDigest(files));
    const cli = await vdiskAsync('info', '--backing-chain', '--output=json', url);
    assert.equal(cli.status, 0, cli.stderr);
    assert.equal(JSON.parse(cli.stdout).length, 3);
    const cmp = await vdiskAsync('compare', url, top);
    assert.equal(cmp.status, 0, cmp.stderr + cmp.stdout);
    const chk = await vdiskAsync('check', url);
    assert.equal(chk.status, 0, chk.stderr + chk.stdout);
    // Converted to a local raw: the same disk as libvhdi reads from the local chain.
    const out = join(tmp.dir, `chain-${format}.raw`);
    const conv = await vdiskAsync('convert', '-O', 'raw', url, out);
    assert.equal(conv.status, 0, conv.stderr);
    assert.equal((await qemuDigest(out, 'raw')).digest, chainDigest(files));
  });
}

test('every format converts from S3 to a local raw that qemu-img finds identical to the source', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  if (!(await ceph(t))) return;
  const dir = join(tmp.dir, 'every');
  mkdirSync(dir);
  for (const { name } of makeEveryFormat(dir)) {
    const url = await upload(`every/${name}`, join(dir, name));
    // add-cow names its image file: it goes beside it.
    if (name.endsWith('.add-cow')) await upload(`every/${name}.raw`, join(dir, `${name}.raw`));
    const target = join(dir, `${name}.out.raw`);
    const r = await vdiskAsync('convert', '-O', 'raw', url, target);
    assert.equal(r.status, 0, `${name}: ${r.stderr}`);
    qemuImg('compare', '-f', 'raw', '-F', 'raw', join(dir, 'src.raw'), target);
    const m = await vdiskAsync('measure', '-O', 'vhd', url);
    assert.equal(m.status, 0, `${name}: ${m.stderr}`);
  }
});

test('convert local → S3 writes raw by multipart upload; the object is the disk qemu-img reads locally', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  if (!(await ceph(t))) return;
  const src = join(tmp.dir, 'up.vhdx');
  const raw = join(tmp.dir, 'up-src.raw');
  qemuImg('create', '-f', 'raw', raw, '40M');
  qemuIo('raw', raw, 'write -P 0x61 0 5M', 'write -P 0x62 17M 9M', 'write -P 0x63 39M 1M');
  qemuImg('convert', '-f', 'raw', '-O', 'vhdx', raw, src);
  const r = await vdiskAsync('convert', '-O', 'raw', src, `s3://${BUCKET}/up/disk.raw`);
  assert.equal(r.status, 0, r.stderr);
  const object = await download('up/disk.raw');
  assert.equal(object.length, 40 * MiB);
  assert.equal(sha256(object), (await qemuDigest(src, 'vhdx')).digest);
  // An existing object is refused without --overwrite; with it, replaced.
  const again = await vdiskAsync('convert', '-O', 'raw', src, `s3://${BUCKET}/up/disk.raw`);
  assert.equal(again.status, 1);
  assert.match(again.stderr, /file already exists/);
  const over = await vdiskAsync('convert', '--overwrite', '-O', 'raw', raw, `s3://${BUCKET}/up/disk.raw`);
  assert.equal(over.status, 0, over.stderr);
  // -n cannot write an object in place: a clear error, the object untouched.
  const inPlace = await vdiskAsync('convert', '-n', '-O', 'raw', src, `s3://${BUCKET}/up/disk.raw`);
  assert.equal(inPlace.status, 1);
  assert.match(inPlace.stderr, /^vdisk: -n writes into an existing target in place; S3 objects [^\n]*cannot be written in place[^\n]*\n$/);
  assert.equal(sha256(await download('up/disk.raw')), sha256(readFileSync(raw)));
  assert.equal(await uploadsLeft('up/'), 0);
});

test('the multipart sink: bytes written come back; abort and a failed source leave no upload and no object', async (t) => {
  if (!(await ceph(t))) return;
  // Uneven writes across part boundaries (parts of 8 MiB): 3 full parts and a short last one.
  const data = new Uint8Array(27 * MiB + 12345);
  for (let i = 0; i < data.length; i += 4096) data[i] = (i / 4096) & 0xff;
  const sink = await openS3Sink(`s3://${BUCKET}/sink/whole.bin`);
  for (let at = 0; at < data.length; ) {
    const n = Math.min(data.length - at, 3 * MiB + 777);
    await sink.write(data.subarray(at, at + n));
    at += n;
  }
  await sink.finish();
  assert.equal(sha256(await download('sink/whole.bin')), sha256(data));
  // A small object (less than a part) goes as one PutObject.
  const small = await openS3Sink(`s3://${BUCKET}/sink/small.bin`);
  await small.write(data.subarray(0, 1000));
  await small.finish();
  assert.deepEqual(new Uint8Array(await download('sink/small.bin')), data.subarray(0, 1000));
  // abort() after parts went up: the upload is gone, no object.
  const gone = await openS3Sink(`s3://${BUCKET}/sink/aborted.bin`);
  await gone.write(data.subarray(0, 20 * MiB));
  assert.equal(await uploadsLeft('sink/aborted'), 1);
  await gone.abort(new Error('test'));
  await gone.abort(); // twice is fine
  assert.equal(await uploadsLeft('sink/aborted'), 0);
  assert.equal(await exists('sink/aborted.bin'), false);
  // A convert whose source fails after several parts: the upload is aborted.
  const raw = join(tmp.dir, 'failing.raw');
  qemuImg('create', '-f', 'raw', raw, '64M');
  qemuIo('raw', raw, 'write -P 0x5a 0 64M');
  const failing = async (p: string, o: Parameters<typeof openFileStore>[1]): Promise<Store> => {
    const s = await openFileStore(p, o);
    const read = s.read.bind(s);
    s.read = (offset: number, into: Uint8Array) => (offset >= 40 * MiB ? Promise.reject(new Error('injected read failure')) : read(offset, into));
    return s;
  };
  await assert.rejects(convert({ source: raw, sourceOptions: { format: 'raw' }, target: `s3://${BUCKET}/sink/failed.raw`, targetFormat: 'raw', openStore: failing }), /injected read failure/);
  assert.equal(await uploadsLeft('sink/failed'), 0);
  assert.equal(await exists('sink/failed.raw'), false);
});

test('convert local → S3 writes vhd (dynamic, fixed) and vhdx through the sequential writers; qemu-img finds each object the source disk', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  if (!(await ceph(t))) return;
  const dir = join(tmp.dir, 'seq');
  mkdirSync(dir);
  const raw = join(dir, 'src.raw');
  qemuImg('create', '-f', 'raw', raw, '40M');
  qemuIo('raw', raw, 'write -P 0x61 0 5M', 'write -P 0x62 17M 9M', 'write -P 0x63 39M 1M');
  const src = join(dir, 'src.vhdx');
  qemuImg('convert', '-f', 'raw', '-O', 'vhdx', raw, src);
  for (const [name, format, qfmt, opts] of [
    ['dyn.vhd', 'vhd', 'vpc', []],
    ['fixed.vhd', 'vhd', 'vpc', ['-o', 'subformat=fixed']],
    ['disk.vhdx', 'vhdx', 'vhdx', []],
  ] as const) {
    const url = `s3://${BUCKET}/seq/${name}`;
    // -q: nothing on stdout; -p alone draws a bar on stderr only when it is a terminal.
    const r = await vdiskAsync('convert', '-q', '-p', '-O', format, ...opts, src, url);
    assert.equal(r.status, 0, `${name}: ${r.stderr}`);
    assert.equal(r.stdout, '', name);
    const local = join(dir, `${name}.down`);
    writeFileSync(local, await download(`seq/${name}`));
    qemuImg('compare', '-f', 'raw', '-F', qfmt, raw, local);
    if (format === 'vhdx') qemuImg('check', '-f', qfmt, local);
    else {
      // qemu-img has no check for VHD: libvhdi reads the disk, the tail past the source (CHS rounding) zeros.
      const v = pyvhdiDigest([local]);
      const disk = new Uint8Array(v.size);
      disk.set(readFileSync(raw));
      assert.equal(v.digest, sha256(disk), name);
    }
    if (format === 'vhd') {
      // The footer's Disk Type (VHD spec: offset 60 of the last 512 bytes; 2 fixed, 3 dynamic).
      const file = readFileSync(local);
      assert.equal(file.readUInt32BE(file.length - 512 + 60), name.startsWith('fixed') ? 2 : 3, name);
    }
    // Read back through vdisk straight from S3.
    const cmp = await vdiskAsync('compare', url, raw);
    assert.equal(cmp.status, 0, `${name}: ${cmp.stderr}${cmp.stdout}`);
    // An existing object is refused without --overwrite (before the source is read), and stays as it was.
    const again = await vdiskAsync('convert', '-O', format, ...opts, raw, url);
    assert.equal(again.status, 1, name);
    assert.match(again.stderr, /file already exists/);
    assert.equal(sha256(await download(`seq/${name}`)), sha256(readFileSync(local)));
  }
  assert.equal(await uploadsLeft('seq/'), 0);
  // A dynamic VHD (2 MiB blocks) leaves zero blocks out: its object is smaller than the disk.
  assert.ok(readFileSync(join(dir, 'dyn.vhd.down')).length < 20 * MiB);
});

test('a convert to S3 reports what a local convert reports (size, targetSize, note, written) and the object\'s exact size', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  if (!(await ceph(t))) return;
  const dir = join(tmp.dir, 'result');
  mkdirSync(dir);
  const raw = join(dir, 'src.raw');
  // An odd size (not whole MiB, not a CHS geometry) and data with zero granules inside allocated blocks.
  qemuImg('create', '-f', 'raw', raw, `${40 * MiB + 1536}`);
  qemuIo('raw', raw, 'write -P 0x61 0 5M', 'write -P 0x62 17M 9M', 'write -P 0 18M 8k', 'write -P 0x63 39M 1M');
  for (const [name, format, options] of [
    ['dyn.vhd', 'vhd', {}],
    ['fixed.vhd', 'vhd', { subformat: 'fixed' }],
    ['azure.vhd', 'vhd', { azure: 'on' }],
    ['disk.vhdx', 'vhdx', {}],
    ['disk.raw', 'raw', {}],
  ] as const) {
    const request = { source: raw, sourceOptions: { format: 'raw' }, targetFormat: format, options: { ...options } };
    const local = await convert({ ...request, target: join(dir, name) });
    const remote = await convert({ ...request, target: `s3://${BUCKET}/result/${name}` });
    const object = await download(`result/${name}`);
    assert.equal(remote.objectSize, object.length, name);
    assert.equal(local.objectSize, undefined, name);
    const { objectSize: _, ...rest } = remote;
    assert.deepEqual(rest, local, name);
    // 15 MiB of data less the 8 KiB of zeros inside it.
    assert.equal(remote.written, 15 * MiB - 8192, name);
    if (name === 'azure.vhd') assert.match(remote.note ?? '', /^note: size rounded up/);
  }
  // The CLI says the note for an S3 target as for a local one.
  const r = await vdiskAsync('convert', '-f', 'raw', '-O', 'vhd', '-o', 'azure=on', raw, `s3://${BUCKET}/result/cli.vhd`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^note: size rounded up from 41944576 to 42991616 bytes/);
});

for (const format of ['vhd', 'vhdx'] as const) {
  test(`convert -B to S3: a ${format} child of a parent in S3 holds what differs; libvhdi and vdisk read the chain as the local one`, async (t) => {
    if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
    if (!(await ceph(t))) return;
    const dir = join(tmp.dir, `seqdiff-${format}`);
    mkdirSync(dir);
    const { top, files } = makeChain(dir, format);
    const base = files[0];
    await upload(`seqdiff/${format}/base.${format}`, base);
    const url = `s3://${BUCKET}/seqdiff/${format}/child.${format}`;
    // The name is taken relative to the target, in S3.
    const r = await vdiskAsync('convert', '-O', format, '-B', `base.${format}`, '-F', format, top, url);
    assert.equal(r.status, 0, r.stderr);
    // The object, downloaded beside a copy of its parent: libvhdi reads the disk of the local chain.
    const down = join(dir, 'down');
    mkdirSync(down);
    const child = join(down, `child.${format}`);
    writeFileSync(child, await download(`seqdiff/${format}/child.${format}`));
    writeFileSync(join(down, `base.${format}`), readFileSync(base));
    assert.equal(pyvhdiDigest([child, join(down, `base.${format}`)]).digest, chainDigest(files));
    // It is a differencing image naming base.<format>, and read from S3 its chain is the local disk.
    const infos = await imageInfo(url, { backingChain: true });
    assert.deepEqual(
      infos.map((i) => i.filename),
      [url, `s3://${BUCKET}/seqdiff/${format}/base.${format}`],
    );
    assert.equal((await vdiskDigest(url)).digest, chainDigest(files));
    const cmp = await vdiskAsync('compare', url, top);
    assert.equal(cmp.status, 0, cmp.stderr + cmp.stdout);
    const chk = await vdiskAsync('check', url);
    assert.equal(chk.status, 0, chk.stderr + chk.stdout);
    assert.equal(await uploadsLeft(`seqdiff/${format}/`), 0);
  });
}

test('a vhd/vhdx convert to S3 whose source fails mid-upload leaves no object and no multipart upload', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  if (!(await ceph(t))) return;
  const raw = join(tmp.dir, 'seqfail.raw');
  qemuImg('create', '-f', 'raw', raw, '64M');
  qemuIo('raw', raw, 'write -P 0x5a 0 64M');
  for (const format of ['vhd', 'vhdx']) {
    const prefix = `seqfail/${format}/`;
    let read = 0;
    let uploadsAtFailure: number | undefined;
    // Reads fail once 40 MiB have been read and the upload is under way (the first pass over the source sends nothing).
    const failing = async (p: string, o: Parameters<typeof openFileStore>[1]): Promise<Store> => {
      const s = await openFileStore(p, o);
      const inner = s.read.bind(s);
      s.read = async (offset: number, into: Uint8Array) => {
        read += into.length;
        if (read > 40 * MiB && uploadsAtFailure === undefined) {
          const n = await uploadsLeft(prefix);
          if (n > 0) {
            uploadsAtFailure = n;
            throw new Error('injected read failure');
          }
        }
        return inner(offset, into);
      };
      return s;
    };
    await assert.rejects(
      convert({ source: raw, sourceOptions: { format: 'raw' }, target: `s3://${BUCKET}/${prefix}disk.${format}`, targetFormat: format, openStore: failing }),
      /injected read failure/,
    );
    assert.equal(uploadsAtFailure, 1, format);
    assert.equal(await uploadsLeft(prefix), 0, format);
    assert.equal(await exists(`${prefix}disk.${format}`), false, format);
  }
});

test('SIGINT during a convert to S3 aborts the multipart upload', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  if (!(await ceph(t))) return;
  const raw = join(tmp.dir, 'sigint.raw');
  qemuImg('create', '-f', 'raw', raw, '768M');
  const child = spawn(process.execPath, [VDISK_BIN, 'convert', '-f', 'raw', '-O', 'raw', raw, `s3://${BUCKET}/sigint/disk.raw`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  // Wait until the upload has started (a part is on its way), then interrupt.
  let seen = false;
  while (!seen && child.exitCode === null) {
    seen = (await uploadsLeft('sigint/')) > 0;
    if (!seen) await new Promise((r) => setTimeout(r, 10));
  }
  assert.ok(seen, `the upload was never seen in progress: ${stderr}`);
  child.kill('SIGINT');
  assert.equal(await exited, 130, stderr);
  assert.match(stderr, /interrupted by SIGINT/);
  assert.equal(await uploadsLeft('sigint/'), 0);
  assert.equal(await exists('sigint/disk.raw'), false);
});

for (const format of ['vhd', 'vhdx'] as const) {
  test(`SIGINT at a random moment of a convert -O ${format} to S3 (scanning, uploading): no object and no multipart upload left`, async (t) => {
    if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
    if (!(await ceph(t))) return;
    const raw = join(tmp.dir, `sigint-${format}.raw`);
    // 256 MiB with data in every other 2 MiB: a scan pass, then 128 MiB of blocks to upload.
    qemuImg('create', '-f', 'raw', raw, '256M');
    qemuIo('raw', raw, ...Array.from({ length: 64 }, (_, i) => `write -P ${i + 1} ${i * 4}M 2M`));
    const seed = Date.now();
    let rand = seed;
    const random = () => ((rand = (rand * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (const moment of ['any', 'uploading'] as const) {
      const prefix = `sigint-${format}-${moment}/`;
      const target = `${prefix}disk.${format}`;
      const child = spawn(process.execPath, [VDISK_BIN, 'convert', '-f', 'raw', '-O', format, raw, `s3://${BUCKET}/${target}`], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
      let delay: number;
      if (moment === 'uploading') {
        // Once a part is on its way, then 0-300 ms later (parts going up, others waiting).
        let seen = false;
        while (!seen && child.exitCode === null) {
          seen = (await uploadsLeft(prefix)) > 0;
          if (!seen) await new Promise((r) => setTimeout(r, 10));
        }
        assert.ok(seen, `the upload was never seen in progress: ${stderr}`);
        delay = Math.floor(random() * 300);
      } else {
        // Anywhere from start-up through the scan to the first parts (the seed is in the message to replay a failure).
        delay = Math.floor(random() * 700);
      }
      await new Promise((r) => setTimeout(r, delay));
      assert.equal(child.exitCode, null, `${moment}: the convert ended before the signal (seed ${seed}, ${delay} ms): ${stderr}`);
      child.kill('SIGINT');
      const { code, signal } = await exited;
      const why = `${format} ${moment} (seed ${seed}, ${delay} ms): exit ${code} ${signal} ${stderr}`;
      if (moment === 'uploading' || code !== null) {
        // Handled: the CLI's one line and exit 130 (a signal before its handler was set kills the process: nothing was started then).
        assert.equal(code, 130, why);
        assert.match(stderr, /^vdisk: interrupted by SIGINT[^\n]*\n$/, why);
      } else assert.equal(signal, 'SIGINT', why);
      assert.equal(await uploadsLeft(prefix), 0, why);
      assert.equal(await exists(target), false, why);
    }
  });
}

test('bad input with an S3 target: one clear line each, and no object or multipart upload left', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  if (!(await ceph(t))) return;
  const dir = join(tmp.dir, 'badtarget');
  mkdirSync(dir);
  const raw = join(dir, 'src.raw');
  // 24 MiB of data: more than one part, so a late failure has parts stored to abort.
  qemuImg('create', '-f', 'raw', raw, '24M');
  qemuIo('raw', raw, 'write -P 0x41 0 24M');
  const dyn = join(dir, 'dyn.vhd');
  assert.equal((await vdiskAsync('convert', '-f', 'raw', '-O', 'vhd', raw, dyn)).status, 0);
  const q = (x: string) => `'${x.replace(/'/g, `'\\''`)}'`;
  const sh = (script: string, env: NodeJS.ProcessEnv = process.env) =>
    new Promise<{ status: number; stderr: string }>((resolve) =>
      execFile('sh', ['-c', script], { env, maxBuffer: 1 << 20 }, (e, _o, stderr) => resolve({ status: e ? Number(e.code ?? 1) : 0, stderr })),
    );
  const cli = `${q(process.execPath)} ${q(VDISK_BIN)} convert`;
  const url = (name: string) => `s3://${BUCKET}/badtarget/${name}`;
  for (const [name, script, why, env] of [
    // stdin shorter than --size, longer than --size (the object would otherwise be complete: checked before CompleteMultipartUpload).
    ['short.raw', `head -c ${20 * MiB} ${q(raw)} | ${cli} -f raw --size 24M -O raw - ${q(url('short.raw'))}`, /^vdisk: stdin: the stream ended after 20971520 bytes/],
    ['long.raw', `{ cat ${q(raw)}; printf x; } | ${cli} -f raw --size 24M -O raw - ${q(url('long.raw'))}`, /^vdisk: stdin: the stream holds more than the 25165824 bytes --size gives/],
    // A VHD stream whose footer disagrees with its length.
    ['footer.raw', `{ cat ${q(dyn)}; printf x; } | ${cli} -O raw - ${q(url('footer.raw'))}`, /^vdisk: stdin: the VHD stream \(\d+ bytes\) does not end with its footer/],
    ['cut.raw', `head -c ${statSync(dyn).size - 512} ${q(dyn)} | ${cli} -O raw - ${q(url('cut.raw'))}`, /^vdisk: stdin: the VHD stream \(\d+ bytes\) does not end with its footer/],
    // stdin to a VHD object would need two passes over the stream.
    ['twopass.vhd', `cat ${q(raw)} | ${cli} -f raw --size 24M -O vhd - ${q(url('twopass.vhd'))}`, /^vdisk: a stream read from stdin can be uploaded as raw only/],
    // Wrong credentials: refused before anything is stored.
    ['creds.vhd', `${cli} -f raw -O vhd ${q(raw)} ${q(url('creds.vhd'))}`, /^vdisk: access denied \(S3 [^)]*; check the credentials/, { ...process.env, AWS_SECRET_ACCESS_KEY: 'wrong' }],
    // Malformed targets.
    ['', `${cli} -f raw -O raw ${q(raw)} s3://${BUCKET}`, /^vdisk: missing key in 's3:\/\/vdisk-tests'/],
    ['', `${cli} -f raw -O raw ${q(raw)} s3:///key.raw`, /^vdisk: (missing bucket|malformed URL)/],
    ['', `${cli} -f raw -O raw ${q(raw)} s3://no-such-bucket-here/x.raw`, /^vdisk: no such bucket/],
    ['', `${cli} -f raw -O raw ${q(raw)} gs://bucket/x.raw`, /^vdisk: unknown location scheme 'gs:\/\/'/],
  ] as const) {
    const r = await sh(script, env);
    assert.equal(r.status, 1, `${name} ${script}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, why, script);
    if (name) assert.equal(await exists(`badtarget/${name}`), false, name);
  }
  assert.equal(await uploadsLeft('badtarget/'), 0);
});

test('serve exports an S3 chain over NBD; nbdcopy reads the disk libvhdi reads locally', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi') || !requireTool(t, 'nbdcopy')) return;
  if (!(await ceph(t))) return;
  const dir = join(tmp.dir, 'serve');
  mkdirSync(dir);
  const { files } = makeChain(dir, 'vhdx');
  for (const f of files) await upload(`serve/${f.slice(dir.length + 1)}`, f);
  const server = spawn(process.execPath, [VDISK_BIN, 'serve', '-r', '-p', '0', `s3://${BUCKET}/serve/top.vhdx`], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const address = await new Promise<string>((resolve, reject) => {
      let out = '';
      let err = '';
      server.stdout.on('data', (d) => {
        out += d;
        const m = /listening on (\S+)/.exec(out);
        if (m) resolve(m[1]);
      });
      server.stderr.on('data', (d) => (err += d));
      server.on('exit', (c) => reject(new Error(`serve exited ${c}: ${err}`)));
    });
    const out = join(dir, 'copy.raw');
    const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const c = spawn('nbdcopy', [address.startsWith('nbd') ? address : `nbd://${address}`, out], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d) => (err += d));
      c.on('exit', (code) => resolve({ code, err }));
    });
    assert.equal(r.code, 0, r.err);
    const h = createHash('sha256').update(readFileSync(out)).digest('hex');
    assert.equal(h, chainDigest(files));
  } finally {
    server.kill('SIGTERM');
  }
});

test('S3 bad input: each a clear one-line error', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const c = await ceph(t);
  if (!c) return;
  const raw = join(tmp.dir, 'bad.raw');
  qemuImg('create', '-f', 'raw', raw, '16M');
  qemuIo('raw', raw, 'write -P 0x71 0 16M');
  await upload('bad/disk.raw', raw);
  const open = (u: string) => openChain(u, { readOnly: true, format: 'raw' });
  await assert.rejects(open('s3://'), (e) => isBlockError(e, 'invalid-argument') && /missing bucket|malformed URL/.test(e.message));
  await assert.rejects(open(`s3://${BUCKET}`), (e) => isBlockError(e, 'invalid-argument') && /missing key/.test(e.message));
  await assert.rejects(open(`s3://${BUCKET}/`), (e) => isBlockError(e, 'invalid-argument') && /missing key/.test(e.message));
  await assert.rejects(open('s3://no-such-bucket-here/x.raw'), (e) => isBlockError(e, 'not-found') && /no such bucket/.test(e.message));
  await assert.rejects(open(`s3://${BUCKET}/bad/missing.raw`), (e) => isBlockError(e, 'not-found') && /no such object/.test(e.message));
  await assert.rejects(openChain(`s3://${BUCKET}/bad/disk.raw`, { format: 'raw' }), (e) => isBlockError(e, 'read-only'));
  // Wrong credentials (a child process: the client of this one is set up already).
  const wrong = await new Promise<{ status: number; stderr: string }>((resolve) =>
    execFile(process.execPath, [VDISK_BIN, 'info', `s3://${BUCKET}/bad/disk.raw`], { env: { ...process.env, AWS_SECRET_ACCESS_KEY: 'wrong' } }, (e, _o, stderr) =>
      resolve({ status: e ? Number(e.code) : 0, stderr }),
    ),
  );
  assert.equal(wrong.status, 1);
  assert.match(wrong.stderr, /^vdisk: access denied \(S3 [^)]*; check the credentials[^\n]*\n$/);
  // --s3-endpoint: a malformed one is refused, the right one works without AWS_ENDPOINT_URL.
  const noEnv = { ...process.env, AWS_ENDPOINT_URL: '' };
  const viaOption = await new Promise<{ status: number; stderr: string }>((resolve) =>
    execFile(process.execPath, [VDISK_BIN, 'info', '--s3-endpoint', c.endpoint, `s3://${BUCKET}/bad/disk.raw`], { env: noEnv }, (e, _o, stderr) =>
      resolve({ status: e ? Number(e.code) : 0, stderr }),
    ),
  );
  assert.equal(viaOption.status, 0, viaOption.stderr);
  // An object replaced during a read: an error, not old and new bytes mixed.
  const chain = await open(`s3://${BUCKET}/bad/disk.raw`);
  try {
    await chain.read(0, new Uint8Array(MiB));
    qemuIo('raw', raw, 'write -P 0x72 0 16M');
    await upload('bad/disk.raw', raw);
    await assert.rejects(chain.read(12 * MiB, new Uint8Array(MiB)), (e) => isBlockError(e, 'io') && /changed while it was being read/.test(e.message));
  } finally {
    await chain.close();
  }
  const unknown = vdisk('info', 'gs://bucket/x');
  assert.match(unknown.stderr, /^vdisk: unknown location scheme 'gs:\/\/'/);
});
