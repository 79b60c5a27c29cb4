// CRC-32C (Castagnoli), as VHDX requires (VHDX spec 1.00, section 2.2: all
// checksums are CRC-32C). Provided by the small, dependency-free `crc-32` package.
import CRC32C from 'crc-32/crc32c.js';

export function crc32c(data: Uint8Array, seed = 0): number {
  return CRC32C.buf(data, seed) >>> 0;
}
