import { BlockError } from '../../core/errors.js';
import type { BlockMap, SequentialContext, SequentialLayout } from '../types.js';
import { Bat, BAT_ENTRY_SIZE, PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT, SB_PRESENT } from './bat.js';
import { SECTOR_BITMAP_BLOCK_SIZE } from './layout.js';
import { openVhdx } from './open.js';
import { setBits } from './sector-bitmap.js';

/** Metadata is sent in pieces of at most this many bytes (a 256 MiB log is mostly zeros). */
const PIECE = 4 << 20;

/**
 * A dynamic or differencing VHDX as one sequential byte stream (issue 18),
 * from the metadata createVhdx laid out (the skeleton, opened here as any
 * VHDX is) and the blocks to allocate:
 *
 *   header section | log (empty: LogGuid is zero, 2.3.3) | metadata region
 *   | BAT region | chunk 0: (children) its sector bitmap block, then its
 *   allocated payload blocks in disk order | chunk 1 ...
 *
 * A chunk is the `chunkRatio` payload blocks one 1 MiB sector bitmap block
 * covers (2.5.1). Every block is 1 MiB aligned (blocks are whole MiB), so
 * each lands at the next free MiB and the BAT is known before the first
 * byte. A base disk's allocated block is PAYLOAD_BLOCK_FULLY_PRESENT and
 * the others stay NOT_PRESENT, as create leaves them (what Hyper-V and
 * QEMU read as zeros on a disk without a parent). A child's allocated block
 * is PARTIALLY_PRESENT, its chunk's bitmap naming the sectors that differ
 * from the parent (2.5.1, 2.5.2.2); its other blocks stay NOT_PRESENT and
 * read from the parent. The bitmap comes before the chunk's payload, as a
 * reader of the stream needs it (the chunk's blocks are read for it first).
 */
export async function sequentialVhdx(ctx: SequentialContext): Promise<SequentialLayout> {
  const sk = ctx.skeleton;
  const img = await openVhdx({ store: sk, path: sk.path, readOnly: true, openStore: () => Promise.reject(new Error('unused')), options: {} });
  const s = img.state;
  await img.close();
  if (s.params.leaveBlocksAllocated) {
    throw new BlockError('unsupported', 'a fixed VHDX cannot be streamed (subformat=dynamic can)', { path: sk.path });
  }
  const dataStart = await sk.size();
  const g = s.bat.geometry;
  const batAt = s.regions.bat.offset;
  const child = g.hasParent;
  const sectorsPerBlock = g.blockSize / g.logicalSectorSize;
  /** The allocated blocks of each chunk that has any, in disk order. */
  function* chunks(map: BlockMap): Generator<{ chunk: number; blocks: number[] }> {
    for (let b = map.next(0); b >= 0; ) {
      const chunk = Math.floor(b / g.chunkRatio);
      const end = (chunk + 1) * g.chunkRatio;
      const blocks: number[] = [];
      for (; b >= 0 && b < end; b = map.next(b + 1)) blocks.push(b);
      yield { chunk, blocks };
    }
  }
  /** Chunks holding at least one allocated block: each costs a sector bitmap block in a child. */
  const chunksUsed = (map: BlockMap): number => {
    let n = 0;
    for (let b = map.next(0); b >= 0; b = map.next((Math.floor(b / g.chunkRatio) + 1) * g.chunkRatio)) n++;
    return n;
  };
  const length = (map: BlockMap | undefined): number => dataStart + map!.count * g.blockSize + (child ? chunksUsed(map!) * SECTOR_BITMAP_BLOCK_SIZE : 0);
  return {
    blockSize: g.blockSize,
    sectorSize: g.logicalSectorSize,
    length,
    async write(map, out) {
      const bat = new Bat(g, s.bat.bytes.slice());
      const dv = new DataView(bat.bytes.buffer, bat.bytes.byteOffset, bat.bytes.byteLength);
      let at = dataStart;
      for (const { chunk, blocks } of chunks(map!)) {
        if (child) {
          Bat.encode(dv, bat.bitmapIndex(chunk) * BAT_ENTRY_SIZE, SB_PRESENT, at);
          at += SECTOR_BITMAP_BLOCK_SIZE;
        }
        for (const b of blocks) {
          Bat.encode(dv, bat.payloadIndex(b) * BAT_ENTRY_SIZE, child ? PAYLOAD_PARTIALLY_PRESENT : PAYLOAD_FULLY_PRESENT, at);
          at += g.blockSize;
        }
      }
      for (let pos = 0; pos < dataStart; pos += PIECE) {
        const piece = new Uint8Array(Math.min(PIECE, dataStart - pos));
        await sk.read(pos, piece);
        const a = Math.max(pos, batAt);
        const b = Math.min(pos + piece.length, batAt + bat.bytes.length);
        if (a < b) piece.set(bat.bytes.subarray(a - batAt, b - batAt), a - pos);
        await out.bytes(piece);
      }
      const bitmap = child ? new Uint8Array(SECTOR_BITMAP_BLOCK_SIZE) : undefined;
      for (const { blocks } of chunks(map!)) {
        if (bitmap) {
          // The chunk's bitmap goes first, so a reader of the stream meets it before the blocks it describes.
          bitmap.fill(0);
          for (const b of blocks) {
            const first = (b % g.chunkRatio) * sectorsPerBlock;
            for (const [from, to] of await out.present(b * g.blockSize, g.blockSize)) setBits(bitmap, first + from / g.logicalSectorSize, (to - from) / g.logicalSectorSize, true);
          }
          await out.bytes(bitmap);
        }
        for (const b of blocks) await out.disk(b * g.blockSize, g.blockSize);
      }
    },
  };
}
