import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { mkdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { openChain } from '../src/chain/open.js';
import { isBlockError } from '../src/core/errors.js';
import { convert } from '../src/ops/convert.js';
import { imageInfo } from '../src/ops/info.js';
import { setRemoteOptions } from '../src/io/remote-options.js';
import { vdisk, VDISK_BIN } from './helpers/cli.js';
import { startNginx, type Nginx } from './helpers/nginx.js';
import { qemuImg, qemuIo, requireTool, tempDir, vdiskDigest } from './helpers/oracle.js';
import { chainDigest, makeChain, makeEveryFormat, MiB } from './helpers/remote-fixtures.js';

/*
 * Images behind a real web server (nginx from Debian, test/helpers/nginx.ts):
 * chains whose parents are found in the same URL folder, every format
 * converted from HTTP to a local file, and the ways a server can fail.
 */

const tmp = tempDir('vdisk-http-');
const www = join(tmp.dir, 'www');
mkdirSync(www);
let server: Nginx | undefined;
let started: Promise<Nginx | undefined> | undefined;

after(() => {
  server?.stop();
  tmp.cleanup();
});

/** nginx for this file, started by the first test that needs it (a test context is needed to skip). */
async function nginx(t: Parameters<typeof startNginx>[0]): Promise<Nginx | undefined> {
  started ??= startNginx(t, www);
  server = await started;
  return server;
}

before(() => setRemoteOptions({}));

for (const format of ['vhdx', 'vhd'] as const) {
  const ext = format;
  test(`a ${format} chain (base + 2 children) over HTTP reads as libvhdi reads the local files`, async (t) => {
    if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
    const s = await nginx(t);
    if (!s) return;
    const dir = join(www, `chain-${format}`);
    mkdirSync(dir);
    const { top, files } = makeChain(dir, format);
    const url = `${s.url}/chain-${format}/top.${ext}`;
    const infos = await imageInfo(url, { backingChain: true });
    assert.deepEqual(
      infos.map((i) => i.filename),
      files.map((f) => `${s.url}/chain-${format}/${f.slice(dir.length + 1)}`).reverse(),
    );
    assert.equal(infos[0].format, format);
    const remote = await vdiskDigest(url);
    assert.equal(remote.digest, chainDigest(files));
    // The CLI too: info, map and compare take the URL.
    const cli = vdisk('info', '--backing-chain', '--output=json', url);
    assert.equal(cli.status, 0, cli.stderr);
    assert.equal(JSON.parse(cli.stdout).length, 3);
    const cmp = vdisk('compare', url, top);
    assert.equal(cmp.status, 0, cmp.stderr + cmp.stdout);
    const map = vdisk('map', '--output=json', url);
    assert.equal(map.status, 0, map.stderr);
    assert.ok(JSON.parse(map.stdout).some((e: { depth: number; data: boolean }) => e.depth === 2 && e.data), 'map shows data from the base');
  });
}

test('every format converts from HTTP to a local raw that qemu-img finds identical to the source', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const s = await nginx(t);
  if (!s) return;
  const dir = join(www, 'every');
  mkdirSync(dir);
  const out = tempDir('vdisk-http-out-');
  try {
    for (const { name, format } of makeEveryFormat(dir)) {
      const target = join(out.dir, `${name}.raw`);
      const r = vdisk('convert', '-O', 'raw', `${s.url}/every/${name}`, target);
      assert.equal(r.status, 0, `${name}: ${r.stderr}`);
      qemuImg('compare', '-f', 'raw', '-F', 'raw', join(dir, 'src.raw'), target);
      // check and measure accept the URL as well.
      // raw has no structure to check: 63, as qemu-img check says for it.
      assert.equal(vdisk('check', `${s.url}/every/${name}`).status, format === 'raw' ? 63 : 0, name);
      const m = vdisk('measure', '-O', 'vhdx', `${s.url}/every/${name}`);
      assert.equal(m.status, 0, `${format}: ${m.stderr}`);
    }
  } finally {
    out.cleanup();
  }
});

