import type { Agent as HttpAgent, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { createRequire } from 'node:module';
import { BlockError } from '../core/errors.js';
import type { Host, HostStat } from './host.js';
import { ConnectionError, RangeClient } from './http-range.js';
import { RangedStore, type RangeSource } from './ranged-store.js';
import { remoteOptions, remoteTimeoutMs } from './remote-options.js';
import { parseUrl, urlContained, urlPaths } from './url-paths.js';

/**
 * Images behind a web server, read with range GETs (RFC 9110 §14): see
 * io/ranged-store.ts for the cache, read-ahead and retries. Connections are
 * kept alive and several run at once (an Agent per scheme, MAX_SOCKETS).
 * Every response is checked against the object's ETag (else Last-Modified)
 * seen at open, and asked with If-Match, so an object replaced under a read
 * is an error rather than a disk of mixed old and new bytes. Read-only.
 */
const MAX_SOCKETS = 8;
const MAX_REDIRECTS = 10;

type HttpModule = typeof import('node:http');
const agents = new Map<string, { mod: HttpModule; agent: HttpAgent }>();

/**
 * node:http or node:https and a keep-alive agent, loaded on first use (local
 * work never loads them); by require, which the CLI bundle's vm.Script
 * supports and import() not.
 */
function transport(protocol: string): { mod: HttpModule; agent: HttpAgent } {
  let t = agents.get(protocol);
  if (!t) {
    const mod = createRequire(import.meta.url)(protocol === 'https:' ? 'node:https' : 'node:http') as HttpModule;
    const agent = new mod.Agent({ keepAlive: true, maxSockets: MAX_SOCKETS });
    t = { mod, agent };
    agents.set(protocol, t);
  }
  return t;
}

/** The extra headers: --header (setRemoteOptions), then VDISK_HTTP_HEADERS, one `Name: value` a line. */
function extraHeaders(location: string): Record<string, string> {
  const lines = [...(process.env.VDISK_HTTP_HEADERS ?? '').split(/\r?\n/), ...(remoteOptions().httpHeaders ?? [])];
  const out: Record<string, string> = {};
  for (const line of lines) {
    if (!line.trim()) continue;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new BlockError('invalid-argument', `malformed HTTP header '${line}' (expected 'Name: value')`, { path: location });
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    // A field name is a token and a value has no control characters (RFC 9110 §5.1, §5.5): nothing can end the line early.
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name) || /[\0-\x08\x0a-\x1f\x7f]/.test(value)) {
      throw new BlockError('invalid-argument', `malformed HTTP header '${line}' (a name of letters, digits and -, a value without control characters)`, { path: location });
    }
    out[name] = value;
  }
  return out;
}

interface Answer {
  res: IncomingMessage;
  url: URL;
}

async function get(url: URL, headers: OutgoingHttpHeaders): Promise<IncomingMessage> {
  const { mod, agent } = transport(url.protocol);
  return new Promise((resolve, reject) => {
    const req = mod.request(url, { method: 'GET', headers, agent }, resolve);
    const timeout = remoteTimeoutMs();
    req.setTimeout(timeout, () => req.destroy(new Error(`no answer within ${timeout / 1000} s`)));
    req.on('error', reject);
    req.end();
  });
}

/** A status that says what it is: final (a BlockError) or worth another try (a plain Error). */
function statusError(res: IncomingMessage, location: string): Error {
  const s = res.statusCode ?? 0;
  res.resume();
  if (s === 404 || s === 410) return new BlockError('not-found', `no such file (HTTP ${s})`, { path: location });
  if (s === 401 || s === 403) return new BlockError('io', `access denied (HTTP ${s}; give credentials with --header or VDISK_HTTP_HEADERS)`, { path: location });
  if (s === 412) return changed(location, 'the server refused If-Match (HTTP 412)');
  if (s === 429 || s >= 500) return new Error(`HTTP ${s}`);
  return new BlockError('io', `unexpected answer HTTP ${s} ${res.statusMessage ?? ''}`.trim(), { path: location });
}

