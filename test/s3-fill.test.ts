import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { test } from 'node:test';
import { FillHandler, markFill, type Fill } from '../src/io/s3-fill.js';
import { s3Sdk } from '../src/io/s3-client.js';

/*
 * The S3 request handler that reads GetObject range bodies straight into a
 * buffer (io/s3-fill.ts), against a plain node:http server and a stand-in
 * for the SDK's own handler: which requests it takes, which it hands on,
 * and that the tag reaches the handler through a real command's middleware.
 */

const bytes = new Uint8Array(3 << 20).map((_, i) => (i * 13) & 0xff);

function server(): Promise<{ srv: Server; seen: string[] }> {
  const seen: string[] = [];
  return new Promise((resolve) => {
    const srv = createServer((req, res) => {
      seen.push(`${req.method} ${req.url} ${req.headers.range ?? ''} ${req.headers['x-amz-date'] ?? ''}`);
      if (req.url?.startsWith('/missing')) return res.writeHead(404, { 'content-length': 0 }).end();
      const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!;
      const part = bytes.subarray(Number(m[1]), Number(m[2]) + 1);
      res.writeHead(206, { 'content-range': `bytes ${m[1]}-${m[2]}/${bytes.length}`, 'content-length': part.length, etag: '"e1"' }).end(part);
    });
    srv.listen(0, '127.0.0.1', () => resolve({ srv, seen }));
  });
}

test('a tagged GET is read into its buffer; untagged requests and error answers go to the SDK handler', async () => {
  const { srv, seen } = await server();
  const port = (srv.address() as { port: number }).port;
  const inner: string[] = [];
  const handler = new FillHandler({
    handle: async (request: unknown) => {
      inner.push((request as { path: string }).path);
      return { response: { statusCode: 599, headers: {} } };
    },
  });
  const request = (path: string, fill?: Fill) => {
    const r = { method: 'GET', protocol: 'http:', hostname: '127.0.0.1', port, path, query: { 'x-id': 'GetObject' }, headers: { range: 'bytes=1000-1000999', 'x-amz-date': '20261128T000000Z' } };
    if (fill) markFillOn(r, fill);
    return r;
  };
  try {
    const fill: Fill = { into: new Uint8Array(1_000_000), filled: false };
    const { response } = (await handler.handle(request('/b/k', fill))) as { response: { statusCode: number; headers: Record<string, string> } };
    assert.equal(response.statusCode, 206);
    assert.equal(response.headers.etag, '"e1"');
    assert.ok(fill.filled);
    assert.ok(Buffer.from(fill.into).equals(bytes.subarray(1000, 1_001_000)));
    // Sent as signed: the path and query as given, the headers untouched.
    assert.equal(seen[0], 'GET /b/k?x-id=GetObject bytes=1000-1000999 20261128T000000Z');
    assert.deepEqual(inner, []);

    await handler.handle(request('/b/plain'));
    const missing: Fill = { into: new Uint8Array(1_000_000), filled: false };
    await handler.handle(request('/missing/k', missing));
    assert.equal(missing.filled, false);
    assert.deepEqual(inner, ['/b/plain', '/missing/k']);
  } finally {
    handler.destroy();
    srv.close();
  }
});

test("markFill tags a GetObject command's signed request for the handler", async () => {
  const sdk = s3Sdk();
  const command = new sdk.GetObjectCommand({ Bucket: 'b', Key: 'k', Range: 'bytes=0-9' });
  const fill: Fill = { into: new Uint8Array(10), filled: false };
  markFill(command, fill);
  let tagged: unknown;
  const client = new sdk.S3Client({ region: 'us-east-1', endpoint: 'http://127.0.0.1:9', forcePathStyle: true, credentials: { accessKeyId: 'a', secretAccessKey: 's' }, maxAttempts: 1 });
  const config = client.config as { requestHandler: unknown };
  config.requestHandler = {
    handle: async (request: { headers: Record<string, string> }) => {
      tagged = Object.getOwnPropertySymbols(request).map((s) => (request as unknown as Record<symbol, unknown>)[s]);
      assert.ok(request.headers.authorization?.startsWith('AWS4-HMAC-SHA256'), 'signed before the tag is read');
      return { response: { statusCode: 206, headers: { 'content-range': 'bytes 0-9/10', etag: '"x"' }, body: (await import('node:stream')).Readable.from([]) } };
    },
  };
  try {
    await client.send(command);
  } finally {
    client.destroy();
  }
  assert.deepEqual(tagged, [fill]);
});

/** Tag a request made by hand as markFill's middleware tags the SDK's: that middleware run alone on it. */
function markFillOn(request: object, fill: Fill): void {
  type Middleware = (next: (args: unknown) => Promise<unknown>) => (args: { request: object }) => Promise<unknown>;
  let middleware: Middleware | undefined;
  const command = { middlewareStack: { add: (m: Middleware) => (middleware = m) } };
  markFill(command as unknown as Parameters<typeof markFill>[0], fill);
  void middleware!(async () => ({}))({ request });
}