test('a parent named outside the child\'s URL folder is refused; one beside it is found', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const s = await nginx(t);
  if (!s) return;
  mkdirSync(join(www, 'out', 'sub'), { recursive: true });
  qemuImg('create', '-f', 'vhdx', join(www, 'out', 'base.vhdx'), '4M');
  const made = vdisk('create', '-f', 'vhdx', '-b', '../base.vhdx', '-F', 'vhdx', '--allow-path', join(www, 'out'), join(www, 'out', 'sub', 'child.vhdx'));
  assert.equal(made.status, 0, made.stderr);
  await assert.rejects(openChain(`${s.url}/out/sub/child.vhdx`, { readOnly: true }), (e) => isBlockError(e, 'invalid-argument') && /leads out of the image's folder/.test(e.message));
  const c = await openChain(`${s.url}/out/sub/child.vhdx`, { readOnly: true, allowPaths: [`${s.url}/out/`] });
  assert.equal(c.layers.length, 2);
  await c.close();
});

test('HTTP failures are one clear BlockError each', async (t) => {
  const s = await nginx(t);
  if (!s) return;
  writeFileSync(join(www, 'small.raw'), new Uint8Array(MiB));
  const open = (u: string) => openChain(u, { readOnly: true, format: 'raw' });
  await assert.rejects(open(`${s.url}/missing.raw`), (e) => isBlockError(e, 'not-found') && /HTTP 404/.test(e.message));
  await assert.rejects(open(`${s.url}/private/x.raw`), (e) => isBlockError(e, 'io') && /access denied \(HTTP 403/.test(e.message));
  await assert.rejects(open(`${s.url}/loop/x`), (e) => isBlockError(e, 'io') && /redirect loop/.test(e.message));
  await assert.rejects(open('http://[::1'), (e) => isBlockError(e, 'invalid-argument') && /malformed URL/.test(e.message));
  await assert.rejects(open('ftp://127.0.0.1/x.raw'), (e) => isBlockError(e, 'invalid-argument') && /unknown location scheme 'ftp:\/\/'/.test(e.message));
  await assert.rejects(openChain(`${s.url}/small.raw`, { format: 'raw' }), (e) => isBlockError(e, 'read-only'));
  const cli = vdisk('info', `${s.url}/missing.raw`);
  assert.equal(cli.status, 1);
  assert.match(cli.stderr, /^vdisk: no such file \(HTTP 404\) \(http:\/\/127\.0\.0\.1:\d+\/missing\.raw\)\n$/);
});

test('a file replaced during a read is an error, not a mix of old and new bytes', async (t) => {
  const s = await nginx(t);
  if (!s) return;
  const p = join(www, 'changing.raw');
  writeFileSync(p, new Uint8Array(16 * MiB).fill(1));
  const chain = await openChain(`${s.url}/changing.raw`, { readOnly: true, format: 'raw' });
  try {
    const first = new Uint8Array(MiB);
    await chain.read(0, first);
    assert.equal(first[0], 1);
    // Same size, new content and a new modification time: nginx's ETag changes with the time.
    writeFileSync(p, new Uint8Array(16 * MiB).fill(2));
    utimesSync(p, new Date(), new Date(Date.now() + 5000));
    await assert.rejects(chain.read(12 * MiB, new Uint8Array(MiB)), (e) => isBlockError(e, 'io') && /changed while it was being read/.test(e.message));
  } finally {
    await chain.close();
  }
});

test('--header and VDISK_HTTP_HEADERS send credentials', async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  // A server of this test's own that wants a bearer token (nginx's config is fixed per run).
  const img = tempDir('vdisk-http-auth-');
  const file = join(img.dir, 'a.vhdx');
  qemuImg('create', '-f', 'vhdx', file, '8M');
  const bytes = readFileSync(file);
  const srv = await serve((req, res) => {
    if (req.headers.authorization !== 'Bearer s3cret') return res.writeHead(401).end();
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!;
    const [a, b] = [Number(m[1]), Math.min(Number(m[2]), bytes.length - 1)];
    res.writeHead(206, { 'content-range': `bytes ${a}-${b}/${bytes.length}`, etag: '"v1"' }).end(bytes.subarray(a, b + 1));
  });
  try {
    const url = `http://127.0.0.1:${port(srv)}/a.vhdx`;
    // The CLI runs as a child process while this process serves (spawnSync would block the server).
    const denied = await vdiskAsync('info', url);
    assert.match(denied.stderr, /access denied \(HTTP 401/);
    const ok = await vdiskAsync('info', '--header', 'Authorization: Bearer s3cret', '--output=json', url);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(JSON.parse(ok.stdout)['virtual-size'], 8 * MiB);
    process.env.VDISK_HTTP_HEADERS = 'Authorization: Bearer s3cret';
    try {
      assert.equal((await vdiskDigest(url)).size, 8 * MiB);
    } finally {
      delete process.env.VDISK_HTTP_HEADERS;
    }
  } finally {
    srv.close();
    img.cleanup();
  }
});

test('a server without ranges, and one that cuts bodies short, are clear errors', async () => {
  const data = new Uint8Array(4 * MiB).fill(7);
  const noRanges = await serve((_req, res) => res.writeHead(200, { 'content-length': data.length }).end(data));
  let requests = 0;
  const cutting = await serve((req, res) => {
    requests++;
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!;
    const [a, b] = [Number(m[1]), Math.min(Number(m[2]), data.length - 1)];
    res.writeHead(206, { 'content-range': `bytes ${a}-${b}/${data.length}`, 'content-length': b - a + 1, etag: '"e"' });
    // The first bytes only, then the connection goes.
    if (b > a) res.write(data.subarray(a, a + Math.ceil((b - a) / 2)), () => res.destroy());
    else res.end(data.subarray(a, b + 1));
  });
  try {
    await assert.rejects(
      openChain(`http://127.0.0.1:${port(noRanges)}/x.raw`, { readOnly: true, format: 'raw' }),
      (e) => isBlockError(e, 'unsupported') && /does not support range requests/.test(e.message),
    );
    const chain = await openChain(`http://127.0.0.1:${port(cutting)}/x.raw`, { readOnly: true, format: 'raw' });
    try {
      const before = requests;
      await assert.rejects(chain.read(2 * MiB, new Uint8Array(MiB)), (e) => isBlockError(e, 'io') && /closed the connection mid-body/.test(e.message));
      assert.ok(requests - before > 1, 'retried before giving up');
    } finally {
      await chain.close();
    }
  } finally {
    noRanges.close();
    cutting.close();
  }
});

test('convert reads an HTTP source in parallel and the result matches (library)', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const s = await nginx(t);
  if (!s) return;
  const src = join(www, 'big.vhdx');
  const raw = join(tmp.dir, 'big-src.raw');
  qemuImg('create', '-f', 'raw', raw, '64M');
  qemuIo('raw', raw, ...[0, 7, 20, 21, 22, 40, 63].map((at, i) => `write -P ${0x50 + i} ${at}M 1M`));
  qemuImg('convert', '-f', 'raw', '-O', 'vhdx', raw, src);
  const out = join(tmp.dir, 'big-out.raw');
  await convert({ source: `${s.url}/big.vhdx`, target: out, targetFormat: 'raw' });
  qemuImg('compare', '-f', 'raw', '-F', 'raw', raw, out);
});

