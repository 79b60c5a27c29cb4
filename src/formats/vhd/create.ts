import { baseName, relativeName } from '../../io/hosts.js';
import { BlockError } from '../../core/errors.js';
import { randomGuid } from '../../core/guid.js';
import { isPowerOfTwo, alignUp } from '../../core/u64.js';
import { parseSize } from '../../core/size.js';
import type { CreateContext, CreateOption } from '../types.js';
import { batBytes, encodeBat } from './bat.js';
import { DYNAMIC_HEADER_SIZE, HEADER_VERSION, MAX_BLOCK_SIZE, encodeDynamicHeader } from './dynamic-header.js';
import { FEATURES_RESERVED, FILE_FORMAT_VERSION, FOOTER_SIZE, VHD_EPOCH_UNIX, type VhdFooter, encodeFooter, geometryForSize, roundSizeToChs } from './footer.js';
import { LOCATOR_COUNT, ParentLocatorEntry, PlatformCode, encodeLocatorData, encodeLocatorEntry } from './parent-locator.js';
import { MAX_FIXED_SIZE, MAX_SIZE, sizeLimitMessage } from './state.js';

const DEFAULT_BLOCK_SIZE = 2 << 20;
/** Creator application recorded in new images (spec "Creator Application": a four-character tag of the tool). */
const CREATOR_APP = 'vdsk';
const CREATOR_VERSION = 0x00010000;
/** Host OS code of Windows (Wi2k); qemu-img writes the same. */
const HOST_OS_WINDOWS = 0x5769326b;

export const CREATE_OPTIONS: readonly CreateOption[] = [
  { name: 'subformat', type: 'enum', values: ['dynamic', 'fixed'], description: 'dynamic (grows as written, default) or fixed (all space allocated up front)', default: 'dynamic' },
  { name: 'block_size', type: 'size', description: 'block size of a dynamic or differencing disk (power of two, 512 bytes to 256 MiB; default 2 MiB)', default: '2M' },
  { name: 'force_size', type: 'bool', description: 'keep the size exactly instead of rounding it up to a whole CHS geometry', default: 'off' },
  { name: 'azure', type: 'bool', description: 'a VHD Azure takes: fixed, the size rounded up to a whole MiB (20 MiB to 32 TiB)', default: 'off' },
];

const MiB = 1 << 20;
/** Azure's limits for an uploaded VHD (its "prepare a VHD" rules): the smallest and the largest disk. */
export const AZURE_MIN_SIZE = 20 * MiB;
export const AZURE_MAX_SIZE = MAX_FIXED_SIZE;

function bool(v: string | undefined): boolean {
  return v !== undefined && ['on', 'true', 'yes'].includes(v);
}

/** `-o force_size`, as create and measure read it. */
function forceSizeOption(o: Record<string, string>): boolean {
  return bool(o.force_size);
}

/** `-o block_size`, validated (create and measure must agree on what they accept). */
export function blockSizeOption(o: Record<string, string>): number {
  const blockSize = o.block_size !== undefined ? parseSize(o.block_size, 'block_size') : DEFAULT_BLOCK_SIZE;
  if (!isPowerOfTwo(blockSize) || blockSize < 512 || blockSize > MAX_BLOCK_SIZE) {
    throw new BlockError('invalid-argument', `block_size must be a power of two from 512 bytes to 256 MiB (got ${blockSize})`);
  }
  return blockSize;
}

/** `-o azure`, as create, measure and convert read it. */
function azureOption(o: Record<string, string>): boolean {
  return bool(o.azure);
}

/**
 * The size Azure gets for a disk of `requested` bytes: rounded up to a whole
 * MiB (Azure: "the virtual size must be a whole number of MiB"), refused
 * outside 20 MiB to 32 TiB. Rounding down would lose data; rounding up only
 * adds zeros at the end.
 */
function azureSize(requested: number): number {
  const size = Math.ceil(requested / MiB) * MiB;
  if (size < AZURE_MIN_SIZE) throw new BlockError('out-of-range', `Azure takes disks of at least 20 MiB; this one is ${requested} bytes`);
  if (size > AZURE_MAX_SIZE) throw new BlockError('out-of-range', `Azure takes disks of at most 32 TiB (${AZURE_MAX_SIZE} bytes); this one is ${requested} bytes`);
  return size;
}

