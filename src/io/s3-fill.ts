import { Readable } from 'node:stream';
import type * as S3 from '@aws-sdk/client-s3';
import { RangeClient } from './http-range.js';
import { remoteTimeoutMs } from './remote-options.js';

/**
 * S3 GetObject bodies read straight into the ranged store's buffer
 * (io/ranged-store.ts) on a plain-HTTP endpoint (a gateway on the same
 * host or network: Ceph RGW, MinIO), through vdisk's range client
 * (io/http-range.ts says why: node:http costs twice the CPU of moving the
 * bytes). The SDK still does everything else — endpoint, signing,
 * retries, errors — through its own extension points:
 *
 * - `markFill` adds a middleware to one GetObject command, innermost (the
 *   deserialize step, low priority: after signing), that tags the signed
 *   request with where its body goes;
 * - `FillHandler` wraps the client's request handler: a tagged GET to an
 *   `http:` endpoint goes through the range client, which reads a plain
 *   206 of the size asked into the buffer, and the SDK gets the status and
 *   headers with an empty body; anything else (untagged requests, https,
 *   an error status, an answer of another shape) goes to the SDK's own
 *   handler — a request asked again there, which then reads the answer.
 */
const FILL = Symbol('vdisk.fill');
const MAX_SOCKETS = 8;

export interface Fill {
  into: Uint8Array;
  /** Set when the body went into `into` (the response's Body is empty then). */
  filled: boolean;
}

type Tagged = { [FILL]?: Fill };

interface SdkRequest {
  method: string;
  protocol: string;
  hostname: string;
  port?: number;
  path: string;
  query: Record<string, string | string[] | null>;
  headers: Record<string, string>;
}

/** Tag `command`'s requests with `fill`. */
export function markFill(command: S3.GetObjectCommand, fill: Fill): void {
  command.middlewareStack.add(
    (next) => async (args) => {
      (args.request as Tagged)[FILL] = fill;
      return next(args);
    },
    { step: 'deserialize', priority: 'low', name: 'vdiskFill' },
  );
}

/** RFC 3986 percent-encoding, as the SDK sends a query (and signs it). */
function escape(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function target(r: SdkRequest): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(r.query ?? {})) {
    if (Array.isArray(v)) for (const x of v) parts.push(`${escape(k)}=${escape(x)}`);
    else parts.push(v === null || v === undefined ? escape(k) : `${escape(k)}=${escape(v)}`);
  }
  return parts.length ? `${r.path}?${parts.join('&')}` : r.path;
}

interface Handler {
  handle(request: unknown, options?: unknown): Promise<{ response: unknown }>;
  destroy?(): void;
}

export class FillHandler {
  private readonly clients = new Map<string, RangeClient>();

  constructor(private readonly inner: Handler) {
    // The SDK asks its handler for its metadata and settings too: those of the one wrapped.
    return new Proxy(this, {
      get: (t, key, receiver) => {
        if (key in t) return Reflect.get(t, key, receiver);
        const v: unknown = Reflect.get(inner as object, key);
        return typeof v === 'function' ? v.bind(inner) : v;
      },
    });
  }

  async handle(request: SdkRequest & Tagged, options?: unknown): Promise<{ response: unknown }> {
    const fill = request[FILL];
    if (!fill || request.method !== 'GET' || request.protocol !== 'http:') return this.inner.handle(request, options);
    const port = request.port ?? 80;
    const key = `${request.hostname}:${port}`;
    let client = this.clients.get(key);
    if (!client) {
      client = new RangeClient(request.hostname, port, MAX_SOCKETS, remoteTimeoutMs());
      this.clients.set(key, client);
    }
    const headers = { ...request.headers };
    if (!Object.keys(headers).some((h) => h.toLowerCase() === 'host')) headers.host = request.port ? `${request.hostname}:${request.port}` : request.hostname;
    const a = await client.get(target(request), headers, fill.into);
    if (!a.filled) return this.inner.handle(request, options);
    fill.filled = true;
    return { response: { statusCode: a.status, reason: '', headers: a.headers, body: Readable.from([]) } };
  }

  destroy(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
    this.inner.destroy?.();
  }
}