function changed(location: string, why: string): BlockError {
  return new BlockError('io', `the file changed while it was being read (${why}); read it again`, { path: location, operation: 'read' });
}

/** GET with redirects followed (each a new URL; a loop or too many is an error). */
async function getFollowing(start: URL, headers: OutgoingHttpHeaders, location: string): Promise<Answer> {
  const seen = new Set<string>();
  let url = start;
  for (;;) {
    const res = await get(url, headers);
    const s = res.statusCode ?? 0;
    if (![301, 302, 303, 307, 308].includes(s)) return { res, url };
    res.resume();
    const to = res.headers.location;
    if (!to) throw new BlockError('io', `HTTP ${s} redirect without a Location`, { path: location });
    seen.add(url.href);
    url = new URL(to, url);
    if (seen.has(url.href)) throw new BlockError('io', `redirect loop (back to ${url.href})`, { path: location });
    if (seen.size >= MAX_REDIRECTS) throw new BlockError('io', `more than ${MAX_REDIRECTS} redirects`, { path: location });
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new BlockError('io', `redirected to a non-HTTP URL (${url.href})`, { path: location });
  }
}

/** Read a body of exactly `into.length` bytes into `into`; a body cut short is a transient failure (a retry may get it whole). */
function readBody(res: IncomingMessage, into: Uint8Array, location: string): Promise<void> {
  const length = into.length;
  return new Promise((resolve, reject) => {
    let got = 0;
    res.on('data', (chunk: Buffer) => {
      if (got + chunk.length > length) {
        res.destroy();
        reject(new BlockError('io', `the server sent more than the ${length} bytes asked`, { path: location }));
        return;
      }
      into.set(chunk, got);
      got += chunk.length;
    });
    res.on('end', () => (got === length ? resolve() : reject(truncated(location, got, length))));
    res.on('error', () => reject(truncated(location, got, length)));
    res.on('aborted', () => reject(truncated(location, got, length)));
  });
}

function truncated(location: string, got: number, length: number): BlockError {
  return new BlockError('io', `the server closed the connection mid-body (${got} of ${length} bytes)`, { path: location, operation: 'read', transient: true });
}

/** `bytes a-b/total` → its numbers. */
function contentRange(res: { headers: { 'content-range'?: string } }): { start?: number; end?: number; total?: number } {
  const m = /^bytes (?:(\d+)-(\d+)|\*)\/(\d+|\*)$/.exec(res.headers['content-range'] ?? '');
  if (!m) return {};
  return { start: m[1] === undefined ? undefined : Number(m[1]), end: m[2] === undefined ? undefined : Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) };
}

interface Probe {
  url: URL;
  size: number;
  etag?: string;
  lastModified?: string;
}

/** Ask for byte 0: the size, the validators and whether the server does ranges at all. */
async function probe(location: string): Promise<Probe> {
  const start = parseUrl(location, ['http:', 'https:']);
  const headers = { ...extraHeaders(location), range: 'bytes=0-0' };
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
    try {
      const { res, url } = await getFollowing(start, headers, location);
      const s = res.statusCode ?? 0;
      const validators = { etag: res.headers.etag, lastModified: res.headers['last-modified'] };
      if (s === 200) {
        res.destroy();
        throw new BlockError('unsupported', 'the server does not support range requests (it answered a Range request with the whole file); vdisk reads images over HTTP by ranges', { path: location });
      }
      if (s === 416) {
        res.resume();
        const { total } = contentRange(res);
        if (total === 0) return { url, size: 0, ...validators };
      }
      if (s !== 206) throw statusError(res, location);
      const { total } = contentRange(res);
      res.resume();
      if (total === undefined) throw new BlockError('unsupported', 'the server does not say the file size (Content-Range without a length)', { path: location });
      return { url, size: total, ...validators };
    } catch (e) {
      lastError = e;
      if (e instanceof BlockError) throw e;
    }
  }
  const why = lastError instanceof Error ? lastError.message : String(lastError);
  throw new BlockError('io', `cannot reach the server: ${why}`, { path: location }, { cause: lastError });
}

