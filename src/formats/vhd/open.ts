import { BlockError, isBlockError } from '../../core/errors.js';
import { alignUp, checkRange } from '../../core/u64.js';
import type { Store } from '../../io/store.js';
import { readExact } from '../../io/store.js';
import { prefetch } from '../../io/prefetch.js';
import type { OpenContext } from '../types.js';
import { BAT_ENTRY_SIZE, UNALLOCATED, batBytes, readBat } from './bat.js';
import { batmapChecksum, decodeBatmapHeader, isBatmapHeader } from './batmap.js';
import { DYNAMIC_HEADER_SIZE, decodeDynamicHeader } from './dynamic-header.js';
import { FOOTER_SIZE, type DecodedFooter, type VhdFooter, decodeFooter, encodeFooter, hasFooterCookie, SECTOR } from './footer.js';
import { VhdImage } from './image.js';
import { vhdFreeSpace } from './compact.js';
import { giveBackTail } from './check.js';
import { readLocators } from './parent-locator.js';
import { bitmapBytes } from './sector-bitmap.js';
import type { VhdState } from './state.js';

/** BAT entries held in memory at most (256 MiB of table; 128 TiB of disk in 2 MiB blocks). */
const MAX_BAT_ENTRIES = 64 << 20;
/** How much of a VHD's head open reads at once (see openVhd). */
const HEAD_PREFETCH = 64 * 1024;

function checksumProblem(what: string, where: { path?: string; offset: number }): BlockError {
  return new BlockError('checksum', `${what} checksum is wrong`, { ...where });
}

/** Read and decode the footer, falling back to the copy at offset 0 (dynamic and differencing disks only). */
async function openFooter(store: Store, fileSize: number, ignoreChecksums: boolean): Promise<Pick<VhdState, 'footer' | 'endFooterDamaged' | 'copyFooterProblem' | 'badChecksums'>> {
  const path = store.path;
  if (fileSize < FOOTER_SIZE) throw new BlockError('corrupt', `file is too small to be a VHD (${fileSize} bytes, a footer alone is 512)`, { path });
  const endAt = fileSize - FOOTER_SIZE;
  let end: DecodedFooter | undefined;
  let endError: BlockError | undefined;
  try {
    end = decodeFooter(await readExact(store, endAt, new Uint8Array(FOOTER_SIZE), 'VHD footer'), { path, offset: endAt });
  } catch (e) {
    if (!isBlockError(e)) throw e;
    endError = e;
  }
  let copy: DecodedFooter | undefined;
  let copyError: string | null = null;
  if (endAt > 0) {
    const head = await readExact(store, 0, new Uint8Array(FOOTER_SIZE), 'VHD footer copy');
    if (hasFooterCookie(head)) {
      try {
        copy = decodeFooter(head, { path, offset: 0 });
        if (copy.footer.diskType === 'fixed') copy = undefined; // fixed disks have no copy: that is disk data
        else if (!copy.checksumOk) copyError = 'checksum is wrong';
      } catch (e) {
        if (!isBlockError(e)) throw e;
        copyError = e.message;
      }
    } else copyError = 'missing';
  }
  const badChecksums: string[] = [];
  if (end?.checksumOk) {
    const copyProblem = end.footer.diskType === 'fixed' ? null : copyError ?? (copy && !sameFooter(copy.footer, end.footer) ? 'differs from the footer at the end' : null);
    return { footer: end.footer, endFooterDamaged: null, copyFooterProblem: copyProblem, badChecksums };
  }
  if (copy?.checksumOk) {
    const why = endError ? endError.message : 'checksum is wrong';
    return { footer: copy.footer, endFooterDamaged: why, copyFooterProblem: null, badChecksums };
  }
  if (end) {
    if (!ignoreChecksums) throw checksumProblem('VHD footer', { path, offset: endAt });
    badChecksums.push('footer');
    return { footer: end.footer, endFooterDamaged: null, copyFooterProblem: copyError, badChecksums };
  }
  if (copy) {
    if (!ignoreChecksums) throw checksumProblem('VHD footer copy at offset 0 (the footer at the end is unusable too)', { path, offset: 0 });
    badChecksums.push('footer copy');
    return { footer: copy.footer, endFooterDamaged: endError?.message ?? 'unusable', copyFooterProblem: 'checksum is wrong', badChecksums };
  }
  throw endError ?? new BlockError('corrupt', 'not a VHD file', { path });
}

