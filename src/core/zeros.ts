/**
 * Writing zero bytes, for the places that must put real zeros in a file
 * (a fixed disk's sectors, an allocated block, a log's zero descriptor, a
 * raw file, `convert -S 0`): one helper instead of a loop in each.
 */

/** Bytes per write: large enough that a big range is few requests (VHDX's partly present blocks commit metadata per request). */
const ZERO_CHUNK = 4 << 20;

/** Shared by every caller and never written to, so a write may hold it as long as it likes; allocated on first use. */
let zeros: Uint8Array | undefined;

/** Write `length` zero bytes at `offset` through `write`, ZERO_CHUNK bytes per request, one request at a time. */
export async function writeZeroBytes(write: (offset: number, data: Uint8Array) => Promise<void>, offset: number, length: number): Promise<void> {
  const z = (zeros ??= new Uint8Array(ZERO_CHUNK));
  for (let done = 0; done < length; done += z.length) await write(offset + done, z.subarray(0, Math.min(z.length, length - done)));
}