/** Headers of a range answer that say which bytes of which version of the file came. */
interface AnswerHeaders {
  etag?: string;
  'last-modified'?: string;
  'content-range'?: string;
}

/** What is wrong with a 206 answer to bytes [offset, offset+length): a changed file, the wrong bytes; undefined when nothing. */
function judge(h: AnswerHeaders, p: Probe, offset: number, length: number, location: string): BlockError | undefined {
  if (p.etag !== undefined && h.etag !== p.etag) return changed(location, `ETag ${p.etag} is now ${h.etag ?? 'gone'}`);
  if (p.lastModified !== undefined && h['last-modified'] !== p.lastModified) return changed(location, `Last-Modified ${p.lastModified} is now ${h['last-modified'] ?? 'gone'}`);
  const r = contentRange({ headers: h });
  if (r.total !== p.size) return changed(location, `its size ${p.size} is now ${r.total ?? 'unknown'}`);
  if (r.start !== offset || r.end !== offset + length - 1) return new BlockError('io', `the server sent bytes ${r.start}-${r.end} for a request of ${offset}-${offset + length - 1}`, { path: location });
  return undefined;
}

function rangeSource(location: string, p: Probe): RangeSource {
  const base = extraHeaders(location);
  // If-Match needs a strong ETag (RFC 9110 §13.1.1); with a weak one or none, the date is the check.
  const strong = p.etag && !p.etag.startsWith('W/') ? p.etag : undefined;
  const conditional: Record<string, string> = strong ? { 'if-match': strong } : p.lastModified ? { 'if-unmodified-since': p.lastModified } : {};
  // Plain HTTP: the data through vdisk's own range client (io/http-range.ts says why); TLS through node:https.
  const fast = p.url.protocol === 'http:' ? new RangeClient(p.url.hostname, Number(p.url.port || 80), MAX_SOCKETS, remoteTimeoutMs()) : undefined;
  const target = `${p.url.pathname}${p.url.search}`;
  return {
    async fetch(offset, into) {
      const length = into.length;
      const headers = { ...base, ...conditional, range: `bytes=${offset}-${offset + length - 1}` };
      if (fast) {
        let a;
        try {
          a = await fast.get(target, { host: p.url.host, ...headers }, into);
        } catch (e) {
          // Retried by the ranged store; a body cut short (closed, or stalled past the timeout) says so.
          if (e instanceof ConnectionError && e.got !== undefined) throw new BlockError('io', e.message, { path: location, operation: 'read', transient: true });
          throw e;
        }
        if (a.filled) {
          const wrong = judge(a.headers, p, offset, length, location);
          if (wrong) throw wrong;
          return;
        }
        // Anything but a plain 206 of the bytes asked: asked again below, where node:http reads the answer and says what it is.
      }
      const res = await get(p.url, headers);
      if (res.statusCode !== 206) {
        if (res.statusCode === 200) {
          res.destroy();
          throw changed(location, 'the server answered a range request with a whole file');
        }
        throw statusError(res, location);
      }
      const wrong = judge(res.headers, p, offset, length, location);
      if (wrong) {
        res.destroy();
        throw wrong;
      }
      return readBody(res, into, location);
    },
    close: async () => fast?.close(),
  };
}

export const httpHost: Host = {
  name: 'HTTP',
  async open(location, options) {
    if (options.create || !options.readOnly) {
      throw new BlockError('read-only', 'images over HTTP(S) are read-only (open them read-only; serve: --read-only)', { path: location, operation: options.create ? 'create' : 'open' });
    }
    const p = await probe(location);
    return new RangedStore(new URL(location).href, p.size, rangeSource(location, p));
  },
  paths: urlPaths,
  identity: async (location) => new URL(location).href,
  async stat(location): Promise<HostStat | undefined> {
    try {
      const p = await probe(location);
      return { size: p.size, mtime: p.lastModified ? new Date(p.lastModified) : undefined };
    } catch {
      return undefined;
    }
  },
  contained: urlContained,
};
