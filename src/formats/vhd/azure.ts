import { isBlockError } from '../../core/errors.js';
import type { Store } from '../../io/store.js';
import { AZURE_MAX_SIZE, AZURE_MIN_SIZE } from './create.js';
import { FOOTER_SIZE, type VhdFooter, decodeFooter, hasFooterCookie } from './footer.js';

/** How far back from the end a footer followed by stray bytes is looked for. */
const TAIL_SCAN = 64 * 1024;
const MiB = 1 << 20;

/**
 * Everything Azure would refuse in a VHD given as a file or a page blob
 * (`check --azure`), one sentence each; empty when it would take it.
 * Azure's rules for an uploaded disk: a fixed VHD (the footer only, at the
 * very end: the spec's "Fixed Hard Disk Image"), a good footer (cookie
 * "conectix", checksum), a virtual size of a whole number of MiB from 20 MiB
 * to 32 TiB, and nothing but the disk and its footer in the file or blob:
 * length = virtual size + 512. The checks read the footer and, when the
 * last 512 bytes are not one, up to 64 KiB before it.
 */
export async function azureProblems(store: Store): Promise<string[]> {
  const length = await store.size();
  if (length < FOOTER_SIZE) return [`not a VHD: ${length} bytes, smaller than a VHD footer (512)`];
  const scan = Math.min(length, TAIL_SCAN);
  const tail = new Uint8Array(scan);
  const n = await store.read(length - scan, tail);
  if (n !== scan) return [`not a VHD: the end could not be read (${n} of ${scan} bytes)`];
  const out: string[] = [];
  // The footer where Azure looks for it, else the last one before the end (stray bytes after it).
  let at = scan - FOOTER_SIZE;
  if (!hasFooterCookie(tail, at)) {
    at = -1;
    for (let i = scan - FOOTER_SIZE - 1; i >= 0; i--) {
      if (tail[i] === 0x63 && hasFooterCookie(tail, i)) {
        at = i;
        break;
      }
    }
    if (at < 0) {
      // A dynamic or differencing disk whose end is damaged may still have its copy at offset 0.
      const head = new Uint8Array(FOOTER_SIZE);
      await store.read(0, head);
      if (!hasFooterCookie(head)) return ["not a VHD: no footer (cookie 'conectix') at the end"];
      out.push("bad footer: the last 512 bytes do not start with the cookie 'conectix'");
      return [...out, ...footerProblems(head, 0, length, store.path)];
    }
    out.push(`${scan - at - FOOTER_SIZE} bytes after the footer (at offset ${length - scan + at}): Azure reads the footer from the last 512 bytes`);
  }
  return [...out, ...footerProblems(tail.subarray(at, at + FOOTER_SIZE), length - scan + at, length, store.path, at === scan - FOOTER_SIZE)];
}

function footerProblems(buf: Uint8Array, offset: number, length: number, path: string, atEnd = false): string[] {
  let footer: VhdFooter;
  const out: string[] = [];
  try {
    const d = decodeFooter(buf, { path, offset });
    if (!d.checksumOk) out.push('bad footer: its checksum is wrong');
    footer = d.footer;
  } catch (e) {
    if (!isBlockError(e)) throw e;
    return [`bad footer: ${e.message}`];
  }
  const size = footer.currentSize;
  if (footer.diskType !== 'fixed') out.push(`not a fixed VHD (${footer.diskType}): Azure takes only fixed VHDs (convert -O vhd -o azure=on)`);
  if (size % MiB !== 0) out.push(`virtual size ${size} is not a whole number of MiB (${Math.ceil(size / MiB) * MiB} would be)`);
  if (size < AZURE_MIN_SIZE) out.push(`virtual size ${size} is below Azure's minimum of 20 MiB (${AZURE_MIN_SIZE} bytes)`);
  if (size > AZURE_MAX_SIZE) out.push(`virtual size ${size} is above Azure's maximum of 32 TiB (${AZURE_MAX_SIZE} bytes)`);
  if (atEnd && footer.diskType === 'fixed' && length !== size + FOOTER_SIZE) {
    out.push(`length ${length} is not the virtual size + 512 (${size + FOOTER_SIZE})`);
  }
  return out;
}
