import { BlockError } from '../../core/errors.js';
import { isZeroGuid, randomGuid } from '../../core/guid.js';
import { alignUp } from '../../core/u64.js';
import type { Store } from '../../io/store.js';
import { readExact } from '../../io/store.js';
import type { BackingRef, OpenContext } from '../types.js';
import { Bat, BAT_ENTRY_SIZE, batGeometry } from './bat.js';
import { decodeFileIdentifier } from './file-identifier.js';
import { chooseHeader, Header } from './header.js';
import { HeaderWriter, Journal } from './journal.js';
import { GUIDS, HEADER_OFFSETS, HEADER_SECTION_SIZE, MiB, REGION_TABLE_OFFSETS } from './layout.js';
import { OverlayStore, planReplay, replayOntoFile } from './log-replay.js';
import { decodeMetadataTable, FLAG_IS_USER, METADATA_TABLE_SIZE, type MetadataEntry } from './metadata-table.js';
import {
  decodeVirtualSize,
  FileParameters,
  HAS_PARENT,
  LEAVE_BLOCKS_ALLOCATED,
  Page83Data,
  SectorSize,
  validateParameters,
  type DiskParameters,
} from './metadata-items.js';
import { backingFromLocator, decodeParentLocator, type ParentLocator } from './parent-locator.js';
import { decodeRegionTables, REGION_TABLE_SIZE } from './region-table.js';
import { SectorBitmapCache } from './sector-bitmap.js';
import { fileExtent, type VhdxState } from './state.js';
import { VhdxImage } from './image.js';
import { vhdxFreeSpace } from './compact.js';
import { giveBackTailVhdx } from './check.js';

/** The first 320 KiB: file identifier, both headers, both region tables. */
const HEAD_LENGTH = REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE;

async function readHead(store: Store, path: string) {
  const head = await readExact(store, 0, new Uint8Array(HEAD_LENGTH), 'VHDX header section');
  const { creator } = decodeFileIdentifier(head, path);
  return {
    creator,
    headers: HEADER_OFFSETS.map((o) => head.subarray(o, o + Header.SIZE)),
    regions: REGION_TABLE_OFFSETS.map((o) => head.subarray(o, o + REGION_TABLE_SIZE)),
  };
}

/**
 * Open a VHDX file: header section, log replay, region table, metadata, BAT
 * (VHDX spec 2.1: the order in which a reader must trust the structures —
 * nothing past the headers is believed before the log is replayed).
 */
