import { openChain, type ChainOpenOptions } from '../chain/open.js';
import type { Chain } from '../chain/chain.js';
import { isZero } from './zero.js';

export interface CompareResult {
  identical: boolean;
  /** First differing byte offset, when they differ. */
  offset?: number;
  sizeA: number;
  sizeB: number;
  /** Human explanation of the first difference. */
  message: string;
}

const CHUNK = 4 << 20;
const WINDOW = 1 << 30;

/**
 * Compare the content two disks show (whole chains). Like `qemu-img compare`
 * without -s, disks of different sizes are identical when the longer one holds
 * only zeros past the shorter one's end.
 */
export async function compareImages(
  a: string,
  b: string,
  options: { a?: ChainOpenOptions; b?: ChainOpenOptions; strict?: boolean } = {},
): Promise<CompareResult> {
  const ca = await openChain(a, { ...options.a, readOnly: true });
  try {
    const cb = await openChain(b, { ...options.b, readOnly: true });
    try {
      return await compareChains(ca, cb, options.strict ?? false);
    } finally {
      await cb.close();
    }
  } finally {
    await ca.close();
  }
}

export async function compareChains(ca: Chain, cb: Chain, strict = false): Promise<CompareResult> {
  const sizeA = ca.size;
  const sizeB = cb.size;
  const base = { sizeA, sizeB };
  if (strict && sizeA !== sizeB) return { ...base, identical: false, offset: Math.min(sizeA, sizeB), message: 'Strict mode: image size mismatch!' };
  const common = Math.min(sizeA, sizeB);
  const bufA = new Uint8Array(CHUNK);
  const bufB = new Uint8Array(CHUNK);
  for (let w = 0; w < common; w += WINDOW) {
    const wl = Math.min(WINDOW, common - w);
    // Ranges where both sides are known zero need no read.
    const za = zeroRanges(await ca.blockStatus(w, wl));
    const zb = zeroRanges(await cb.blockStatus(w, wl));
    for (let off = w; off < w + wl; off += CHUNK) {
      const n = Math.min(CHUNK, w + wl - off);
      if (covered(za, off, n) && covered(zb, off, n)) continue;
      const pa = bufA.subarray(0, n);
      const pb = bufB.subarray(0, n);
      await Promise.all([ca.read(off, pa), cb.read(off, pb)]);
      if (Buffer.compare(pa, pb) !== 0) {
        const at = off + firstDifference(pa, pb);
        return { ...base, identical: false, offset: at, message: `Content mismatch at offset ${at}!` };
      }
    }
  }
  if (sizeA !== sizeB) {
    const longer = sizeA > sizeB ? ca : cb;
    for (let off = common; off < longer.size; off += CHUNK) {
      const n = Math.min(CHUNK, longer.size - off);
      const exts = await longer.blockStatus(off, n);
      if (exts.every((e) => e.kind === 'zero')) continue;
      const p = bufA.subarray(0, n);
      await longer.read(off, p);
      if (!isZero(p)) {
        const at = off + firstDifference(p, new Uint8Array(n));
        return { ...base, identical: false, offset: at, message: `Content mismatch at offset ${at}! (past the end of the shorter image)` };
      }
    }
  }
  return { ...base, identical: true, message: sizeA === sizeB ? 'Images are identical.' : 'Images are identical (sizes differ; the longer one is zero past the shorter one\'s end).' };
}

function zeroRanges(exts: { offset: number; length: number; kind: string }[]): [number, number][] {
  return exts.filter((e) => e.kind === 'zero').map((e) => [e.offset, e.offset + e.length]);
}

function covered(ranges: [number, number][], off: number, n: number): boolean {
  return ranges.some(([s, e]) => s <= off && off + n <= e);
}

/** Index of the first differing byte; narrows by halves with native compares. */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  let lo = 0;
  let hi = a.length;
  while (hi - lo > 64) {
    const mid = (lo + hi) >>> 1;
    if (Buffer.compare(a.subarray(lo, mid), b.subarray(lo, mid)) !== 0) hi = mid;
    else lo = mid;
  }
  for (let i = lo; i < hi; i++) if (a[i] !== b[i]) return i;
  return hi;
}
