import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { AnonymousCredential, PageBlobClient } from '@azure/storage-blob';

/**
 * The baseline of bench/azure.ts, what a Linux user does today after
 * `qemu-img convert -O vpc -o subformat=fixed,force_size`: upload the whole
 * fixed VHD file as a page blob with the same SDK and the same parallelism
 * as vdisk (Put Page of 4 MiB with Content-MD5, eight in flight), every page
 * of it, zeros too.
 *
 *   node dist/bench/azure-upload-file.js FILE BLOB_URL_WITH_SAS
 */
const [file, url] = process.argv.slice(2);
const PUT = 4 << 20;
const IN_FLIGHT = 8;
const fh = await open(file, 'r');
const size = (await fh.stat()).size;
const client = new PageBlobClient(url, new AnonymousCredential());
await client.create(size);
let next = 0;
async function lane(): Promise<void> {
  const buf = Buffer.alloc(PUT);
  while (next < size) {
    const at = next;
    next += PUT;
    const n = Math.min(PUT, size - at);
    await fh.read(buf, 0, n, at);
    const body = buf.subarray(0, n);
    await client.uploadPages(body, at, n, { transactionalContentMD5: createHash('md5').update(body).digest() });
  }
}
await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
await fh.close();
