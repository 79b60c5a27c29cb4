import type { PageBlobClient, StoragePipelineOptions } from '@azure/storage-blob';
import { createRequire } from 'node:module';
import { BlockError } from '../core/errors.js';
import type { OpenStoreOptions } from './store.js';
import { AzurePageBlobStore, azureError } from './azure-page-blob.js';

/*
 * Where an Azure page blob is named, and how it is opened. This is the one
 * place that tells an Azure location from a file path (isAzureLocation) and
 * opens it (openAzureLocation): when the host table of io/ lands, these
 * become its Azure row.
 *
 * Locations:
 *   azure://CONTAINER/BLOB      with AZURE_STORAGE_CONNECTION_STRING (the
 *                               convention of Microsoft's tools)
 *   https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB?SAS
 *   http://127.0.0.1:PORT/devstoreaccount1/CONTAINER/BLOB?SAS   (Azurite,
 *                               the emulator, whose account has that name)
 *
 * The SDK is loaded only when such a location is opened (required on first use),
 * so the start-up of commands on local files does not grow.
 */

/** A VHD footer's first 8 bytes (VHD spec 2006, "Hard Disk Footer Format", Cookie): io/ cannot ask formats/, and needs no more than this. */
const FOOTER_COOKIE_TEXT = 'conectix';

/** Azurite's fixed account name: URLs with it as their first path segment are page blobs on the emulator. */
const EMULATOR_ACCOUNT = 'devstoreaccount1';

export function isAzureLocation(path: string): boolean {
  if (path.startsWith('azure://')) return true;
  if (!/^https?:\/\//i.test(path)) return false;
  try {
    const u = new URL(path);
    return u.hostname.toLowerCase().endsWith('.blob.core.windows.net') || u.pathname.split('/')[1] === EMULATOR_ACCOUNT;
  } catch {
    return false;
  }
}

/**
 * Retries with exponential backoff for every request (Put Page, Get Page
 * Ranges, downloads): a network failure or a 5xx/503 is tried up to five
 * times, 0.25 s doubling to 4 s between tries, before the error reaches the
 * user (who can then `--resume` an upload).
 */
const PIPELINE: StoragePipelineOptions = { retryOptions: { maxTries: 5, retryDelayInMs: 250, maxRetryDelayInMs: 4000, tryTimeoutInMs: 120_000 } };

/** A PageBlobClient for a location (the SDK loaded on first use). */
export async function pageBlobClient(location: string): Promise<PageBlobClient> {
  // createRequire, not import(): the CLI bundle runs in a vm.Script (for its
  // code cache), where a dynamic import() has no loader; the SDK ships CommonJS.
  const sdk = createRequire(import.meta.url)('@azure/storage-blob') as typeof import('@azure/storage-blob');
  if (location.startsWith('azure://')) {
    const rest = location.slice('azure://'.length);
    const slash = rest.indexOf('/');
    if (slash <= 0 || slash === rest.length - 1) throw new BlockError('invalid-argument', 'an azure:// location is azure://CONTAINER/BLOB', { path: location });
    const cs = process.env.AZURE_STORAGE_CONNECTION_STRING;
    if (!cs) throw new BlockError('invalid-argument', 'azure:// locations need AZURE_STORAGE_CONNECTION_STRING (or give the blob URL with a SAS)', { path: location });
    try {
      return sdk.BlobServiceClient.fromConnectionString(cs, PIPELINE).getContainerClient(rest.slice(0, slash)).getPageBlobClient(rest.slice(slash + 1));
    } catch (e) {
      throw new BlockError('invalid-argument', `AZURE_STORAGE_CONNECTION_STRING is not usable: ${(e as Error).message}`, { path: location }, { cause: e });
    }
  }
  return new sdk.PageBlobClient(location, new sdk.AnonymousCredential(), PIPELINE);
}

/** A location as messages show it: without its SAS (a secret). */
export function displayLocation(location: string): string {
  const q = location.indexOf('?');
  return q < 0 ? location : `${location.slice(0, q)}?<SAS>`;
}

/** Size and type of an existing blob, or undefined when there is none. */
export async function blobProperties(client: PageBlobClient, path: string): Promise<{ length: number; pageBlob: boolean } | undefined> {
  try {
    const p = await client.getProperties();
    return { length: p.contentLength ?? 0, pageBlob: p.blobType === 'PageBlob' };
  } catch (e) {
    const err = e as { statusCode?: number };
    if (err.statusCode === 404) return undefined;
    throw azureError(e, path, 'read the blob properties');
  }
}

export interface AzureOpenOptions {
  /**
   * Refuse a blob whose last 512 bytes are not a VHD footer (default, for a
   * page blob opened as an image: Azure keeps disks as fixed VHDs; read as
   * raw it would show the footer as disk data). `check --azure` turns it
   * off to report what is wrong instead.
   */
  requireVhd?: boolean;
}

/** Open an existing page blob as a read-only Store (the source of info, convert, compare, serve, check, map). */
export async function openAzureLocation(location: string, options: OpenStoreOptions, azure: AzureOpenOptions = {}): Promise<AzurePageBlobStore> {
  const path = displayLocation(location);
  if (options.create || options.truncate) {
    throw new BlockError('unsupported', 'a page blob is written by convert -O vhd -o azure=on SRC URL only (an upload), not created in place', { path });
  }
  if (!options.readOnly) {
    throw new BlockError('read-only', 'a page blob opens read-only (serve it with --read-only); a page blob is written by convert -O vhd -o azure=on SRC URL', { path });
  }
  const client = await pageBlobClient(location);
  const props = await blobProperties(client, path);
  if (!props) throw new BlockError('not-found', 'no such page blob', { path });
  if (!props.pageBlob) throw new BlockError('unsupported', 'not a page blob (Azure keeps disks as page blobs)', { path });
  const store = new AzurePageBlobStore(client, path, true, props.length);
  if (azure.requireVhd ?? true) {
    const tail = new Uint8Array(FOOTER_COOKIE_TEXT.length);
    const n = props.length >= 512 ? await store.read(props.length - 512, tail) : 0;
    if (n !== tail.length || new TextDecoder().decode(tail) !== FOOTER_COOKIE_TEXT) {
      throw new BlockError('corrupt', `the page blob's last 512 bytes are not a VHD footer (cookie '${FOOTER_COOKIE_TEXT}'): not a disk Azure made or took`, { path });
    }
  }
  return store;
}
