import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { checkRange, u64ToNumber } from '../../core/u64.js';
import type { Store } from '../../io/store.js';
import { readExact } from '../../io/store.js';
import { vhdChecksum } from './footer.js';

/**
 * XenServer's batmap (blktap "tdbatmap", not in the Microsoft spec): a header
 * in the sector right after the padded BAT, pointing at a bitmap with one bit
 * per block saying "this block's sector bitmap is completely full", so blktap
 * may skip reading it. Readers may ignore it. A clear bit is always safe (it
 * only means "look at the sector bitmap"); a set bit for a block that is not
 * full would be a lie. vdisk never clears sector-bitmap bits of a live block,
 * so the batmap stays true as it is; when blocks are dropped (shrink) the whole
 * batmap is cleared.
 *
 *   0 cookie "tdbatmap"   8 batmap offset (bytes)   16 batmap size (sectors)
 *  20 batmap version      24 checksum (one's complement of the batmap's byte sum)
 */
const BatmapHeader = defineStruct('VHD batmap header', 'be', 512, [
  { name: 'cookie', type: 'bytes', size: 8 },
  { name: 'batmapOffset', type: 'u64' },
  { name: 'batmapSize', type: 'u32' },
  { name: 'batmapVersion', type: 'u32' },
  { name: 'checksum', type: 'u32' },
]);

const BATMAP_COOKIE = 'tdbatmap';

export interface Batmap {
  headerOffset: number;
  offset: number;
  /** Size in bytes (whole sectors). */
  size: number;
  version: number;
  checksumOk: boolean;
}

export function isBatmapHeader(buf: Uint8Array): boolean {
  return new TextDecoder('latin1').decode(buf.subarray(0, 8)) === BATMAP_COOKIE;
}

/** Decode the header at `headerOffset`; bounds-check the map it points at (needs one bit per BAT entry). */
export function decodeBatmapHeader(buf: Uint8Array, headerOffset: number, maxTableEntries: number, fileSize: number, path?: string): Omit<Batmap, 'checksumOk'> & { checksum: number } {
  const raw = BatmapHeader.decode(buf);
  const offset = u64ToNumber(raw.batmapOffset, 'VHD batmap offset', { path, offset: headerOffset });
  const size = raw.batmapSize * 512;
  if (size < Math.ceil(maxTableEntries / 8) || raw.batmapSize > Math.ceil(maxTableEntries / 8 / 512) + 1) {
    throw new BlockError('corrupt', `VHD batmap size ${raw.batmapSize} sectors does not fit ${maxTableEntries} blocks`, { path, offset: headerOffset });
  }
  checkRange(offset, size, fileSize, 'VHD batmap', path);
  return { headerOffset, offset, size, version: raw.batmapVersion, checksum: raw.checksum };
}

/** Checksum of the batmap bytes (the checksum field lives in the header, so nothing is excluded). */
export function batmapChecksum(map: Uint8Array): number {
  return vhdChecksum(map, map.length); // offset past the end: no field to skip
}

function encodeBatmapHeader(b: { offset: number; size: number; version: number }, checksum: number, original: Uint8Array): Uint8Array {
  const out = original.slice(0, 512);
  BatmapHeader.encode({ cookie: new TextEncoder().encode(BATMAP_COOKIE), batmapOffset: BigInt(b.offset), batmapSize: b.size / 512, batmapVersion: b.version, checksum }, out);
  return out;
}

/** Zero the batmap (every block "look at the sector bitmap"): always true, whatever the bitmaps hold. */
export async function clearBatmap(store: Store, m: Batmap): Promise<void> {
  const zeros = new Uint8Array(m.size);
  await store.write(m.offset, zeros);
  const header = await readExact(store, m.headerOffset, new Uint8Array(512), 'VHD batmap header');
  await store.write(m.headerOffset, encodeBatmapHeader(m, batmapChecksum(zeros), header));
  await store.flush();
  m.checksumOk = true;
}