/** A range server over `bytes` that counts what it is asked; `answer` may change how it answers. */
function rangeServer(bytes: Uint8Array, answer?: (n: number, res: import('node:http').ServerResponse, part: Uint8Array, headers: Record<string, string | number>) => boolean) {
  const seen = { requests: 0, bytes: 0, largest: 0, connections: 0 };
  const srv = serve((req, res) => {
    const n = seen.requests++;
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!;
    const [a, b] = [Number(m[1]), Math.min(Number(m[2]), bytes.length - 1)];
    const part = bytes.subarray(a, b + 1);
    seen.bytes += part.length;
    seen.largest = Math.max(seen.largest, part.length);
    const headers = { 'content-range': `bytes ${a}-${b}/${bytes.length}`, 'content-length': part.length, etag: '"v1"' };
    if (answer?.(n, res, part, headers)) return;
    res.writeHead(206, headers).end(part);
  });
  void srv.then((s) => s.on('connection', () => seen.connections++));
  return { srv, seen };
}

test('a convert over HTTP asks few large ranges over a few kept-alive connections (counting server)', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const raw = join(tmp.dir, 'count-src.raw');
  const src = join(tmp.dir, 'count.vhdx');
  qemuImg('create', '-f', 'raw', raw, '192M');
  qemuIo('raw', raw, 'write -P 0x31 0 40M', 'write -P 0x32 64M 64M', 'write -P 0x33 160M 8M');
  qemuImg('convert', '-f', 'raw', '-O', 'vhdx', raw, src);
  const bytes = readFileSync(src);
  const { srv, seen } = rangeServer(bytes);
  const s = await srv;
  try {
    const out = join(tmp.dir, 'count-out.raw');
    await convert({ source: `http://127.0.0.1:${port(s)}/count.vhdx`, target: out, targetFormat: 'raw' });
    qemuImg('compare', '-f', 'raw', '-F', 'raw', raw, out);
  } finally {
    s.close();
  }
  // 112 MiB of data in the file: streamed in requests of up to 8 MiB, a handful smaller ones for the metadata and the stream's start.
  assert.ok(seen.largest <= 8 * MiB, `largest range ${seen.largest}`);
  assert.ok(seen.requests <= Math.ceil(bytes.length / (8 * MiB)) + 12, `${seen.requests} requests for ${bytes.length} bytes`);
  assert.ok(seen.bytes <= bytes.length + 16 * MiB, `${seen.bytes} bytes sent for a ${bytes.length}-byte file`);
  // The open's probe through node:http, then the range client's connections (at most 8), each used for many requests.
  assert.ok(seen.connections <= 9, `${seen.connections} connections`);
});