function sameFooter(a: VhdFooter, b: VhdFooter): boolean {
  const x = encodeFooter(a);
  const y = encodeFooter(b);
  return x.every((v, i) => v === y[i]);
}

export async function openVhd(ctx: OpenContext): Promise<VhdImage> {
  const { store } = ctx;
  const path = store.path;
  const fileSize = await store.size();
  const ignore = ctx.options.ignoreChecksums ?? false;
  // Open's reads go through a view that has the footer and the file's head
  // already: the footer copy, dynamic header, BAT (of disks up to 30 GiB
  // with 2 MiB blocks) and batmap header lie in the first 64 KiB wherever
  // qemu-img, Hyper-V, Virtual PC and vdisk put them. Two reads at once
  // instead of five one after the other.
  const meta = await prefetch(store, [
    [0, Math.min(HEAD_PREFETCH, fileSize)],
    [Math.max(0, fileSize - FOOTER_SIZE), Math.min(FOOTER_SIZE, fileSize)],
  ]);
  const base = await openFooter(meta, fileSize, ignore);
  const f = base.footer;
  const state: VhdState = { store, readOnly: ctx.readOnly, ...base, header: null, headerOffset: 0, bat: null, locators: [], batmap: null, footerOffset: fileSize - FOOTER_SIZE, tailGivenBack: 0, free: null };

  if (f.diskType === 'fixed') {
    // Spec "Fixed Hard Disk Image": the disk's sectors, then the footer.
    if (fileSize - FOOTER_SIZE < f.currentSize) {
      throw new BlockError('corrupt', `fixed VHD is truncated: ${fileSize - FOOTER_SIZE} bytes of data for a ${f.currentSize}-byte disk`, { path });
    }
    return new VhdImage(state);
  }

  const headerOffset = f.dataOffset!;
  checkRange(headerOffset, DYNAMIC_HEADER_SIZE, fileSize, 'VHD dynamic header', path);
  const hbuf = await readExact(meta, headerOffset, new Uint8Array(DYNAMIC_HEADER_SIZE), 'VHD dynamic header');
  const { header: h, checksumOk } = decodeDynamicHeader(hbuf, { path, offset: headerOffset });
  if (!checksumOk) {
    if (!ignore) throw checksumProblem('VHD dynamic header', { path, offset: headerOffset });
    state.badChecksums.push('dynamic header');
  }
  state.header = h;
  state.headerOffset = headerOffset;

  const blocksNeeded = Math.ceil(f.currentSize / h.blockSize);
  if (h.maxTableEntries < blocksNeeded) {
    throw new BlockError('corrupt', `VHD max table entries (${h.maxTableEntries}) cannot cover a ${f.currentSize}-byte disk in ${h.blockSize}-byte blocks (needs ${blocksNeeded})`, { path, offset: headerOffset });
  }
  // Only the entries covering the disk are kept; readBat bounds-checks them against the file before allocating.
  checkRange(h.tableOffset, h.maxTableEntries * BAT_ENTRY_SIZE, fileSize, 'VHD block allocation table', path);
  if (blocksNeeded > MAX_BAT_ENTRIES) {
    throw new BlockError('unsupported', `VHD BAT of ${blocksNeeded} entries is larger than vdisk keeps in memory (${MAX_BAT_ENTRIES})`, { path });
  }
  const bat = await readBat(meta, h.tableOffset, blocksNeeded, fileSize);
  state.bat = bat;

  if (f.diskType === 'differencing') {
    state.locators = await readLocators(meta, h.parentLocators, fileSize);
  }

  // Metadata regions, to keep blocks off them and to place new blocks after them.
  const regions: Array<[number, number, string]> = [
    [0, FOOTER_SIZE, 'footer copy'],
    [headerOffset, headerOffset + DYNAMIC_HEADER_SIZE, 'dynamic header'],
    [h.tableOffset, h.tableOffset + batBytes(h.maxTableEntries), 'BAT'],
  ];
  for (const l of state.locators) regions.push([l.dataOffset, l.dataOffset + l.dataLength, `parent locator ${l.index}`]);

  const batmapAt = h.tableOffset + batBytes(h.maxTableEntries);
  if (f.diskType === 'dynamic' && batmapAt + 512 <= fileSize - FOOTER_SIZE) {
    const mbuf = await readExact(meta, batmapAt, new Uint8Array(512), 'VHD batmap header');
    if (isBatmapHeader(mbuf)) {
      const m = decodeBatmapHeader(mbuf, batmapAt, h.maxTableEntries, fileSize, path);
      const map = await readExact(meta, m.offset, new Uint8Array(m.size), 'VHD batmap');
      state.batmap = { headerOffset: m.headerOffset, offset: m.offset, size: m.size, version: m.version, checksumOk: batmapChecksum(map) === m.checksum };
      regions.push([batmapAt, batmapAt + 512, 'batmap header'], [m.offset, m.offset + m.size, 'batmap']);
    }
  }

  // Every allocated block must lie inside the file, before the end footer and off the metadata (spec: blocks are
  // placed after the BAT; a forged entry pointing at the header would make a write destroy it).
  const dataLimit = state.endFooterDamaged ? fileSize : fileSize - FOOTER_SIZE;
  const bitmapSize = bitmapBytes(h.blockSize);
  let metaEnd = 0;
  for (const [, e] of regions) metaEnd = Math.max(metaEnd, e);
  const blockSpan = bitmapSize + h.blockSize;
  for (let i = 0; i < bat.length; i++) {
    const e = bat[i];
    if (e === UNALLOCATED) continue;
    const start = e * SECTOR;
    // The last block of a disk whose size is not a whole number of blocks need only hold the sectors the disk has.
    const need = i < blocksNeeded ? bitmapSize + Math.min(h.blockSize, f.currentSize - i * h.blockSize) : bitmapSize;
    if (start + need > dataLimit) {
      throw new BlockError('corrupt', `VHD BAT entry ${i} points past the end of the file (block at ${start}, file size ${fileSize})`, { path, offset: h.tableOffset + i * BAT_ENTRY_SIZE });
    }
    for (const [a, z, what] of regions) {
      if (start < z && start + blockSpan > a) {
        throw new BlockError('corrupt', `VHD BAT entry ${i} (block at ${start}) overlaps the ${what}`, { path, offset: h.tableOffset + i * BAT_ENTRY_SIZE });
      }
    }
  }
  // New blocks go where the end footer is; never over metadata, and (when the end footer is damaged) past whatever the file holds.
  state.footerOffset = state.endFooterDamaged ? alignUp(Math.max(metaEnd, fileSize, maxBlockEnd(bat, blockSpan)), SECTOR) : Math.max(fileSize - FOOTER_SIZE, alignUp(metaEnd, SECTOR));
  if (!ctx.readOnly) {
    // Like a VHDX log replay, recovery belongs to the writable open (which holds the lock): space past the last
    // structure that nothing uses — an allocation or a compaction stopped by a crash — is given back before
    // anything else is written (check.ts giveBackTail, in compaction's crash-safe order). A read-only open never
    // writes: check reports the space as a leak.
    state.tailGivenBack = await giveBackTail(state);
    // Holes left by released blocks, for new ones.
    state.free = vhdFreeSpace(state);
  }
  return new VhdImage(state);
}

function maxBlockEnd(bat: Uint32Array, span: number): number {
  let m = 0;
  for (let i = 0; i < bat.length; i++) if (bat[i] !== UNALLOCATED) m = Math.max(m, bat[i] * SECTOR + span);
  return m;
}
