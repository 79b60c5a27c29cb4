import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { createServer, type Server } from 'node:http';
import { openChain } from '../src/chain/open.js';
import { isBlockError } from '../src/core/errors.js';
import { setRemoteOptions } from '../src/io/remote-options.js';
import { VDISK_BIN } from './helpers/cli.js';

/*
 * Remote servers that stop answering (a gateway whose store is full holds
 * requests; a proxy drops a connection without closing it): with
 * --remote-timeout (RemoteOptions.timeoutSeconds) a connection that makes no
 * progress for that long is given up and the request tried again, and in
 * the end the read fails with one clear error instead of hanging. HTTP and
 * S3 (the SDK's own handler for HEAD, vdisk's range client for GetObject
 * bodies on http: endpoints). Fake servers on 127.0.0.1: stalling on
 * purpose is not something nginx or Ceph do on request.
 */

const MiB = 1 << 20;
const data = new Uint8Array(4 * MiB).map((_, i) => (i * 7) & 0xff);

function listen<S extends Server | TcpServer>(s: S): Promise<S> {
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve(s)));
}
const portOf = (s: Server | TcpServer): number => (s.address() as { port: number }).port;

/** A server that answers HEAD and small ranges, and for ranges past 1 MiB sends part of the body and then nothing, or (cut) closes the connection. */
function stallingServer(mode: 'stall' | 'cut', counter: { gets: number }): Server {
  const held: Socket[] = [];
  const srv = createServer((req, res) => {
    const headers = { etag: '"e1"', 'last-modified': 'Sat, 28 Nov 2026 00:00:00 GMT', 'accept-ranges': 'bytes' };
    if (req.method === 'HEAD') return res.writeHead(200, { ...headers, 'content-length': data.length }).end();
    counter.gets++;
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '');
    if (!m) return res.writeHead(200, { ...headers, 'content-length': data.length }).end(data);
    const [a, b] = [Number(m[1]), Math.min(Number(m[2]), data.length - 1)];
    res.writeHead(206, { ...headers, 'content-range': `bytes ${a}-${b}/${data.length}`, 'content-length': b - a + 1 });
    if (b < MiB) return res.end(data.subarray(a, b + 1));
    res.write(data.subarray(a, a + Math.ceil((b - a) / 3)), () => {
      if (mode === 'cut') res.destroy();
      else held.push(res.socket!);
    });
  });
  srv.on('close', () => held.forEach((s) => s.destroy()));
  return srv;
}

/** A TCP server that takes connections and never says a word. */
function silentServer(): TcpServer {
  const held: Socket[] = [];
  const srv = createTcpServer((s) => {
    s.on('error', () => {});
    held.push(s);
  });
  srv.on('close', () => held.forEach((s) => s.destroy()));
  return srv;
}

async function readFails(location: string, re: RegExp): Promise<void> {
  const chain = await openChain(location, { readOnly: true, format: 'raw' });
  try {
    await assert.rejects(chain.read(2 * MiB, new Uint8Array(MiB)), (e) => isBlockError(e, 'io') && re.test(e.message));
  } finally {
    await chain.close();
  }
}

test('HTTP: a server that stops mid-body or never answers fails the read after the remote timeout and retries, not never', { timeout: 120_000 }, async (t) => {
  setRemoteOptions({ timeoutSeconds: 0.3 });
  t.after(() => setRemoteOptions({}));
  const counter = { gets: 0 };
  const stalling = await listen(stallingServer('stall', counter));
  const silent = await listen(silentServer());
  try {
    const before = counter.gets;
    await readFails(`http://127.0.0.1:${portOf(stalling)}/x.raw`, /the server sent nothing for 0\.3 s mid-body/);
    assert.ok(counter.gets - before > 1, `tried again before giving up (${counter.gets - before} GETs)`);
    await assert.rejects(openChain(`http://127.0.0.1:${portOf(silent)}/x.raw`, { readOnly: true, format: 'raw' }), (e) => isBlockError(e) && /no answer within 0\.3 s/.test(e.message));
  } finally {
    stalling.close();
    silent.close();
  }
});

test('S3: a gateway that never answers, stops mid-body or closes the connection mid-body is one clear error after retries', { timeout: 120_000 }, async (t) => {
  const env = { AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY };
  process.env.AWS_ACCESS_KEY_ID = 'test';
  process.env.AWS_SECRET_ACCESS_KEY = 'test';
  t.after(() => {
    setRemoteOptions({});
    for (const [k, v] of Object.entries(env)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  const counter = { gets: 0 };
  const stalling = await listen(stallingServer('stall', counter));
  const cutting = await listen(stallingServer('cut', counter));
  const silent = await listen(silentServer());
  try {
    for (const [srv, re] of [
      [stalling, /the server sent nothing for 0\.3 s mid-body/],
      [cutting, /closed the connection mid-body/],
    ] as const) {
      setRemoteOptions({ s3Endpoint: `http://127.0.0.1:${portOf(srv)}`, timeoutSeconds: 0.3 });
      const before = counter.gets;
      await readFails('s3://bucket/x.raw', re);
      assert.ok(counter.gets - before > 1, `tried again before giving up (${counter.gets - before} GETs)`);
    }
    // The SDK's own handler (HEAD): without a timeout it would wait forever.
    setRemoteOptions({ s3Endpoint: `http://127.0.0.1:${portOf(silent)}`, timeoutSeconds: 0.3 });
    await assert.rejects(openChain('s3://bucket/x.raw', { readOnly: true, format: 'raw' }), (e) => isBlockError(e) && /timed out|TimeoutError/.test(e.message));
  } finally {
    stalling.close();
    cutting.close();
    silent.close();
  }
});

function vdiskAsync(env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ stderr: string; status: number }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [VDISK_BIN, ...args], { env: { ...process.env, ...env } }, (e, _stdout, stderr) => resolve({ stderr, status: e ? Number(e.code ?? 1) : 0 }));
  });
}

test('--remote-timeout and VDISK_REMOTE_TIMEOUT: the CLI gives up a silent server in time; a bad value is one clear line', { timeout: 120_000 }, async () => {
  const silent = await listen(silentServer());
  try {
    const r = await vdiskAsync({}, 'info', '--remote-timeout', '0.2', `http://127.0.0.1:${portOf(silent)}/x.vhd`);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /no answer within 0\.2 s/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    const e = await vdiskAsync({ VDISK_REMOTE_TIMEOUT: '0.2' }, 'info', `http://127.0.0.1:${portOf(silent)}/x.vhd`);
    assert.match(e.stderr, /no answer within 0\.2 s/);
  } finally {
    silent.close();
  }
  for (const [env, args, re] of [
    [{}, ['--remote-timeout', 'soon'], /--remote-timeout must be a number of seconds, not 'soon'/],
    [{}, ['--remote-timeout', '0'], /--remote-timeout must be a number of seconds above 0/],
    [{ VDISK_REMOTE_TIMEOUT: '-1' }, [], /VDISK_REMOTE_TIMEOUT must be a number of seconds above 0 and at most 86400, not '-1'/],
  ] as const) {
    const r = await vdiskAsync(env, 'info', ...args, 'http://127.0.0.1:1/x.vhd');
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, re);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
});
