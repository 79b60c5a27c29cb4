import { alignDown, alignUp } from '../../core/u64.js';
import type { Store } from '../../io/store.js';
import type { BackingRef } from '../types.js';
import type { FreeRanges } from '../free-ranges.js';
import type { Bat } from './bat.js';
import type { HeaderWriter, Journal } from './journal.js';
import { MiB } from './layout.js';
import type { MetadataEntry } from './metadata-table.js';
import type { DiskParameters } from './metadata-items.js';
import type { ParentLocator } from './parent-locator.js';
import type { RegionTable } from './region-table.js';
import type { SectorBitmapCache } from './sector-bitmap.js';

/**
 * Everything open() learned about the file, and what the image, check and
 * maintenance share while it is open (QEMU's BDRVVHDXState, block/vhdx.h).
 * The lock that serialises metadata changes is the image's: check and
 * maintenance run under it (image.ts, `exclusive`) and never take it.
 */
export interface VhdxState {
  /** The file (or, for a read-only open with a log to replay, the file with the log laid over it). */
  readonly store: Store;
  readonly path: string;
  readonly readOnly: boolean;
  params: DiskParameters;
  bat: Bat;
  regions: RegionTable;
  metadataEntries: MetadataEntry[];
  headers: HeaderWriter;
  journal: Journal;
  log: { offset: number; length: number };
  parentLocator: ParentLocator | null;
  backing: BackingRef | null;
  creator: string;
  /** Where the next block goes: past every structure, 1 MiB aligned. */
  fileEnd: number;
  /**
   * Holes inside the file no structure uses (released blocks), where new
   * blocks go before the file grows; null when opened read-only.
   */
  free: FreeRanges | null;
  /** Real file size (the allocation end may run ahead of it until data is written). */
  fileSize: number;
  replay: { entries: number; onto: 'file' | 'memory' } | null;
  /**
   * Bytes past the last structure that this (writable) open cut off before
   * anything else was written (check.ts giveBackTailVhdx): what an
   * interrupted allocation or compaction left. check reports them as a
   * repaired leak.
   */
  tailGivenBack: number;
  problems: string[];
  /** Sector bitmap sectors read so far; maintenance drops them after a structural change. */
  readonly bitmaps: SectorBitmapCache;
}

/** Durable size and structure end for a log entry (2.3.1.1, both 1 MiB multiples). */
export function fileExtent(s: VhdxState): { flushed: number; last: number } {
  return { flushed: alignDown(s.fileSize, MiB), last: alignUp(Math.max(s.fileSize, s.fileEnd), MiB) };
}
