import type { Chain } from '../chain/chain.js';
import { nativeStore } from '../io/store.js';

/**
 * Where the bytes of [offset, offset+length) of the disk lie, as segments
 * for the native sendReply (io/file-reply.ts): triples of file descriptor
 * (-1: zeros), file offset, length. Undefined when that cannot be told from
 * what the layers hold in memory (a VHD sector bitmap not cached yet), or
 * some data does not lie as-is in a local file (a layer without readHost or
 * a local hostStore): the read then goes the usual way (Chain.read).
 *
 * It follows Chain.readFrom: top-down by each layer's map, a layer's
 * unallocated ranges from the layers below, zeros below the last layer and
 * past a layer's end; a data extent is read at its hostOffset in the
 * layer's hostStore (what readHost does).
 */
export function mapToFiles(chain: Chain, offset: number, length: number): Float64Array | undefined {
  const out: number[] = [];
  return mapFrom(chain, 0, offset, length, out) ? Float64Array.from(out) : undefined;
}

function mapFrom(chain: Chain, depth: number, offset: number, length: number, out: number[]): boolean {
  if (length === 0) return true;
  const layer = chain.layers[depth];
  if (!layer || offset >= layer.size) {
    push(out, -1, 0, length);
    return true;
  }
  const inside = Math.min(length, layer.size - offset);
  const extents = layer.mapCached?.(offset, inside);
  if (!extents) return false;
  for (const e of extents) {
    if (e.kind === 'unallocated') {
      if (!mapFrom(chain, depth + 1, e.offset, e.length, out)) return false;
    } else if (e.kind === 'zero') push(out, -1, 0, e.length);
    else {
      const store = layer.readHost && e.hostOffset !== undefined ? nativeStore(layer.hostStore) : undefined;
      if (!store) return false;
      push(out, store.nativeFd(), e.hostOffset!, e.length);
    }
  }
  if (inside < length) push(out, -1, 0, length - inside);
  return true;
}

/** Append a segment, merged with the previous one when it continues it (the same file, next byte; or zeros after zeros). */
function push(out: number[], fd: number, at: number, length: number): void {
  const n = out.length;
  if (n > 0 && out[n - 3] === fd && (fd < 0 || out[n - 2] + out[n - 1] === at)) out[n - 1] += length;
  else out.push(fd, at, length);
}
