import type { Chain } from '../chain/chain.js';

/** One row of `map --output=json`, as `qemu-img map --output=json` prints it. */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  /** The file holding the data (human output). */
  filename?: string;
}

/** Window of the disk asked of the layers at once: keeps memory bounded on huge sparse disks. */
const WINDOW = 1 << 30;

/**
 * Walk the whole disk and yield which layer answers for each extent.
 * Depth follows qemu-img: the index of the layer that holds the range, or the
 * bottom layer's index with present=false when none does.
 */
export async function* mapChain(chain: Chain): AsyncGenerator<MapEntry> {
  let pending: MapEntry | undefined;
  const bottom = chain.layers.length - 1;
  for (let off = 0; off < chain.size; off += WINDOW) {
    const len = Math.min(WINDOW, chain.size - off);
    for (const e of await chain.blockStatus(off, len)) {
      const present = e.depth < chain.layers.length;
      const entry: MapEntry = {
        start: e.offset,
        length: e.length,
        depth: present ? e.depth : bottom,
        present,
        zero: e.kind === 'zero',
        data: e.kind === 'data',
      };
      if (e.hostOffset !== undefined) entry.offset = e.hostOffset;
      if (present) entry.filename = chain.layers[e.depth].path;
      if (pending && canMerge(pending, entry)) pending.length += entry.length;
      else {
        if (pending) yield pending;
        pending = entry;
      }
    }
  }
  if (pending) yield pending;
}

function canMerge(a: MapEntry, b: MapEntry): boolean {
  if (a.start + a.length !== b.start) return false;
  if (a.depth !== b.depth || a.present !== b.present || a.zero !== b.zero || a.data !== b.data) return false;
  if (a.offset === undefined || b.offset === undefined) return a.offset === b.offset;
  return a.offset + a.length === b.offset;
}
