import { createHash } from 'node:crypto';
import type { PageBlobClient } from '@azure/storage-blob';
import { BlockError } from '../core/errors.js';
import type { HostRange, Store } from './store.js';

/**
 * A Store over an Azure page blob (Azure Storage REST API, "Put Page",
 * "Get Page Ranges"): the bytes of a fixed VHD as Azure keeps a disk.
 *
 * Reads fetch only the ranges the service reports as written (List Page
 * Ranges, asked once per store); the rest of a page blob reads as zeros by
 * definition, so a 127 GiB disk holding 5 GiB costs 5 GiB of transfer.
 * `allocation()` hands those ranges to the format, and convert skips the
 * holes without reading them (formats/vhd/image.ts blockStatus).
 *
 * Writes are Put Page requests: 512-byte aligned, at most 4 MiB each, each
 * with its MD5 (Content-MD5: the service refuses a body that arrived
 * damaged). Callers keep several in flight. A Put Page is durable once
 * acknowledged, so flush() has nothing to wait for.
 */

/** Page blobs are made of 512-byte pages; every write and size is a whole number of them. */
export const PAGE = 512;
/** Most bytes one Put Page request may carry. */
export const MAX_PUT = 4 << 20;
/** Most bytes one ranged download asks for (a bounded buffer per request). */
const MAX_GET = 8 << 20;

export interface PageRange {
  offset: number;
  length: number;
}

export class AzurePageBlobStore implements Store {
  private ranges: Promise<PageRange[]> | undefined;

  constructor(
    readonly client: PageBlobClient,
    readonly path: string,
    readonly readOnly: boolean,
    private length: number,
  ) {}

  async size(): Promise<number> {
    return this.length;
  }

  /** The written ranges of the blob, in order, adjacent ones merged (Azurite reports each write as its own range). */
  async pageRanges(offset = 0, length = this.length): Promise<PageRange[]> {
    const out: PageRange[] = [];
    if (length <= 0) return out;
    try {
      for await (const r of this.client.listPageRanges(offset, length)) {
        if (r.isClear) continue;
        const start = Math.max(offset, r.start);
        const end = Math.min(offset + length, r.end + 1);
        if (end <= start) continue;
        const last = out[out.length - 1];
        if (last && last.offset + last.length >= start) last.length = Math.max(last.length, end - last.offset);
        else out.push({ offset: start, length: end - start });
      }
    } catch (e) {
      throw azureError(e, this.path, 'list page ranges');
    }
    out.sort((a, b) => a.offset - b.offset);
    return out;
  }

  private written(): Promise<PageRange[]> {
    if (!this.readOnly) return this.pageRanges();
    this.ranges ??= this.pageRanges();
    return this.ranges;
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    const end = Math.min(this.length, offset + into.length);
    if (end <= offset) return 0;
    into.fill(0, 0, end - offset);
    const gets: Promise<unknown>[] = [];
    for (const r of await this.written()) {
      const a = Math.max(offset, r.offset);
      const z = Math.min(end, r.offset + r.length);
      for (let o = a; o < z; o += MAX_GET) {
        const n = Math.min(MAX_GET, z - o);
        const view = Buffer.from(into.buffer, into.byteOffset + (o - offset), n);
        gets.push(this.client.downloadToBuffer(view, o, n, { concurrency: 1 }));
      }
    }
    try {
      await Promise.all(gets);
    } catch (e) {
      await Promise.allSettled(gets);
      throw azureError(e, this.path, 'read', offset);
    }
    return end - offset;
  }

  /** Download [offset, offset+into.length) as the blob holds it, written or not (no range lookup: the caller knows). */
  async readPages(offset: number, into: Uint8Array): Promise<void> {
    try {
      for (let o = 0; o < into.length; o += MAX_GET) {
        const n = Math.min(MAX_GET, into.length - o);
        await this.client.downloadToBuffer(Buffer.from(into.buffer, into.byteOffset + o, n), offset + o, n, { concurrency: 1 });
      }
    } catch (e) {
      throw azureError(e, this.path, 'read', offset);
    }
  }

