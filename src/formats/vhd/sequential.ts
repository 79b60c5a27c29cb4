import { BlockError } from '../../core/errors.js';
import { readExact } from '../../io/store.js';
import type { BlockMap, SequentialContext, SequentialLayout } from '../types.js';
import { BAT_ENTRY_SIZE } from './bat.js';
import { decodeDynamicHeader, DYNAMIC_HEADER_SIZE } from './dynamic-header.js';
import { decodeFooter, FOOTER_SIZE, SECTOR } from './footer.js';
import { bitmapBytes, setBits } from './sector-bitmap.js';

/** Largest sector number a 32-bit BAT entry can hold (0xFFFFFFFF means unallocated). */
const MAX_BLOCK_SECTOR = 0xfffffffe;

/**
 * A VHD as one sequential byte stream (issue 18), from the metadata
 * createVhd laid out (the skeleton) and the blocks to allocate:
 *
 *   fixed:     disk bytes [0, size) | footer
 *   dynamic /  footer copy | dynamic header | BAT | parent locators (children)
 *   child:     | block 0: sector bitmap + data | block 1 ... | footer
 *
 * The blocks follow the metadata in disk order, each at the next free
 * sector, which is what a seekable writer that allocates in call order
 * makes too (image.ts, allocate): the BAT can be written first because
 * every block's place is known from the map. A block of a dynamic disk has
 * every bit of its bitmap set (as allocate does); a child's bitmap claims
 * only the sectors that differ from the backing, the others reading from
 * the parent (spec "Block Allocation Table and Data Blocks").
 */
export async function sequentialVhd(ctx: SequentialContext): Promise<SequentialLayout> {
  const sk = ctx.skeleton;
  const fileSize = await sk.size();
  const footerAt = fileSize - FOOTER_SIZE;
  const footerBytes = await readExact(sk, footerAt, new Uint8Array(FOOTER_SIZE), 'VHD footer');
  const { footer } = decodeFooter(footerBytes, { path: sk.path, offset: footerAt });
  if (footer.diskType === 'fixed') {
    return {
      sectorSize: SECTOR,
      length: () => fileSize,
      async write(_map, out) {
        await out.disk(0, footerAt);
        await out.bytes(footerBytes);
      },
    };
  }
  const headerAt = footer.dataOffset!;
  const { header } = decodeDynamicHeader(await readExact(sk, headerAt, new Uint8Array(DYNAMIC_HEADER_SIZE), 'VHD dynamic header'), { path: sk.path, offset: headerAt });
  // Everything create wrote before its footer is metadata, and the first block goes where that footer is.
  const metaEnd = footerAt;
  const { blockSize, tableOffset, maxTableEntries } = header;
  const span = bitmapBytes(blockSize) + blockSize;
  const differencing = footer.diskType === 'differencing';
  const length = (map: BlockMap | undefined): number => {
    const count = map!.count;
    if (count > 0 && (metaEnd + (count - 1) * span) / SECTOR > MAX_BLOCK_SECTOR) {
      throw new BlockError('out-of-range', `a VHD cannot hold ${count} blocks after ${metaEnd} bytes of metadata: block offsets are 32-bit sector numbers`);
    }
    return metaEnd + count * span + FOOTER_SIZE;
  };
  return {
    blockSize,
    sectorSize: SECTOR,
    length,
    async write(map, out) {
      length(map);
      const meta = await readExact(sk, 0, new Uint8Array(metaEnd), 'VHD metadata');
      // create wrote every entry as unallocated (all ones); the allocated ones get their places.
      const bat = new DataView(meta.buffer, meta.byteOffset + tableOffset, maxTableEntries * BAT_ENTRY_SIZE);
      let at = metaEnd;
      for (let b = map!.next(0); b >= 0; b = map!.next(b + 1)) {
        bat.setUint32(b * BAT_ENTRY_SIZE, at / SECTOR);
        at += span;
      }
      await out.bytes(meta);
      const bits = new Uint8Array(span - blockSize);
      for (let b = map!.next(0); b >= 0; b = map!.next(b + 1)) {
        const offset = b * blockSize;
        bits.fill(0);
        if (!differencing) setBits(bits, 0, blockSize / SECTOR);
        else for (const [from, to] of await out.present(offset, blockSize)) setBits(bits, from / SECTOR, to / SECTOR);
        await out.bytes(bits);
        await out.disk(offset, blockSize);
      }
      await out.bytes(footerBytes);
    },
  };
}
