import type { Readable } from 'node:stream';
import { BlockError } from '../core/errors.js';
import type { Host, HostStat } from './host.js';
import { RangedStore, type RangeSource } from './ranged-store.js';
import { s3Client, s3Error, s3Final, s3Object, s3Sdk } from './s3-client.js';
import { markFill, type Fill } from './s3-fill.js';
import { openS3Sink } from './s3-sink.js';
import { urlContained, urlPaths } from './url-paths.js';

/**
 * Images in S3 (and S3-compatible stores: Ceph RGW, MinIO), read with
 * ranged GetObject requests, several at once (io/ranged-store.ts: cache,
 * read-ahead, retries), each asked with If-Match on the ETag HeadObject
 * gave at open and checked against it, so an object replaced under a read
 * is an error. New objects are written by multipart upload (io/s3-sink.ts);
 * an object is never written in place (S3 has no such thing).
 */

interface Head {
  size: number;
  etag?: string;
  mtime?: Date;
}

async function head(location: string): Promise<Head> {
  const { bucket, key } = s3Object(location);
  const sdk = s3Sdk();
  const client = s3Client();
  try {
    const r = await client.send(new sdk.HeadObjectCommand({ Bucket: bucket, Key: key }));
    return { size: r.ContentLength ?? 0, etag: r.ETag, mtime: r.LastModified };
  } catch (e) {
    const m = s3Final(e, location, 'open');
    // HEAD answers carry no body: a 404 does not say whether the bucket or the object is missing.
    if (m.kind === 'not-found') {
      try {
        await client.send(new sdk.HeadBucketCommand({ Bucket: bucket }));
      } catch (b) {
        const mb = s3Error(b, location, 'open');
        if (mb instanceof BlockError && mb.kind === 'not-found') throw new BlockError('not-found', `no such bucket '${bucket}'`, { path: location, operation: 'open' }, { cause: b });
      }
    }
    throw m;
  }
}

/**
 * Read a body of exactly `out.length` bytes into `out`. By 'data' events
 * rather than `for await`: the async iterator costs a promise and a
 * microtask turn per socket read (64 KiB), measurable at a GiB.
 */
function readBody(body: Readable, out: Uint8Array): Promise<void> {
  const length = out.length;
  return new Promise((resolve, reject) => {
    let got = 0;
    body.on('data', (chunk: Uint8Array) => {
      if (got + chunk.length > length) {
        body.destroy();
        reject(new Error(`S3 sent more than the ${length} bytes asked`));
        return;
      }
      out.set(chunk, got);
      got += chunk.length;
    });
    body.on('end', () => (got === length ? resolve() : reject(new Error(`the body ended after ${got} of ${length} bytes`))));
    body.on('error', (e) => reject(e));
    body.on('aborted', () => reject(new Error(`the body ended after ${got} of ${length} bytes`)));
  });
}

function rangeSource(location: string, h: Head): RangeSource {
  const { bucket, key } = s3Object(location);
  const sdk = s3Sdk();
  const client = s3Client();
  return {
    async fetch(offset, into) {
      const length = into.length;
      let r;
      const fill: Fill = { into, filled: false };
      try {
        const command = new sdk.GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=${offset}-${offset + length - 1}`, IfMatch: h.etag });
        markFill(command, fill);
        r = await client.send(command);
      } catch (e) {
        throw s3Error(e, location, 'read');
      }
      const body = r.Body as Readable;
      if (h.etag !== undefined && r.ETag !== h.etag) {
        body.destroy();
        throw new BlockError('io', `the object changed while it was being read (ETag ${h.etag} is now ${r.ETag ?? 'gone'}); read it again`, { path: location, operation: 'read' });
      }
      const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(r.ContentRange ?? '');
      if (!range || Number(range[1]) !== offset || Number(range[2]) !== offset + length - 1 || Number(range[3]) !== h.size) {
        body.destroy();
        throw new BlockError('io', `S3 answered bytes ${offset}-${offset + length - 1} with '${r.ContentRange ?? 'no Content-Range'}'`, { path: location, operation: 'read' });
      }
      if (fill.filled) body.destroy();
      else await readBody(body, into);
    },
  };
}

export const s3Host: Host = {
  name: 'S3',
  async open(location, options) {
    s3Object(location); // a malformed location fails before anything else
    if (options.create || !options.readOnly) {
      throw new BlockError('read-only', 'S3 objects are read-only here (open them read-only; new objects are written by convert, serve: --read-only)', {
        path: location,
        operation: options.create ? 'create' : 'open',
      });
    }
    const h = await head(location);
    return new RangedStore(new URL(location).href, h.size, rangeSource(location, h));
  },
  paths: urlPaths,
  identity: async (location) => new URL(location).href,
  async stat(location): Promise<HostStat | undefined> {
    try {
      const h = await head(location);
      return { size: h.size, mtime: h.mtime };
    } catch {
      return undefined;
    }
  },
  contained: urlContained,
  createSink: openS3Sink,
};