  async allocation(offset: number, length: number): Promise<HostRange[]> {
    const out: HostRange[] = [];
    let at = offset;
    const end = Math.min(this.length, offset + length);
    for (const r of await this.written()) {
      const a = Math.max(at, r.offset);
      const z = Math.min(end, r.offset + r.length);
      if (z <= a) continue;
      if (a > at) out.push({ offset: at, length: a - at, data: false });
      out.push({ offset: a, length: z - a, data: true });
      at = z;
    }
    if (at < end) out.push({ offset: at, length: end - at, data: false });
    return out;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new BlockError('read-only', 'page blob opened read-only', { path: this.path });
    if (offset % PAGE || data.length % PAGE) {
      throw new BlockError('invalid-argument', `page blob writes are whole 512-byte pages (offset ${offset}, ${data.length} bytes)`, { path: this.path, offset });
    }
    if (offset + data.length > this.length) throw new BlockError('out-of-range', `write past the end of the ${this.length}-byte page blob`, { path: this.path, offset });
    const puts: Promise<void>[] = [];
    for (let o = 0; o < data.length; o += MAX_PUT) puts.push(this.putPage(offset + o, data.subarray(o, Math.min(data.length, o + MAX_PUT))));
    await Promise.all(puts);
    this.ranges = undefined;
  }

  /** One Put Page of ≤ 4 MiB with its MD5 (retried with backoff by the client's pipeline). */
  private async putPage(offset: number, data: Uint8Array): Promise<void> {
    const body = Buffer.from(data.buffer, data.byteOffset, data.length);
    const md5 = createHash('md5').update(body).digest();
    try {
      await this.client.uploadPages(body, offset, data.length, { transactionalContentMD5: md5 });
    } catch (e) {
      throw azureError(e, this.path, 'write', offset);
    }
  }

  /** Make [offset, offset+length) read as zeros again (Clear Pages: the range stops being written). */
  async clear(offset: number, length: number): Promise<void> {
    try {
      await this.client.clearPages(offset, length);
    } catch (e) {
      throw azureError(e, this.path, 'clear pages', offset);
    }
    this.ranges = undefined;
  }

  async truncate(size: number): Promise<void> {
    if (size % PAGE) throw new BlockError('invalid-argument', `a page blob is a whole number of 512-byte pages (asked ${size})`, { path: this.path });
    try {
      await this.client.resize(size);
    } catch (e) {
      throw azureError(e, this.path, 'resize');
    }
    this.length = size;
    this.ranges = undefined;
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}

/**
 * An Azure SDK failure as one BlockError line: what Azure said (its error
 * code), what vdisk was doing, and the way out where there is one. The SDK
 * has already retried what can be retried (see azure-location.ts).
 */
export function azureError(e: unknown, path: string, operation: string, offset?: number): BlockError {
  if (e instanceof BlockError) return e;
  const err = e as { statusCode?: number; code?: string; message?: string; details?: { errorCode?: string; message?: string } };
  const code = err.details?.errorCode ?? err.code ?? '';
  const status = err.statusCode;
  const ctx = { path, operation, ...(offset !== undefined ? { offset } : {}) };
  const first = (s: string | undefined) => (s ?? '').split('\n')[0].trim();
  if (status === 404) return new BlockError('not-found', `no such page blob (Azure: ${code || 'not found'})`, ctx, { cause: e });
  if (code === 'AuthorizationPermissionMismatch' || code === 'AuthorizationResourceTypeMismatch') {
    return new BlockError('io', `Azure refused to ${operation}: the SAS or key does not give the permission needed (${code})`, ctx, { cause: e });
  }
  if (status === 403) {
    const why = /expir/i.test(`${err.message} ${err.details?.message}`) ? 'the SAS has expired' : 'authentication failed (a wrong, expired or incomplete SAS or key)';
    return new BlockError('io', `Azure refused to ${operation}: ${why} (${code || 403})`, ctx, { cause: e });
  }
  if (status === undefined) {
    return new BlockError('io', `network failure talking to Azure (${operation}), after retries: ${first(err.message) || code}`, ctx, { cause: e });
  }
  return new BlockError('io', `Azure failed to ${operation}: ${code || status} ${first(err.details?.message ?? err.message)}`, ctx, { cause: e });
}
