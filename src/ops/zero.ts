const ZEROS = Buffer.alloc(1 << 20);

/** True when every byte is zero; native memcmp in 1 MiB slices, no per-byte JS loop. */
export function isZero(b: Uint8Array): boolean {
  for (let off = 0; off < b.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, b.length - off);
    const slice = Buffer.from(b.buffer, b.byteOffset + off, n);
    if (!slice.equals(ZEROS.subarray(0, n))) return false;
  }
  return true;
}

/** Runs of granules (aligned to absolute disk offsets) that are all-zero or not. */
export function* granuleRuns(
  buf: Uint8Array,
  diskOffset: number,
  granule: number,
  isSame: (from: number, to: number) => boolean,
): Generator<{ from: number; to: number; same: boolean }> {
  let runStart = 0;
  let runSame: boolean | undefined;
  let pos = 0;
  while (pos < buf.length) {
    const next = Math.min(buf.length, (Math.floor((diskOffset + pos) / granule) + 1) * granule - diskOffset);
    const same = isSame(pos, next);
    if (runSame === undefined) runSame = same;
    else if (same !== runSame) {
      yield { from: runStart, to: pos, same: runSame };
      runStart = pos;
      runSame = same;
    }
    pos = next;
  }
  if (runSame !== undefined) yield { from: runStart, to: buf.length, same: runSame };
}