/** The size a request gets and its geometry; see docs/formats/vhd.md "Size rounding". */
export function plannedSize(requested: number, forceSize: boolean): { size: number; cylinders: number; heads: number; sectorsPerTrack: number } {
  if (forceSize) return { size: requested, ...geometryForSize(requested) };
  const r = roundSizeToChs(requested);
  return { size: r.size, ...r.chs };
}

/**
 * What `-o` makes of a requested size (create and measure must agree):
 * the disk type, the size and the geometry. `azure=on` is a fixed disk of
 * a whole number of MiB, the size kept exactly otherwise (no CHS rounding).
 */
export function planVhd(requested: number, o: Record<string, string>): { diskType: 'fixed' | 'dynamic'; size: number; cylinders: number; heads: number; sectorsPerTrack: number } {
  if (azureOption(o)) {
    if (o.subformat === 'dynamic') throw new BlockError('invalid-argument', 'azure=on makes a fixed VHD (Azure takes no other); drop subformat=dynamic');
    const size = azureSize(requested);
    return { diskType: 'fixed', size, ...geometryForSize(size) };
  }
  const diskType = o.subformat === 'fixed' ? 'fixed' : 'dynamic';
  const p = plannedSize(requested, forceSizeOption(o));
  if (p.size > (diskType === 'fixed' ? MAX_FIXED_SIZE : MAX_SIZE)) throw new BlockError('out-of-range', `${sizeLimitMessage(diskType)}; ${p.size} bytes asked`);
  return { diskType, ...p };
}

export function vhdNow(date = new Date()): number {
  return Math.max(0, Math.min(0xffffffff, Math.floor(date.getTime() / 1000) - VHD_EPOCH_UNIX));
}

function newFooter(size: number, geometry: { cylinders: number; heads: number; sectorsPerTrack: number }, diskType: VhdFooter['diskType']): VhdFooter {
  return {
    features: FEATURES_RESERVED,
    fileFormatVersion: FILE_FORMAT_VERSION,
    dataOffset: diskType === 'fixed' ? null : FOOTER_SIZE,
    timestamp: vhdNow(),
    creatorApplication: CREATOR_APP,
    creatorVersion: CREATOR_VERSION,
    creatorHostOs: HOST_OS_WINDOWS,
    originalSize: size,
    currentSize: size,
    cylinders: geometry.cylinders,
    heads: geometry.heads,
    sectorsPerTrack: geometry.sectorsPerTrack,
    diskType,
    uniqueId: randomGuid(),
    savedState: 0,
  };
}

/**
 * The footer of a new fixed disk of exactly `size` bytes (its geometry by
 * geometryForSize): what an upload to a page blob writes last.
 */
export function fixedFooter(size: number): Uint8Array {
  return encodeFooter(newFooter(size, geometryForSize(size), 'fixed'));
}

