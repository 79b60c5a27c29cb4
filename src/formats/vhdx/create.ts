import { relativeName } from '../../io/hosts.js';
import { BlockError } from '../../core/errors.js';
import { randomGuid } from '../../core/guid.js';
import { parseSize } from '../../core/size.js';
import { alignUp, isPowerOfTwo } from '../../core/u64.js';
import type { CreateContext, CreateOption } from '../types.js';
import { Bat, BAT_ENTRY_SIZE, batGeometry, batRegionLength, PAYLOAD_FULLY_PRESENT } from './bat.js';
import { encodeFileIdentifier } from './file-identifier.js';
import { encodeHeader } from './header.js';
import { GUIDS, HEADER_OFFSETS, HEADER_SECTION_SIZE, MAX_BLOCK_SIZE, MAX_SIZE, MiB, MIN_BLOCK_SIZE, REGION_TABLE_OFFSETS } from './layout.js';
import { encodeMetadataTable, FLAG_IS_REQUIRED, FLAG_IS_VIRTUAL_DISK, METADATA_TABLE_SIZE, type MetadataEntry } from './metadata-table.js';
import { FileParameters, HAS_PARENT, LEAVE_BLOCKS_ALLOCATED, Page83Data, SectorSize, VirtualDiskSize } from './metadata-items.js';
import { encodeParentLocator, type ParentLocator } from './parent-locator.js';
import { encodeRegionTable } from './region-table.js';

export const CREATE_OPTIONS: readonly CreateOption[] = [
  { name: 'subformat', type: 'enum', values: ['dynamic', 'fixed'], description: 'dynamic (blocks allocated on write, default) or fixed (all blocks allocated up front)', default: 'dynamic' },
  { name: 'block_size', type: 'size', description: 'block size, a power of two from 1 MiB to 256 MiB (0 or absent: 32 MiB, or 2 MiB for a differencing disk)', default: '32M (2M for a differencing disk)' },
  { name: 'log_size', type: 'size', description: 'log size, a multiple of 1 MiB (default 1 MiB)', default: '1M' },
  { name: 'logical_sector_size', type: 'enum', values: ['512', '4096'], description: 'logical sector size (default 512, or the parent\'s)', default: "512 (a differencing disk: its parent's)" },
  { name: 'physical_sector_size', type: 'enum', values: ['512', '4096'], description: 'physical sector size reported to the guest (default 4096)', default: '4096' },
];

/** Hyper-V's defaults: 32 MiB blocks for base disks, 2 MiB for differencing disks (less space per scattered write). */
const DEFAULT_BLOCK_SIZE = 32 * MiB;
const DEFAULT_DIFF_BLOCK_SIZE = 2 * MiB;
const CREATOR = 'vdisk';

/** The metadata region is 1 MiB: the table (64 KiB) and the items after it. */
export const METADATA_REGION_LENGTH = MiB;

function sizeOption(v: string | undefined, what: string): number {
  if (v === undefined || v === '') return 0;
  return parseSize(v, what);
}

