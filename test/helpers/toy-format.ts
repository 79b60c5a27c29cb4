import type { Extent } from '../../src/core/extent.js';
import { pushExtent } from '../../src/core/extent.js';
import { BlockError } from '../../src/core/errors.js';
import type { Store } from '../../src/io/store.js';
import type { Format, Image, OpenContext, CreateContext } from '../../src/formats/types.js';
import { rawFormat } from '../../src/formats/raw/index.js';

/**
 * A deliberately simple copy-on-write format used only to test chain/ on its
 * own, independent of any real format: one map byte per 512-byte sector
 * (0 unallocated, 1 data, 2 zero), data at a fixed offset.
 *
 *   0    "TOYCOW\0\0"   8  size u64   16 id u64   24 expected parent id u64
 *   32   same-size u8   64 backing name (256 bytes)  320 backing format (32)
 *   1024 map (size/512 bytes)   then data, sector n at dataStart + n*512
 */
const MAGIC = 'TOYCOW\0\0';

class ToyImage implements Image {
  readonly format = 'toy';
  readonly logicalSectorSize = 512;
  readonly fastZero = true;
  constructor(
    private store: Store,
    readonly size: number,
    readonly identity: string,
    readonly backing: Image['backing'],
    private map: Uint8Array,
    readonly readOnly: boolean,
  ) {}
  get path() {
    return this.store.path;
  }
  private get dataStart() {
    return 1024 + Math.ceil(this.map.length / 512) * 512;
  }
  private walk(offset: number, length: number): Extent[] {
    const out: Extent[] = [];
    let pos = offset;
    while (pos < offset + length) {
      const s = Math.floor(pos / 512);
      const end = Math.min(offset + length, (s + 1) * 512);
      const kind = this.map[s] === 1 ? 'data' : this.map[s] === 2 ? 'zero' : 'unallocated';
      pushExtent(out, kind === 'data' ? { offset: pos, length: end - pos, kind, hostOffset: this.dataStart + pos } : { offset: pos, length: end - pos, kind });
      pos = end;
    }
    return out;
  }
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.walk(offset, length);
  }
  /**
   * The optional fast paths (Image.mapCached, readHost), answered only for
   * ranges starting in an even 4 KiB page, so one test run drives the chain
   * through both its synchronous and its awaited map lookups.
   */
  mapCached(offset: number, length: number): Extent[] | undefined {
    return Math.floor(offset / 4096) % 2 === 0 ? this.walk(offset, length) : undefined;
  }
  async readHost(hostOffset: number, into: Uint8Array) {
    await this.store.read(hostOffset, into);
  }
  async read(offset: number, into: Uint8Array) {
    await this.store.read(this.dataStart + offset, into);
  }
  private async setMap(offset: number, length: number, v: number) {
    this.map.fill(v, offset / 512, (offset + length) / 512);
    await this.store.write(1024 + offset / 512, this.map.subarray(offset / 512, (offset + length) / 512));
  }
  async write(offset: number, data: Uint8Array) {
    if (offset % 512 || data.length % 512) throw new Error(`unaligned write reached the toy layer: ${offset}+${data.length}`);
    await this.store.write(this.dataStart + offset, data);
    await this.setMap(offset, data.length, 1);
  }
  async writeZeroes(offset: number, length: number) {
    await this.setMap(offset, length, 2);
  }
  async trim(offset: number, length: number) {
    await this.setMap(offset, length, 0);
  }
  flush() {
    return this.store.flush();
  }
  close() {
    return this.store.close();
  }
  info() {
    return { specific: { id: this.identity } };
  }
}

export interface ToyCreate {
  size: number;
  id: number;
  backing?: string;
  backingFormat?: string;
  expectedParentId?: number;
  sameSize?: boolean;
}

export async function writeToy(store: Store, c: ToyCreate): Promise<void> {
  const h = new Uint8Array(1024);
  const dv = new DataView(h.buffer);
  h.set(new TextEncoder().encode(MAGIC));
  dv.setBigUint64(8, BigInt(c.size));
  dv.setBigUint64(16, BigInt(c.id));
  dv.setBigUint64(24, BigInt(c.expectedParentId ?? 0));
  h[32] = c.sameSize ? 1 : 0;
  h.set(new TextEncoder().encode(c.backing ?? ''), 64);
  h.set(new TextEncoder().encode(c.backingFormat ?? ''), 320);
  await store.write(0, h);
  await store.truncate(1024 + Math.ceil(c.size / 512 / 512) * 512 + c.size);
}

export const toyFormat: Format = {
  name: 'toy',
  aliases: [],
  description: 'test-only copy-on-write format',
  maxSize: 2 ** 40,
  probe: ({ head }) => (new TextDecoder().decode(head.subarray(0, 8)) === MAGIC ? 100 : 0),
  async open(ctx: OpenContext): Promise<Image> {
    const h = new Uint8Array(1024);
    await ctx.store.read(0, h);
    const dv = new DataView(h.buffer);
    const size = Number(dv.getBigUint64(8));
    const id = String(dv.getBigUint64(16));
    const expected = dv.getBigUint64(24);
    const str = (a: number, n: number) => new TextDecoder().decode(h.subarray(a, a + n)).replace(/\0.*$/s, '');
    const name = str(64, 256);
    const fmt = str(320, 32);
    if (size % 512) throw new BlockError('corrupt', 'toy size not sector aligned');
    const map = new Uint8Array(size / 512);
    await ctx.store.read(1024, map);
    const backing = name
      ? { recorded: name, candidates: [name], format: fmt || undefined, expectedId: expected ? String(expected) : undefined, sameSize: h[32] === 1 }
      : null;
    return new ToyImage(ctx.store, size, id, backing, map, ctx.readOnly);
  },
  async create(ctx: CreateContext) {
    const s = await ctx.openStore(ctx.path, { create: true });
    await writeToy(s, { size: ctx.size, id: 1, backing: ctx.backing?.path, backingFormat: ctx.backing?.format });
    await s.close();
  },
  createOptions: [],
};

export const TOY_FORMATS: readonly Format[] = [toyFormat, rawFormat];
