import { uuidToString } from '../../core/guid.js';
import type { Store } from '../../io/store.js';
import type { BackingRef } from '../types.js';
import type { FreeRanges } from '../free-ranges.js';
import type { Batmap } from './batmap.js';
import type { VhdDynamicHeader } from './dynamic-header.js';
import type { VhdFooter } from './footer.js';
import { type ParentLocator, PlatformCode } from './parent-locator.js';

/**
 * The largest dynamic or differencing disk: 2040 GiB (the spec's limit; the
 * 32-bit BAT sector numbers allow it, and Hyper-V and qemu refuse more).
 */
export const MAX_SIZE = 2040 * 2 ** 30;

/**
 * The largest fixed disk vdisk writes: 32 TiB, the most Azure takes (a
 * fixed disk has no BAT: only the footer's 64-bit current size bounds it).
 * Hyper-V attaches fixed VHDs only up to 2040 GiB, and qemu opens none
 * larger (block/vpc.c VHD_MAX_SECTORS); info says so.
 */
export const MAX_FIXED_SIZE = 32 * 2 ** 40;

/** Why a size is refused, by disk type. */
export function sizeLimitMessage(diskType: 'fixed' | 'dynamic' | 'differencing'): string {
  return diskType === 'fixed'
    ? `a fixed VHD holds at most 32 TiB (${MAX_FIXED_SIZE} bytes)`
    : `a ${diskType} VHD holds at most 2040 GiB (${MAX_SIZE} bytes); a fixed one may hold up to 32 TiB`;
}

/**
 * One open VHD as held in memory: everything decoded at open time (open.ts),
 * read by the I/O path (image.ts) and by check.ts and maintenance.ts, which
 * change it along with the file. The image's write machinery (lock, bitmap
 * cache, writes in flight, dirty BAT sectors) stays in the image: check and
 * maintenance run under its lock after it has written its metadata out, so
 * they never see any of it.
 */
export interface VhdState {
  /** The file (check and maintenance work on it directly, under the image's lock). */
  readonly store: Store;
  readonly readOnly: boolean;
  footer: VhdFooter;
  /** Dynamic/differencing only. */
  header: VhdDynamicHeader | null;
  headerOffset: number;
  bat: Uint32Array | null;
  locators: ParentLocator[];
  batmap: Batmap | null;
  /** Where the footer at the end is (or would go, when damaged). */
  footerOffset: number;
  endFooterDamaged: string | null;
  copyFooterProblem: string | null;
  /**
   * Bytes past the last structure that this (writable) open cut off before
   * anything else was written (check.ts giveBackTail): what an interrupted
   * allocation or compaction left. check reports them as a repaired leak.
   */
  tailGivenBack: number;
  /** Holes inside the file where new blocks go before the file grows (free-ranges.ts); null when read-only or fixed. */
  free: FreeRanges | null;
  /** Checksums found wrong and tolerated through OpenOptions.ignoreChecksums. */
  readonly badChecksums: string[];
}

/** What a differencing disk tells the chain about its parent (contract: W2ru, W2ku, MacX, then the unicode name). */
export function backingRef(h: VhdDynamicHeader, locators: ParentLocator[]): BackingRef {
  const order = [PlatformCode.W2ru, PlatformCode.W2ku, PlatformCode.Wi2r, PlatformCode.Wi2k, PlatformCode.MacX];
  const candidates: string[] = [];
  for (const code of order) for (const l of locators) if (l.platformCode === code && l.path) candidates.push(l.path);
  if (h.parentUnicodeName) candidates.push(h.parentUnicodeName);
  return {
    recorded: h.parentUnicodeName || candidates[0] || '',
    candidates,
    format: 'vhd',
    expectedId: uuidToString(h.parentUniqueId),
    sameSize: true,
  };
}
