import { writeUnaligned, zeroUnaligned } from '../core/align.js';
import type { Chain, ChainExtent } from '../chain/chain.js';
import type { Image } from '../formats/types.js';

/** Disk range asked of the layers at once: bounds memory on huge sparse disks. */
const WINDOW = 1 << 30;

/**
 * The chain's extents over the whole disk, cut into pieces of at most
 * `pieceSize` bytes so each can be read into one buffer (commit, rebase).
 */
export async function* chainPieces(chain: Chain, pieceSize: number): AsyncGenerator<ChainExtent> {
  for (let w = 0; w < chain.size; w += WINDOW) {
    for (const e of await chain.blockStatus(w, Math.min(WINDOW, chain.size - w))) {
      for (let o = 0; o < e.length; o += pieceSize) {
        // A piece's hostOffset moves with it (commit's native path reads the layer's file there).
        yield { ...e, offset: e.offset + o, length: Math.min(pieceSize, e.length - o), hostOffset: e.hostOffset === undefined ? undefined : e.hostOffset + o };
      }
    }
  }
}

/**
 * Write bytes into one layer that is not the chain's top (commit's base).
 * Whole sectors go straight in; a partial sector at either end is completed
 * from what the layer and those below it show (`readBelow`).
 */
export function writeLayer(layer: Image, offset: number, data: Uint8Array, readBelow: (offset: number, into: Uint8Array) => Promise<void>): Promise<void> {
  return writeUnaligned(offset, data, layer.logicalSectorSize, readBelow, (o, d) => layer.write(o, d));
}

/**
 * Make [offset, offset+length) of one layer read as zero, skipping what the
 * layer already reports as zero (a sparse raw base stays sparse).
 */
export async function zeroLayer(layer: Image, offset: number, length: number, readBelow: (offset: number, into: Uint8Array) => Promise<void>): Promise<void> {
  const align = layer.logicalSectorSize;
  for (const e of await layer.blockStatus(offset, length)) {
    if (e.kind === 'zero') continue;
    await zeroUnaligned(e.offset, e.length, align, readBelow, (o, d) => layer.write(o, d), (o, n) => layer.writeZeroes(o, n, { mayUnmap: true }));
  }
}
