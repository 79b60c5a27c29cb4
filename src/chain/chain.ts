import { writeUnaligned, zeroUnaligned } from '../core/align.js';
import { RangeLock } from '../core/range-lock.js';
import { checkRequest, readOnlyError } from '../core/request.js';
import { settleAll } from '../core/settle.js';
import type { Extent } from '../core/extent.js';
import type { Image } from '../formats/types.js';

/** An extent of the whole disk: which layer answers for it. */
export interface ChainExtent {
  offset: number;
  length: number;
  /** data: some layer holds bytes; zero: reads as zero (a layer said so, or no layer has it). */
  kind: 'data' | 'zero';
  /** Index of the layer that answered (0 = top); layers.length when no layer has it. */
  depth: number;
  /** Where the range lies in that layer's file, when the layer maps it one to one (raw, allocated blocks). */
  hostOffset?: number;
}

/**
 * A disk made of layers: layers[0] is the top (the image that was opened),
 * each next one its backing. Reads go top-down by whole extents from each
 * layer's blockStatus; writes go to the top layer only, sector-aligned, with
 * partial sectors completed from what the chain reads there (copy-up).
 */
export class Chain {
  /**
   * Writes, zero writes and discards take the sectors they touch (their
   * range rounded out to whole logical sectors): overlapping ones run one
   * at a time, so each lands whole — NBD multi-conn relies on it — and a
   * partial sector's read-modify-write cannot interleave with another write
   * of that sector. Disjoint ones run at once; the layer's own lock, if it
   * has one, still orders its metadata.
   */
  private readonly writeLock = new RangeLock();

  constructor(
    readonly layers: Image[],
    readonly readOnly: boolean,
  ) {}

  get top(): Image {
    return this.layers[0];
  }

  get size(): number {
    return this.layers[0].size;
  }

  get logicalSectorSize(): number {
    return this.layers[0].logicalSectorSize;
  }

  /** The chain's own read-only flag, then the request check against the top layer (whose size is the disk's). */
  private checkWrite(offset: number, length: number, operation: string): void {
    if (this.readOnly) throw readOnlyError({ path: this.top.path, operation });
    checkRequest(this.top, operation, offset, length, 1);
  }