/** `-o block_size` (0 or absent: the default for a base or a differencing disk), validated: create and measure accept the same. */
export function blockSizeOption(o: Record<string, string>, differencing: boolean): number {
  const blockSize = sizeOption(o.block_size, 'block_size') || (differencing ? DEFAULT_DIFF_BLOCK_SIZE : DEFAULT_BLOCK_SIZE);
  if (!isPowerOfTwo(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE) {
    throw new BlockError('invalid-argument', `block_size must be a power of two from 1 MiB to 256 MiB (got ${blockSize})`);
  }
  return blockSize;
}

/** `-o log_size`, validated: create and measure accept the same. */
export function logSizeOption(o: Record<string, string>): number {
  const logSize = sizeOption(o.log_size, 'log_size') || MiB;
  if (logSize % MiB !== 0 || logSize > 256 * MiB) throw new BlockError('invalid-argument', `log_size must be a multiple of 1 MiB up to 256 MiB (got ${logSize})`);
  return logSize;
}

/** Build the parent locator a child records for `ctx.backing` (2.6.2.6.3). */
export function locatorFor(childPath: string, target: NonNullable<CreateContext['backing']>): ParentLocator {
  if (target.format !== 'vhdx' || !target.identity) {
    throw new BlockError('unsupported', `a VHDX differencing disk needs a VHDX parent (got ${target.format})`, { path: childPath });
  }
  const loc: ParentLocator = new Map();
  // 2.6.2.6.3: parent_linkage2 is "a GUID that may be used as an alternative to parent_linkage". When commit is about
  // to write into the parent (target.nextIdentity), parent_linkage names the DataWriteGuid the parent takes at its first
  // write and parent_linkage2 the one it has now: the first is what the parent has for nearly all of an interrupted
  // commit, and readers that know only parent_linkage (libvhdi compares it alone) open the chain then too.
  const next = target.nextIdentity && target.nextIdentity !== target.identity ? target.nextIdentity : undefined;
  loc.set('parent_linkage', `{${next ?? target.identity}}`);
  if (next) loc.set('parent_linkage2', `{${target.identity}}`);
  const rel = relativeName(childPath, target.absolutePath);
  // Hyper-V writes ".\\name" for a parent in the child's folder; do the same.
  if (rel && !rel.startsWith('/')) loc.set('relative_path', (rel.startsWith('..') ? '' : '.\\') + rel.split('/').join('\\'));
  loc.set('absolute_win32_path', target.absolutePath.split('/').join('\\'));
  return loc;
}

/** Lay out the metadata region's items after the table and return the table entries. */
function metadataLayout(items: { id: string; data: Uint8Array; flags: number }[]): { entries: MetadataEntry[]; region: Uint8Array } {
  const region = new Uint8Array(METADATA_REGION_LENGTH);
  let at = METADATA_TABLE_SIZE;
  const entries: MetadataEntry[] = items.map((it, index) => {
    region.set(it.data, at);
    const e = { id: it.id, offset: at, length: it.data.length, flags: it.flags, index };
    at = alignUp(at + it.data.length, 8);
    return e;
  });
  if (at > METADATA_REGION_LENGTH) throw new BlockError('invalid-argument', 'metadata does not fit its region');
  region.set(encodeMetadataTable(entries), 0);
  return { entries, region };
}

/**
 * Create a VHDX file. Layout (all 1 MiB aligned):
 *
 *   0       header section (file identifier, 2 headers, 2 region tables)
 *   1 MiB   log (log_size)
 *   +log    metadata region (1 MiB)
 *   +1 MiB  BAT region
 *   then    payload blocks (fixed: all, in order; dynamic: none yet)
 */
export async function createVhdx(ctx: CreateContext): Promise<void> {
  const o = ctx.options;
  const diff = ctx.backing !== undefined;
  const subformat = o.subformat ?? 'dynamic';
  if (diff && subformat === 'fixed') throw new BlockError('invalid-argument', 'a differencing disk cannot be fixed', { path: ctx.path });
  const fixed = subformat === 'fixed';
  let blockSize = blockSizeOption(o, diff);
  const logSize = logSizeOption(o);
  const parentLss = diff ? ctx.backing!.image.logicalSectorSize : 512;
  const lss = o.logical_sector_size ? Number(o.logical_sector_size) : parentLss === 4096 ? 4096 : 512;
  const pss = o.physical_sector_size ? Number(o.physical_sector_size) : 4096;
  if (![512, 4096].includes(lss) || ![512, 4096].includes(pss)) throw new BlockError('invalid-argument', 'sector sizes must be 512 or 4096');
  // A differencing VHDX may have another size than its parent (2.6.2.6 ties none; Hyper-V resizes such children):
  // the size asked for is the size made. ctx.size is the parent's when none was asked (ops/create.ts).
  const size = ctx.size;
  if (!Number.isSafeInteger(size) || size <= 0) throw new BlockError('invalid-argument', `invalid VHDX size ${size}`);
  if (size > MAX_SIZE) throw new BlockError('out-of-range', `VHDX disks hold at most 64 TiB (asked for ${size} bytes)`);
  if (size % lss !== 0) throw new BlockError('invalid-argument', `size ${size} is not a multiple of the ${lss}-byte logical sector`);
  const locator = diff ? locatorFor(ctx.path, ctx.backing!) : null;

  const g = batGeometry(size, blockSize, lss, diff);
  const logOffset = HEADER_SECTION_SIZE;
  const mdOffset = logOffset + logSize;
  const batOffset = mdOffset + METADATA_REGION_LENGTH;
  const batLength = batRegionLength(g);
  const dataStart = batOffset + batLength;

  const u32 = (s: typeof SectorSize, v: number) => s.encode({ size: v });
  const items: { id: string; flags: number; data: Uint8Array }[] = [
    { id: GUIDS.fileParameters, flags: FLAG_IS_REQUIRED, data: FileParameters.encode({ blockSize, flags: (fixed ? LEAVE_BLOCKS_ALLOCATED : 0) | (diff ? HAS_PARENT : 0) }) },
    { id: GUIDS.virtualDiskSize, flags: FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK, data: VirtualDiskSize.encode({ size: BigInt(size) }) },
    { id: GUIDS.page83Data, flags: FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK, data: Page83Data.encode({ id: randomGuid() }) },
    { id: GUIDS.logicalSectorSize, flags: FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK, data: u32(SectorSize, lss) },
    { id: GUIDS.physicalSectorSize, flags: FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK, data: u32(SectorSize, pss) },
  ];
  if (locator) items.push({ id: GUIDS.parentLocator, flags: FLAG_IS_REQUIRED, data: encodeParentLocator(locator) });
  const { region: metadata } = metadataLayout(items);

  const regions = encodeRegionTable([
    { guid: GUIDS.batRegion, offset: batOffset, length: batLength, required: true },
    { guid: GUIDS.metadataRegion, offset: mdOffset, length: METADATA_REGION_LENGTH, required: true },
  ]);
  const header = {
    signature: 0,
    checksum: 0,
    sequenceNumber: 0n,
    fileWriteGuid: randomGuid(),
    dataWriteGuid: randomGuid(),
    logGuid: new Uint8Array(16),
    logVersion: 0,
    version: 1,
    logLength: logSize,
    logOffset: BigInt(logOffset),
  };

  let end = dataStart;
  let bat: Uint8Array | null = null;
  if (fixed) {
    bat = new Uint8Array(Bat.loadLength(g));
    const dv = new DataView(bat.buffer);
    for (let b = 0; b < g.dataBlocks; b++) {
      const i = b + Math.floor(b / g.chunkRatio);
      Bat.encode(dv, i * BAT_ENTRY_SIZE, PAYLOAD_FULLY_PRESENT, dataStart + b * blockSize);
    }
    end = dataStart + g.dataBlocks * blockSize;
  }

  const store = await ctx.openStore(ctx.path, { create: true });
  try {
    await store.write(0, encodeFileIdentifier(CREATOR));
    await store.write(HEADER_OFFSETS[0], encodeHeader({ ...header, sequenceNumber: 1n }));
    await store.write(HEADER_OFFSETS[1], encodeHeader({ ...header, sequenceNumber: 2n }));
    await store.write(REGION_TABLE_OFFSETS[0], regions);
    await store.write(REGION_TABLE_OFFSETS[1], regions);
    await store.write(mdOffset, metadata);
    if (bat) await store.write(batOffset, bat);
    await store.truncate(end);
    await store.flush();
  } finally {
    await store.close();
  }
}