/** VHD UUIDs are stored as 16 bytes in text order. */
function uuidBytes(s: string): Uint8Array {
  const hex = s.replace(/[{}-]/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new BlockError('invalid-argument', `not a UUID: ${s}`);
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

interface ParentRecord {
  uuid: Uint8Array;
  timestamp: number;
  unicodeName: string;
  /** Locators to write: platform code and path. */
  locators: Array<{ platformCode: number; path: string }>;
}

/** What a child records about `parent` (spec "Dynamic Disk Header": parent UUID, time stamp, name, locators W2ku + W2ru). */
export function parentRecord(childPath: string, parent: { absolutePath: string; identity?: string; mtime: Date; format: string }): ParentRecord {
  if (parent.format !== 'vhd') throw new BlockError('unsupported', `the parent of a VHD differencing disk must be a VHD (got ${parent.format})`, { path: childPath });
  if (!parent.identity) throw new BlockError('invalid-argument', 'the parent has no VHD UUID', { path: childPath });
  const rel = relativeName(childPath, parent.absolutePath) ?? parent.absolutePath;
  // Windows writes W2ru as ".\name"; readers (ours included) accept either separator.
  const w2ru = (rel.startsWith('..') ? rel : `.\\${rel}`).replace(/\//g, '\\');
  return {
    uuid: uuidBytes(parent.identity),
    timestamp: vhdNow(parent.mtime),
    unicodeName: baseName(parent.absolutePath),
    locators: [
      { platformCode: PlatformCode.W2ku, path: parent.absolutePath },
      { platformCode: PlatformCode.W2ru, path: w2ru },
    ],
  };
}

/** Lay out locator data from `start`; returns the locator table and the data blocks to write. */
export function layoutLocators(record: ParentRecord, start: number): { table: Uint8Array; writes: Array<[number, Uint8Array]>; end: number } {
  const table = new Uint8Array(LOCATOR_COUNT * ParentLocatorEntry.SIZE);
  const writes: Array<[number, Uint8Array]> = [];
  let at = start;
  record.locators.forEach((l, i) => {
    const data = encodeLocatorData(l.platformCode, l.path);
    const space = alignUp(Math.max(data.length, 1), 512);
    // Data space in bytes, as Windows writes it (the spec says sectors; readers use the data length).
    encodeLocatorEntry({ platformCode: l.platformCode, dataSpace: space, dataLength: data.length, dataOffset: at }, table, i);
    const padded = new Uint8Array(space);
    padded.set(data);
    writes.push([at, padded]);
    at += space;
  });
  return { table, writes, end: at };
}

export async function createVhd(ctx: CreateContext): Promise<void> {
  const o = ctx.options;
  const differencing = ctx.backing !== undefined;
  if (differencing && (o.subformat === 'fixed' || azureOption(o))) {
    throw new BlockError('invalid-argument', `a VHD with a backing file is a differencing disk; ${o.subformat === 'fixed' ? 'subformat=fixed' : 'azure=on'} does not apply`, { path: ctx.path });
  }
  const blockSize = blockSizeOption(o);
  let size: number;
  let geometry: { cylinders: number; heads: number; sectorsPerTrack: number };
  let diskType: VhdFooter['diskType'];
  if (ctx.backing) {
    // The spec requires a differencing disk to have its parent's size (the chain checks it on open).
    if (ctx.size !== ctx.backing.size) {
      throw new BlockError(
        'invalid-argument',
        `a VHD differencing disk has its parent's size (${ctx.backing.size} bytes), not ${ctx.size}: the VHD specification and Windows tie a child's size to its parent's; ` +
          (ctx.size > ctx.backing.size ? `grow the parent's chain first (\`vdisk resize --chain PARENT ${ctx.size}\`) and make the child without a size, or ` : '') +
          'use VHDX, whose children may differ in size from their parent',
        { path: ctx.path },
      );
    }
    size = ctx.size;
    geometry = geometryForSize(size);
    diskType = 'differencing';
    if (size > MAX_SIZE) throw new BlockError('out-of-range', sizeLimitMessage(diskType), { path: ctx.path });
  } else {
    let p: ReturnType<typeof planVhd>;
    try {
      p = planVhd(ctx.size, o);
    } catch (e) {
      throw e instanceof BlockError ? e.withContext({ path: ctx.path }) : e;
    }
    size = p.size;
    geometry = p;
    diskType = p.diskType;
  }
  const footer = newFooter(size, geometry, diskType);
  const footerBytes = encodeFooter(footer);

  const store = await ctx.openStore(ctx.path, { create: true });
  try {
    if (diskType === 'fixed') {
      // Data first (a sparse hole), then the footer right after it.
      await store.truncate(size);
      await store.write(size, footerBytes);
    } else {
      const maxTableEntries = Math.ceil(size / blockSize);
      const tableOffset = FOOTER_SIZE + DYNAMIC_HEADER_SIZE;
      let end = tableOffset + batBytes(maxTableEntries);
      let locators: Uint8Array = new Uint8Array(LOCATOR_COUNT * ParentLocatorEntry.SIZE);
      let parent: ParentRecord | undefined;
      const extra: Array<[number, Uint8Array]> = [];
      if (ctx.backing) {
        parent = parentRecord(ctx.path, ctx.backing);
        const l = layoutLocators(parent, end);
        locators = l.table;
        extra.push(...l.writes);
        end = l.end;
      }
      const header = encodeDynamicHeader({
        tableOffset,
        headerVersion: HEADER_VERSION,
        maxTableEntries,
        blockSize,
        parentUniqueId: parent?.uuid ?? new Uint8Array(16),
        parentTimestamp: parent?.timestamp ?? 0,
        parentUnicodeName: parent?.unicodeName ?? '',
        parentLocators: locators,
      });
      await store.write(0, footerBytes);
      await store.write(FOOTER_SIZE, header);
      await store.write(tableOffset, encodeBat(new Uint32Array(0), maxTableEntries));
      for (const [at, data] of extra) await store.write(at, data);
      await store.write(end, footerBytes);
    }
    await store.flush();
  } finally {
    await store.close();
  }
}