  /** Read the disk's content at offset into `into`. */
  read(offset: number, into: Uint8Array): Promise<void> {
    try {
      checkRequest(this.top, 'read', offset, into.length);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.readFrom(0, offset, into);
  }

  /**
   * Read what layers[depth..] show at offset (the disk as seen from below
   * layer depth-1).
   *
   * Not an async function, on purpose: a small read through a chain is one
   * synchronous map lookup per layer (Image.mapCached, when the layer's
   * metadata is cached) and then the one layer read, whose promise is handed
   * back as it is. Each async frame on the way would add microtask turns to
   * every request; at queue depth 16 they were a third of the cost of a
   * 4 KiB read through a two-layer add-cow chain.
   */
  readFrom(depth: number, offset: number, into: Uint8Array): Promise<void> {
    try {
      for (;;) {
        if (into.length === 0) return RESOLVED;
        if (depth >= this.layers.length) {
          into.fill(0);
          return RESOLVED;
        }
        const layer = this.layers[depth];
        // A backing file may be shorter than its child: past its end the disk reads zeros.
        if (offset >= layer.size) {
          into.fill(0);
          return RESOLVED;
        }
        if (offset + into.length > layer.size) {
          const inside = layer.size - offset;
          into.fill(0, inside);
          into = into.subarray(0, inside);
        }
        // The bottom layer needs no map: below it everything reads as zeros, and
        // a layer reads what it does not hold as zeros too (Image.read). One read
        // instead of a blockStatus (for raw, two lseeks) then a read per extent.
        if (depth === this.layers.length - 1) return layer.read(offset, into);
        const extents = layer.mapCached?.(offset, into.length);
        if (!extents) return this.readMapped(depth, offset, into, layer.blockStatus(offset, into.length));
        if (extents.length === 1) {
          const e = extents[0];
          if (e.kind === 'unallocated') {
            depth++;
            continue;
          }
          if (e.kind === 'data') return readData(layer, e, into);
          into.fill(0);
          return RESOLVED;
        }
        return this.readMapped(depth, offset, into, extents);
      }
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Read [offset, offset+into.length) of layers[depth..] by the extents layer `depth` gave for it. */
  private async readMapped(depth: number, offset: number, into: Uint8Array, map: Extent[] | Promise<Extent[]>): Promise<void> {
    const layer = this.layers[depth];
    const extents = await map;
    // The extents' reads run at once; all settle before this returns, so
    // nothing writes into `into` after the caller has seen an error.
    await settleAll(
      extents.map((e) => {
        const part = into.subarray(e.offset - offset, e.offset - offset + e.length);
        if (e.kind === 'data') return readData(layer, e, part);
        if (e.kind === 'zero') part.fill(0);
        else return this.readFrom(depth + 1, e.offset, part);
        return undefined;
      }),
    );
  }

  /**
   * Which layer answers for each part of [offset, offset+length) (`depth`)
   * and whether it is data or zeros; adjacent extents from the same layer
   * merge. `findZeroes` (qemu's "want zero", for
   * convert) also reports as zero the parts of data extents that lie in
   * holes of their layer's file — a VHDX block another tool allocated but
   * wrote only in part, say — at the cost of a few lseeks per extent.
   */
  async blockStatus(offset: number, length: number, options: { findZeroes?: boolean } = {}): Promise<ChainExtent[]> {
    checkRequest(this.top, 'block status', offset, length);
    const out: ChainExtent[] = [];
    await this.statusFrom(0, offset, length, out, options.findZeroes ?? false);
    return out;
  }

  private async statusFrom(depth: number, offset: number, length: number, out: ChainExtent[], findZeroes: boolean): Promise<void> {
    if (length === 0) return;
    const layer = this.layers[depth];
    if (!layer || offset >= layer.size) {
      push(out, { offset, length, kind: 'zero', depth: this.layers.length });
      return;
    }
    const inside = Math.min(length, layer.size - offset);
    for (const e of await layer.blockStatus(offset, inside)) {
      if (e.kind === 'unallocated') await this.statusFrom(depth + 1, e.offset, e.length, out, findZeroes);
      else if (findZeroes && e.kind === 'data' && e.hostOffset !== undefined && layer.hostAllocation) await pushHostRanges(layer, e, depth, out);
      else push(out, { offset: e.offset, length: e.length, kind: e.kind, depth, hostOffset: e.hostOffset });
    }
    if (inside < length) push(out, { offset: offset + inside, length: length - inside, kind: 'zero', depth: this.layers.length });
  }

  /**
   * Write to the top layer (see writeLock). A caller whose writes in flight
   * never share a logical sector (convert: disjoint pieces of a copy) passes
   * `disjoint` to skip the range lock for its sector-aligned writes.
   */
  async write(offset: number, data: Uint8Array, options: { disjoint?: boolean } = {}): Promise<void> {
    this.checkWrite(offset, data.length, 'write');
    if (data.length === 0) return;
    const top = this.top;
    const align = top.logicalSectorSize;
    if (options.disjoint && offset % align === 0 && data.length % align === 0) return top.write(offset, data);
    const [from, to] = sectorsOf(offset, data.length, align);
    await this.writeLock.run(from, to, () =>
      writeUnaligned(offset, data, align, (u, buf) => this.readFrom(0, u, buf), (o, d) => top.write(o, d)),
    );
  }

  /** Make a range read as zeros, whatever the backing holds. */
  async writeZeroes(offset: number, length: number, options: { mayUnmap?: boolean } = {}): Promise<void> {
    this.checkWrite(offset, length, 'write zeroes');
    if (length === 0) return;
    const top = this.top;
    const align = top.logicalSectorSize;
    const [from, to] = sectorsOf(offset, length, align);
    const readUnit = (u: number, buf: Uint8Array) => this.readFrom(0, u, buf);
    await this.writeLock.run(from, to, () =>
      zeroUnaligned(offset, length, align, readUnit, (o, d) => top.write(o, d), (o, n) => top.writeZeroes(o, n, options)),
    );
  }

  /** Discard: whole sectors only; the rest of the range is left alone (discard is advisory). */
  async trim(offset: number, length: number): Promise<void> {
    this.checkWrite(offset, length, 'trim');
    const top = this.top;
    if (!top.trim) return;
    const align = top.logicalSectorSize;
    const start = Math.ceil(offset / align) * align;
    const end = Math.floor((offset + length) / align) * align;
    if (end > start) await this.writeLock.run(start, end, () => top.trim!(start, end - start));
  }

  /** Make every write durable. */
  async flush(): Promise<void> {
    for (const l of this.layers) if (!l.readOnly) await l.flush();
  }

  async close(): Promise<void> {
    let first: unknown;
    for (const l of this.layers) {
      try {
        await l.close();
      } catch (e) {
        first ??= e;
      }
    }
    if (first) throw first;
  }
}

const RESOLVED: Promise<void> = Promise.resolve();

function push(out: ChainExtent[], e: ChainExtent): void {
  const last = out[out.length - 1];
  const hostOk = last?.hostOffset !== undefined && e.hostOffset !== undefined ? last.hostOffset + last.length === e.hostOffset : last?.hostOffset === e.hostOffset;
  if (last && last.kind === e.kind && last.depth === e.depth && last.offset + last.length === e.offset && hostOk) {
    last.length += e.length;
  } else out.push(e);
}

/** [offset, offset+length) rounded out to whole units of `align` bytes. */
function sectorsOf(offset: number, length: number, align: number): [number, number] {
  return [Math.floor(offset / align) * align, Math.ceil((offset + length) / align) * align];
}

/** A data extent split where its bytes lie in holes of the layer's file (those read as zeros). */
async function pushHostRanges(layer: Image, e: Extent, depth: number, out: ChainExtent[]): Promise<void> {
  const host = e.hostOffset!;
  const ranges = await layer.hostAllocation!(host, e.length);
  if (!ranges) {
    push(out, { offset: e.offset, length: e.length, kind: 'data', depth, hostOffset: host });
    return;
  }
  for (const r of ranges) {
    const offset = e.offset + (r.offset - host);
    push(out, r.data ? { offset, length: r.length, kind: 'data', depth, hostOffset: r.offset } : { offset, length: r.length, kind: 'zero', depth });
  }
}

/** One data extent of a layer into `part`, which covers exactly that extent. */
function readData(layer: Image, e: Extent, part: Uint8Array): Promise<void> {
  return e.hostOffset !== undefined && layer.readHost ? layer.readHost(e.hostOffset, part) : layer.read(e.offset, part);
}

