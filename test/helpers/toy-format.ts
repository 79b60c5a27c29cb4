import { defineStruct } from '../../src/codec/struct.js';
import { BlockError } from '../../src/core/errors.js';
import { pushExtent, type Extent } from '../../src/core/extent.js';
import { checkRequest } from '../../src/core/request.js';
import { readExact, type Store } from '../../src/io/store.js';
import { rawFormat } from '../../src/formats/raw/index.js';
import type { BackingRef, CreateContext, Format, FormatInfo, OpenContext, Readable, Trimmable, Writable } from '../../src/formats/types.js';

/**
 * toy: the smallest complete format layer. It is the worked example of
 * docs/adding-a-format.md (copy it to start a format), and the format the
 * chain/ and ops/ tests run on, independent of any real format.
 *
 * A real format is a folder, src/formats/<fmt>/, one role per file; the toy
 * fits in one file, so each section below is headed by the file it would be.
 * Roles the toy does not have (state.ts, check.ts, maintenance.ts,
 * measure.ts) are absent, as they would be in a folder.
 *
 * On disk (big-endian): one map byte per 512-byte sector (0 unallocated,
 * 1 data, 2 zero), data at a fixed place.
 *
 *   0    "TOYCOW\0\0"   8  size u64   16 id u64   24 expected parent id u64
 *   32   same-size u8   64 backing name (256 bytes)  320 backing format (32)
 *   1024 map (size/512 bytes, padded to a multiple of 512)
 *        then data: sector n at dataStart + n*512
 */

// ---- header.ts: one module per on-disk structure (SIZE, decode, encode from one field table) ----

const MAGIC = new TextEncoder().encode('TOYCOW\0\0');
const SECTOR = 512;
const MAP_OFFSET = 1024;

const Header = defineStruct('toy header', 'be', MAP_OFFSET, [
  { name: 'magic', type: 'bytes', size: 8 },
  { name: 'size', type: 'u64' },
  { name: 'id', type: 'u64' },
  { name: 'expectedParentId', type: 'u64' },
  { name: 'sameSize', type: 'u8' },
  { name: 'reserved', type: 'bytes', size: 31 },
  { name: 'backingName', type: 'bytes', size: 256 },
  { name: 'backingFormat', type: 'bytes', size: 32 },
] as const);

function hasMagic(head: Uint8Array): boolean {
  return head.length >= MAGIC.length && MAGIC.every((b, i) => head[i] === b);
}

/** A NUL-padded text field. */
function text(field: Uint8Array): string {
  const end = field.indexOf(0);
  return new TextDecoder().decode(end < 0 ? field : field.subarray(0, end));
}

/** Where sector 0's data lies: after the map, rounded up to a sector. */
function dataStart(size: number): number {
  return MAP_OFFSET + Math.ceil(size / SECTOR / SECTOR) * SECTOR;
}

export interface ToyCreate {
  size: number;
  id: number;
  backing?: string;
  backingFormat?: string;
  expectedParentId?: number;
  sameSize?: boolean;
}

/** Write a new toy image into an empty store (tests build chains with it directly). */
export async function writeToy(store: Store, c: ToyCreate): Promise<void> {
  const enc = new TextEncoder();
  const h = Header.encode({
    magic: MAGIC,
    size: BigInt(c.size),
    id: BigInt(c.id),
    expectedParentId: BigInt(c.expectedParentId ?? 0),
    sameSize: c.sameSize ? 1 : 0,
    reserved: new Uint8Array(0),
    backingName: enc.encode(c.backing ?? ''),
    backingFormat: enc.encode(c.backingFormat ?? ''),
  });
  await store.write(0, h);
  await store.truncate(dataStart(c.size) + c.size); // an all-zero map: every sector unallocated
}

// ---- image.ts: the I/O path. Readable and Writable are every layer's; Trimmable is optional. ----

/**
 * One toy layer. It implements Readable and Writable (every layer must) and
 * Trimmable (optional: the method present *is* the capability — delete
 * trim() and the chain's trim becomes a no-op, commit stops emptying the
 * top, and the NBD server stops offering TRIM; no flag to keep in step).
 */
class ToyImage implements Readable, Writable, Trimmable {
  readonly format = 'toy';
  readonly logicalSectorSize = SECTOR;
  /** writeZeroes records zeros in the map (kind 2) instead of writing zero bytes: NBD may offer FAST_ZERO. */
  readonly fastZero = true;
  /** Where data lies in the file. */
  private readonly dataStart: number;

  constructor(
    private readonly store: Store,
    readonly size: number,
    /** What a child records to name this layer as its parent (BackingRef.expectedId). */
    readonly identity: string,
    /** Not readonly at run time: test/helpers/ops-fixtures.ts gives the toy a setBacking that replaces it. */
    readonly backing: BackingRef | null,
    private readonly map: Uint8Array,
    readonly readOnly: boolean,
  ) {
    this.dataStart = dataStart(size);
  }

  get path(): string {
    return this.store.path;
  }