export async function openVhdx(ctx: OpenContext): Promise<VhdxImage> {
  const path = ctx.path;
  let store: Store = ctx.store;
  const ignore = ctx.options.ignoreChecksums ?? false;
  let fileSize = await store.size();
  if (fileSize < HEADER_SECTION_SIZE) {
    throw new BlockError('corrupt', `file is ${fileSize} bytes, shorter than the 1 MiB VHDX header section`, { path });
  }
  let head = await readHead(store, path);
  let choice = chooseHeader(head.headers, ignore, path);
  let headers = new HeaderWriter(store, choice.current.slot, choice.current.value);
  const logOf = () => ({ offset: Number(headers.current.logOffset), length: headers.current.logLength });
  let replay: VhdxState['replay'] = null;
  let fileGuidChanged = false;

  // 2.3.3: a non-zero LogGuid means the log may hold updates not yet in place.
  if (!isZeroGuid(headers.current.logGuid)) {
    const plan = await planReplay(store, { ...logOf(), guid: headers.current.logGuid }, fileSize, path);
    if (ctx.readOnly) {
      if (plan) {
        store = new OverlayStore(ctx.store, plan, fileSize);
        replay = { entries: plan.entries.length, onto: 'memory' };
      }
    } else {
      if (plan) {
        await replayOntoFile(store, plan);
        replay = { entries: plan.entries.length, onto: 'file' };
      }
    }
    if (plan) {
      fileSize = await store.size();
      head = await readHead(store, path);
      choice = chooseHeader(head.headers, ignore, path);
      headers = new HeaderWriter(store, choice.current.slot, choice.current.value);
    }
    if (!ctx.readOnly) {
      await headers.update({ logGuid: new Uint8Array(16), fileWriteGuid: randomGuid() });
      fileGuidChanged = true;
    }
  }

  const log = logOf();
  if (log.offset + log.length > fileSize) {
    throw new BlockError('corrupt', `log (offset ${log.offset}, length ${log.length}) lies past the end of the file (${fileSize})`, { path });
  }
  const { table: regions, problems: regionProblems } = decodeRegionTables(head.regions, fileSize, log, ignore, path);

  // Metadata (2.6): table, then each item, each bounds-checked by the table decoder.
  const mdRegion = regions.metadata;
  const table = await readExact(store, mdRegion.offset, new Uint8Array(METADATA_TABLE_SIZE), 'metadata table');
  const entries = decodeMetadataTable(table, mdRegion.length, mdRegion.offset, path);
  const item = async (id: string, what: string, minLength: number, required = true): Promise<Uint8Array | null> => {
    // System items only: the table keys an item by its GUID and IsUser together (2.6.1), so a user item may carry a system GUID.
    const e = entries.find((x) => x.id === id && (x.flags & FLAG_IS_USER) === 0);
    if (!e) {
      if (required) throw new BlockError('corrupt', `metadata item "${what}" is missing`, { path, offset: mdRegion.offset });
      return null;
    }
    if (e.length < minLength) throw new BlockError('corrupt', `metadata item "${what}" is ${e.length} bytes, fewer than ${minLength}`, { path, offset: mdRegion.offset + e.offset });
    return readExact(store, mdRegion.offset + e.offset, new Uint8Array(e.length), `metadata item ${what}`);
  };
  const fp = FileParameters.decode((await item(GUIDS.fileParameters, 'file parameters', FileParameters.SIZE))!);
  const params: DiskParameters = {
    blockSize: fp.blockSize,
    leaveBlocksAllocated: (fp.flags & LEAVE_BLOCKS_ALLOCATED) !== 0,
    hasParent: (fp.flags & HAS_PARENT) !== 0,
    virtualSize: decodeVirtualSize((await item(GUIDS.virtualDiskSize, 'virtual disk size', 8))!, path),
    logicalSectorSize: SectorSize.decode((await item(GUIDS.logicalSectorSize, 'logical sector size', 4))!).size,
    physicalSectorSize: SectorSize.decode((await item(GUIDS.physicalSectorSize, 'physical sector size', 4))!).size,
    page83: Page83Data.decode((await item(GUIDS.page83Data, 'page 83 data', 16))!).id,
  };
  validateParameters(params, path);

  let parentLocator: ParentLocator | null = null;
  let backing: BackingRef | null = null;
  if (params.hasParent) {
    const raw = (await item(GUIDS.parentLocator, 'parent locator', 20))!;
    parentLocator = decodeParentLocator(raw, path, mdRegion.offset + entries.find((e) => e.id === GUIDS.parentLocator)!.offset);
    backing = backingFromLocator(parentLocator, path);
  }

  // BAT (2.5): its region must hold every entry the geometry implies.
  const geometry = batGeometry(params.virtualSize, params.blockSize, params.logicalSectorSize, params.hasParent);
  if (geometry.entryCount * BAT_ENTRY_SIZE > regions.bat.length) {
    throw new BlockError('corrupt', `BAT region holds ${regions.bat.length / BAT_ENTRY_SIZE} entries but the disk needs ${geometry.entryCount}`, { path, offset: regions.bat.offset });
  }
  const batBytes = await readExact(store, regions.bat.offset, new Uint8Array(Bat.loadLength(geometry)), 'BAT');
  const bat = new Bat(geometry, batBytes);
  const blocksEnd = bat.validate(fileSize, path);

  const structuresEnd = Math.max(log.offset + log.length, ...regions.all.map((r) => r.offset + r.length), blocksEnd);
  const state: VhdxState = {
    store,
    path: store.path,
    readOnly: ctx.readOnly,
    params,
    bat,
    regions,
    metadataEntries: entries as MetadataEntry[],
    headers,
    journal: new Journal(store, headers, log, () => fileExtent(state)),
    log,
    parentLocator,
    backing,
    creator: head.creator,
    fileEnd: alignUp(Math.max(fileSize, structuresEnd), MiB),
    fileSize,
    free: null,
    replay,
    tailGivenBack: 0,
    problems: [...choice.problems, ...regionProblems],
    bitmaps: new SectorBitmapCache(store),
  };
  if (!ctx.readOnly) {
    // Recovery belongs to the writable open (which holds the lock), right after the log replay: space past the
    // last structure that nothing uses — an allocation or a compaction stopped by a crash — is cut off before
    // anything else is written (check.ts giveBackTailVhdx; the log is empty by now). A read-only open never
    // writes: check reports the space as a leak.
    state.tailGivenBack = await giveBackTailVhdx(state, fileGuidChanged);
    // Holes left by released blocks, for new ones (nothing else allocates).
    if (!params.leaveBlocksAllocated) state.free = vhdxFreeSpace(state);
  }
  return new VhdxImage(state);
}
