/**
 * What one layer says about a byte range (architecture: Image.blockStatus).
 *  - data:        this layer holds the bytes
 *  - zero:        this layer says the bytes read as zero (no backing consulted)
 *  - unallocated: this layer has nothing; ask the backing (zeros if none)
 */
export type ExtentKind = 'data' | 'zero' | 'unallocated';

export interface Extent {
  offset: number;
  length: number;
  kind: ExtentKind;
  /** Where the bytes start in this layer's file when they lie there contiguously (map's "offset"). */
  hostOffset?: number;
}

/** Append an extent (the list takes the object), merging it with the previous one when contiguous and of the same kind. */
export function pushExtent(list: Extent[], e: Extent): void {
  if (e.length <= 0) return;
  const last = list[list.length - 1];
  const hostContiguous =
    last?.hostOffset === undefined ? e.hostOffset === undefined : e.hostOffset === last.hostOffset + last.length;
  if (last && last.kind === e.kind && last.offset + last.length === e.offset && hostContiguous) last.length += e.length;
  else list.push(e);
}