  /** This layer only: 'unallocated' says "ask the backing" (chain/ does); 'zero' says "zeros, whatever the backing holds". */
  private walk(offset: number, length: number): Extent[] {
    const out: Extent[] = [];
    let pos = offset;
    while (pos < offset + length) {
      const s = Math.floor(pos / SECTOR);
      const end = Math.min(offset + length, (s + 1) * SECTOR);
      const kind = this.map[s] === 1 ? 'data' : this.map[s] === 2 ? 'zero' : 'unallocated';
      pushExtent(out, kind === 'data' ? { offset: pos, length: end - pos, kind, hostOffset: this.dataStart + pos } : { offset: pos, length: end - pos, kind });
      pos = end;
    }
    return out;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRequest(this, 'block status', offset, length);
    return this.walk(offset, length);
  }

  /**
   * The optional fast paths (Readable.mapCached, readHost). A real format
   * answers mapCached whenever its map is in memory; the toy answers only
   * for ranges starting in an even 4 KiB page, so one test run drives the
   * chain through both its synchronous and its awaited map lookups.
   */
  mapCached(offset: number, length: number): Extent[] | undefined {
    if (Math.floor(offset / 4096) % 2 !== 0) return undefined;
    checkRequest(this, 'block status', offset, length);
    return this.walk(offset, length);
  }

  /** A data extent's bytes, by its hostOffset: one read, no second map lookup. */
  async readHost(hostOffset: number, into: Uint8Array): Promise<void> {
    await this.store.read(hostOffset, into);
  }

  /** This layer's bytes; what it does not hold (unallocated, zero) reads as zeros. */
  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRequest(this, 'read', offset, into.length);
    for (const e of this.walk(offset, into.length)) {
      const part = into.subarray(e.offset - offset, e.offset - offset + e.length);
      if (e.kind === 'data') await this.store.read(e.hostOffset!, part);
      else part.fill(0);
    }
  }

  /** Map bytes for sectors [offset, offset+length), in memory and on disk. */
  private async setMap(offset: number, length: number, v: number): Promise<void> {
    const from = offset / SECTOR;
    const to = (offset + length) / SECTOR;
    this.map.fill(v, from, to);
    await this.store.write(MAP_OFFSET + from, this.map.subarray(from, to));
  }

  /**
   * Whole sectors only (checkRequest refuses the rest: chain/ completes
   * partial sectors before a layer sees them). Data first, then the map
   * byte that points at it; a real format also makes the data durable
   * before the pointer (see add-cow's flush, docs/adding-a-format.md).
   */
  async write(offset: number, data: Uint8Array): Promise<void> {
    checkRequest(this, 'write', offset, data.length, SECTOR);
    await this.store.write(this.dataStart + offset, data);
    await this.setMap(offset, data.length, 1);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRequest(this, 'write zeroes', offset, length, SECTOR);
    await this.setMap(offset, length, 2);
  }

  /** Trimmable: the sectors show the backing again (discarded contents are unspecified). */
  async trim(offset: number, length: number): Promise<void> {
    checkRequest(this, 'trim', offset, length, SECTOR);
    await this.setMap(offset, length, 0);
  }

  flush(): Promise<void> {
    return this.store.flush();
  }

  close(): Promise<void> {
    return this.store.close();
  }

  info(): FormatInfo {
    return { specific: { id: this.identity } };
  }
}

// ---- open.ts: decode first, validate second, then build the image ----

async function openToy(ctx: OpenContext): Promise<ToyImage> {
  const h = Header.decode(await readExact(ctx.store, 0, new Uint8Array(Header.SIZE), 'toy header'));
  if (!hasMagic(h.magic)) throw new BlockError('corrupt', 'not a toy image (bad magic)', { path: ctx.path, offset: 0 });
  const size = Number(h.size);
  if (size % SECTOR) throw new BlockError('corrupt', 'toy size not sector aligned', { path: ctx.path, offset: Header.offsets.size });
  const map = await readExact(ctx.store, MAP_OFFSET, new Uint8Array(size / SECTOR), 'toy map');
  // The layer says what it records about its parent; chain/ finds, opens and checks it.
  const name = text(h.backingName);
  const backing: BackingRef | null = name
    ? {
        recorded: name,
        candidates: [name],
        format: text(h.backingFormat) || undefined,
        expectedId: h.expectedParentId ? String(h.expectedParentId) : undefined,
        sameSize: h.sameSize === 1,
      }
    : null;
  return new ToyImage(ctx.store, size, String(h.id), backing, map, ctx.readOnly);
}

// ---- create.ts: a new file at ctx.path (and CREATE_OPTIONS: the toy has none) ----

async function createToy(ctx: CreateContext): Promise<void> {
  const store = await ctx.openStore(ctx.path, { create: true });
  try {
    await writeToy(store, { size: ctx.size, id: 1, backing: ctx.backing?.path, backingFormat: ctx.backing?.format });
    await store.flush();
  } finally {
    await store.close();
  }
}

// ---- index.ts: the Format object (one line in src/formats/registry.ts registers a real one) ----

export const toyFormat: Format = {
  name: 'toy',
  aliases: [],
  description: 'test-only copy-on-write format',
  maxSize: 2 ** 40,
  probe: ({ head }) => (hasMagic(head) ? 100 : 0),
  open: openToy,
  create: createToy,
  createOptions: [],
};

/** The toy with raw below it, for tests: pass as `formats` to openChain and the ops. */
export const TOY_FORMATS: readonly Format[] = [toyFormat, rawFormat];