test('answers other than a plain 206 (chunked, Connection: close, a 503) still read right', async () => {
  const bytes = new Uint8Array(24 * MiB);
  for (let i = 0; i < bytes.length; i += 4096) bytes[i] = (i / 4096) & 0xff;
  const read = async (url: string) => {
    const chain = await openChain(url, { readOnly: true, format: 'raw' });
    try {
      const buf = new Uint8Array(bytes.length);
      for (let at = 0; at < buf.length; at += 2 * MiB) await chain.read(at, buf.subarray(at, at + 2 * MiB));
      assert.ok(Buffer.from(buf).equals(bytes));
    } finally {
      await chain.close();
    }
  };
  // Bodies in chunked transfer coding (no Content-Length): asked again through node:http, which decodes them.
  const chunked = rangeServer(bytes, (_n, res, part, headers) => {
    res.writeHead(206, Object.fromEntries(Object.entries(headers).filter(([k]) => k !== 'content-length')));
    res.write(part.subarray(0, 1));
    res.end(part.subarray(1));
    return true;
  });
  // Every answer closes its connection.
  const closing = rangeServer(bytes, (_n, res, part, headers) => {
    res.writeHead(206, { ...headers, connection: 'close' }).end(part);
    return true;
  });
  // Every third answer is a 503: tried again.
  const busy = rangeServer(bytes, (n, res) => {
    if (n % 3 !== 2) return false;
    res.writeHead(503).end();
    return true;
  });
  const servers = await Promise.all([chunked.srv, closing.srv, busy.srv]);
  try {
    for (const s of servers) await read(`http://127.0.0.1:${port(s)}/x.raw`);
  } finally {
    for (const s of servers) s.close();
  }
  assert.ok(closing.seen.connections >= closing.seen.requests, 'a connection per answer');
  assert.ok(busy.seen.requests > 8, 'the 503s were asked again');
});

test('an HTTP header with a control character in it is refused before anything is sent', async () => {
  setRemoteOptions({ httpHeaders: ['X-Token: a\rInjected: yes'] });
  try {
    await assert.rejects(openChain('http://127.0.0.1:9/x.raw', { readOnly: true, format: 'raw' }), (e) => isBlockError(e, 'invalid-argument') && /malformed HTTP header/.test(e.message));
  } finally {
    setRemoteOptions({});
  }
});

function vdiskAsync(...args: string[]): Promise<{ stdout: string; stderr: string; status: number }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [VDISK_BIN, ...args], (e, stdout, stderr) => resolve({ stdout, stderr, status: e ? Number(e.code ?? 1) : 0 }));
  });
}

function serve(handler: Parameters<typeof createServer>[1]): Promise<Server> {
  return new Promise((resolve) => {
    const s = createServer(handler!);
    s.listen(0, '127.0.0.1', () => resolve(s));
  });
}

function port(s: Server): number {
  return (s.address() as { port: number }).port;
}
