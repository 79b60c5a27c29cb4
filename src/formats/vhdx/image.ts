import { BlockError } from '../../core/errors.js';
import { pushExtent, type Extent } from '../../core/extent.js';
import { randomGuid } from '../../core/guid.js';
import { Mutex } from '../../core/mutex.js';
import { checkRequest, readOnlyError } from '../../core/request.js';
import { InFlight, settleAll } from '../../core/settle.js';
import { writeZeroBytes } from '../../core/zeros.js';
import { alignDown, alignUp } from '../../core/u64.js';
import type { HostRange, Store } from '../../io/store.js';
import { readOrZero } from '../../io/store.js';
import type { BackingRef, BackingTarget, BlockFill, CheckResult, CompactBlocks, CompactOptions, CompactOutcome, FormatInfo, IdentityChange, Image, ResizeOptions } from '../types.js';
import {
  Bat,
  BAT_ENTRY_SIZE,
  PAYLOAD_FULLY_PRESENT,
  PAYLOAD_NOT_PRESENT,
  PAYLOAD_PARTIALLY_PRESENT,
  PAYLOAD_UNMAPPED,
  PAYLOAD_ZERO,
  SB_PRESENT,
} from './bat.js';
import { describeHeader } from './header.js';
import type { SectorUpdates } from './journal.js';
import { guidText, LOG_SECTOR, MiB, SECTOR_BITMAP_BLOCK_SIZE } from './layout.js';
import { bitRuns, type SectorBitmapCache, setBits } from './sector-bitmap.js';
import type { VhdxState } from './state.js';
import { checkVhdx } from './check.js';
import { resizeVhdx, setBackingVhdx, VHDX_FLATTEN_REFUSAL } from './maintenance.js';
import { resetIdentityVhdx } from './identity.js';
import { compactBlocksVhdx, compactVhdx } from './compact.js';
import { unitPieces } from '../../core/align.js';

/** Payload block states that say "this layer holds nothing here". */
function isUnallocated(state: number): boolean {
  return state !== PAYLOAD_FULLY_PRESENT && state !== PAYLOAD_PARTIALLY_PRESENT && state !== PAYLOAD_ZERO;
}

/** Sectors one metadata commit may hold before it is committed (well under a 1 MiB log's 254). */
const COMMIT_BATCH = 64;

function pieceExtent(p: Piece): Extent {
  return p.host === null ? { offset: p.at, length: p.length, kind: p.kind } : { offset: p.at, length: p.length, kind: 'data', hostOffset: p.host };
}

/** One contiguous run of the disk as this layer holds it; `host` is set for data. */
interface Piece {
  at: number;
  length: number;
  kind: Extent['kind'];
  host: number | null;
}

export class VhdxImage implements Image {
  readonly format = 'vhdx';
  /** Whole blocks are zeroed in the BAT (2.5.1 PAYLOAD_BLOCK_ZERO, or fresh space in a differencing disk), without writing them. */
  readonly fastZero = true;
  // No placement (types.ts, WritePlacement): a copy gives a VHDX target its pieces one at a time, in disk order.
  /**
   * Metadata changes (allocation, the log, headers) run one at a time under
   * this lock. Writes into FULLY_PRESENT blocks touch no metadata: they are
   * decided under the lock but land outside it, side by side (`inflight`);
   * whatever could move or free such a block (unmapping zero writes, resize,
   * backing changes), flush and close first wait for them (`exclusive`).
   */
  private readonly lock = new Mutex();
  private readonly inflight = new InFlight();
  // The state's store, bitmap cache and read-only flag, held here too so the I/O path reaches them in one load.
  readonly store: Store;
  private readonly bitmaps: SectorBitmapCache;
  readonly readOnly: boolean;
  private fileGuidChanged = false;
  private dataGuidChanged = false;
  /** The DataWriteGuid the first guest-visible write will set, once nextIdentity has announced it. */
  private nextDataWriteGuid: Uint8Array | undefined;
  private closed = false;
  /** Disks without a parent only (a differencing disk's partly written blocks need sector bitmaps): see fill(). */
  readonly fillBlocks: ((fill: (where: BlockFill) => Promise<number[]>) => Promise<void>) | undefined;
  /**
   * Discard (see discard()): dynamic and differencing disks. A fixed disk
   * (LeaveBlocksAllocated, 2.6.2.1) keeps every block, so it has nothing to
   * discard and no trim.
   */
  readonly trim: ((offset: number, length: number) => Promise<void>) | undefined;
  /** Compaction (compact.ts): like trim, not for a fixed disk, whose blocks all stay. */
  readonly compactBlocks: (() => Promise<CompactBlocks>) | undefined;
  readonly compact: ((release: readonly number[], options: CompactOptions) => Promise<CompactOutcome>) | undefined;

  constructor(readonly state: VhdxState) {
    this.store = state.store;
    this.bitmaps = state.bitmaps;
    this.readOnly = state.readOnly;
    this.fillBlocks = !state.params.hasParent && !state.readOnly ? (fill) => this.fill(fill) : undefined;
    const fixed = state.params.leaveBlocksAllocated;
    this.trim = fixed ? undefined : (offset, length) => this.discard(offset, length);
    this.compactBlocks = fixed ? undefined : () => this.exclusive(() => compactBlocksVhdx(this.state));
    this.compact = fixed ? undefined : (release, options) => this.compactFile(release, options);
  }

  get path(): string {
    return this.store.path;
  }
  get size(): number {
    return this.state.params.virtualSize;
  }
  get logicalSectorSize(): number {
    return this.state.params.logicalSectorSize;
  }
  get backing(): BackingRef | null {
    return this.state.backing;
  }
  /** The DataWriteGuid: what a child's parent_linkage must name (2.2.2, 2.6.2.6.3). */
  get identity(): string {
    return guidText(this.state.headers.current.dataWriteGuid);
  }
  /**
   * The DataWriteGuid the next guest-visible write sets (chosen now, kept
   * until then), or the current one when this open has already changed it:
   * commit records it in a child as parent_linkage2 before writing here.
   */
  nextIdentity(): string {
    if (this.dataGuidChanged) return this.identity;
    this.nextDataWriteGuid ??= randomGuid();
    return guidText(this.nextDataWriteGuid);
  }
  private get blockSize(): number {
    return this.state.params.blockSize;
  }
  private get bat(): Bat {
    return this.state.bat;
  }
  private get hasParent(): boolean {
    return this.state.params.hasParent;
  }

  // ---- reading -------------------------------------------------------------

  /** Where the bitmap bits of `block` live, and which bit is its first sector. */
  private bitmapLocation(block: number): { fileOffset: number; firstBit: number } {
    const chunk = Math.floor(block / this.bat.geometry.chunkRatio);
    const sectorsPerBlock = this.blockSize / this.logicalSectorSize;
    return { fileOffset: this.bat.offset(this.bat.bitmapIndex(chunk)), firstBit: (block % this.bat.geometry.chunkRatio) * sectorsPerBlock };
  }

  /**
   * Split [offset, offset+length) of one PARTIALLY_PRESENT block into runs of
   * sectors this layer holds (set bits) and does not (clear bits), if its
   * bitmap bytes are cached; otherwise return the bitmap sector to load.
   */
  private partialRuns(block: number, offset: number, length: number, emit: (at: number, len: number, present: boolean) => void): number | null {
    const lss = this.logicalSectorSize;
    const blockStart = block * this.blockSize;
    const firstSector = Math.floor((offset - blockStart) / lss);
    const endSector = Math.ceil((offset + length - blockStart) / lss);
    const loc = this.bitmapLocation(block);
    const firstBit = loc.firstBit + firstSector;
    const byteStart = Math.floor(firstBit / 8);
    const byteEnd = Math.ceil((loc.firstBit + endSector) / 8);
    const bits = this.bitmaps.cachedBytes(loc.fileOffset + byteStart, byteEnd - byteStart);
    if (typeof bits === 'number') return bits;
    bitRuns(bits, firstBit - byteStart * 8, endSector - firstSector, (first, n, set) => {
      const s = blockStart + (firstSector + (first - (firstBit - byteStart * 8))) * lss;
      const a = Math.max(offset, s);
      const b = Math.min(offset + length, s + n * lss);
      if (b > a) emit(a, b - a, set);
    });
    return null;
  }

  /**
   * Walk [offset, offset+length) block by block as pieces: file data (with its
   * host offset), zero, or unallocated (absent here: zeros, or the parent's
   * data in a differencing disk). Bitmap sectors are loaded as needed.
   */
  private async pieces(offset: number, length: number, emit: (p: Piece) => void): Promise<void> {
    for (let at = offset, end = offset + length; ; ) {
      const miss = this.walkCached(at, end, emit);
      if (miss === null) return;
      await this.bitmaps.sector(miss.sector);
      at = miss.at;
    }
  }

  /**
   * The pieces of [at, end) as far as cached bitmap sectors allow: null when
   * done, or where it stopped and the bitmap sector it needs (nothing of
   * that block piece has been emitted).
   */
  private walkCached(at: number, end: number, emit: (p: Piece) => void): { at: number; sector: number } | null {
    const bs = this.blockSize;
    const absent = this.hasParent ? 'unallocated' : 'zero';
    for (const { index: block, unitStart: blockStart, start: pos, end: pieceEnd } of unitPieces(at, end - at, bs)) {
      const n = pieceEnd - pos;
      const i = this.bat.payloadIndex(block);
      const state = this.bat.state(i);
      if (state === PAYLOAD_FULLY_PRESENT) emit({ at: pos, length: n, kind: 'data', host: this.bat.offset(i) + (pos - blockStart) });
      else if (state === PAYLOAD_PARTIALLY_PRESENT) {
        const host = this.bat.offset(i) - blockStart;
        const need = this.partialRuns(block, pos, n, (a, len, present) =>
          emit(present ? { at: a, length: len, kind: 'data', host: host + a } : { at: a, length: len, kind: 'unallocated', host: null }),
        );
        if (need !== null) return { at: pos, sector: need };
      } else emit({ at: pos, length: n, kind: state === PAYLOAD_ZERO ? 'zero' : absent, host: null });
    }
    return null;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRequest(this, 'read', offset, into.length);
    // Adjacent pieces contiguous in the file are merged: one pread per run,
    // and the runs (blocks apart in the file) are read at once.
    const runs: Piece[] = [];
    const list: Piece[] = [];
    await this.pieces(offset, into.length, (p) => list.push(p));
    for (const p of list) {
      if (p.host === null) {
        into.fill(0, p.at - offset, p.at - offset + p.length);
        continue;
      }
      const run = runs[runs.length - 1];
      if (run && run.host! + run.length === p.host && run.at + run.length === p.at) run.length += p.length;
      else runs.push({ ...p });
    }
    const readRun = (r: Piece) => readOrZero(this.store, r.host!, into.subarray(r.at - offset, r.at - offset + r.length));
    // One run (most reads): no settling machinery on the per-request path.
    if (runs.length === 1) await readRun(runs[0]);
    else if (runs.length > 1) await settleAll(runs.map(readRun));
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRequest(this, 'block status', offset, length);
    const out: Extent[] = [];
    await this.pieces(offset, length, (p) => pushExtent(out, pieceExtent(p)));
    return out;
  }

  mapCached(offset: number, length: number): Extent[] | undefined {
    checkRequest(this, 'block status', offset, length);
    const out: Extent[] = [];
    return this.walkCached(offset, offset + length, (p) => pushExtent(out, pieceExtent(p))) === null ? out : undefined;
  }

  get hostStore(): Store {
    return this.store;
  }

  readHost(hostOffset: number, into: Uint8Array): Promise<void> {
    return readOrZero(this.store, hostOffset, into);
  }

  hostAllocation(hostOffset: number, length: number): Promise<HostRange[] | undefined> {
    return this.store.allocation ? this.store.allocation(hostOffset, length) : Promise.resolve(undefined);
  }

  // ---- writing -------------------------------------------------------------

  private checkWritable(op: string): void {
    if (this.readOnly) throw readOnlyError({ path: this.path, operation: op });
    if (this.closed) throw new BlockError('invalid-argument', 'image is closed', { path: this.path, operation: op });
  }

  /**
   * 2.2.2: FileWriteGuid changes before the first write to the file after it
   * is opened; DataWriteGuid before the first write that changes what the
   * guest sees (this breaks the linkage of any child made from this disk, as
   * it should).
   */
  private async beginWrite(guestVisible: boolean): Promise<void> {
    const change: { fileWriteGuid?: Uint8Array; dataWriteGuid?: Uint8Array } = {};
    if (!this.fileGuidChanged) change.fileWriteGuid = randomGuid();
    if (guestVisible && !this.dataGuidChanged) change.dataWriteGuid = this.nextDataWriteGuid ?? randomGuid();
    if (!change.fileWriteGuid && !change.dataWriteGuid) return;
    await this.state.headers.update(change);
    this.fileGuidChanged = true;
    if (change.dataWriteGuid) this.dataGuidChanged = true;
  }

  /**
   * Reserve file space for a new block or bitmap block (1 MiB aligned): a
   * hole no BAT entry names (state.free, free-ranges.ts) first, else the end
   * of the file. A hole may hold a released block's old bytes, and callers
   * count on new space reading as zeros, so it is zeroed here, before any
   * BAT entry can name it (the commit's flush makes the zeros durable first).
   */
  private async allocate(length: number): Promise<number> {
    const reused = this.state.free?.take(length, MiB);
    if (reused !== undefined) {
      await writeZeroBytes((o, d) => this.store.write(o, d), reused, length);
      return reused;
    }
    return this.allocateAtEnd(length);
  }

  /** Space at the end of the file, never a hole: fill()'s copier has already written its blocks there, one after the other. */
  private allocateAtEnd(length: number): number {
    const off = this.state.fileEnd;
    this.state.fileEnd = alignUp(off + length, MiB);
    return off;
  }

  /** The file extends to cover every allocation (new space reads as zeros). */
  private async extendFile(): Promise<void> {
    if (this.state.fileSize < this.state.fileEnd) {
      await this.store.truncate(this.state.fileEnd);
      this.state.fileSize = this.state.fileEnd;
    }
  }

  /** A copy of the 4 KiB sector at `offset` as it is now, for a transaction to modify. */
  private async sectorImage(updates: SectorUpdates, offset: number, fresh: Set<number>): Promise<Uint8Array> {
    let s = updates.get(offset);
    if (s) return s;
    const batRegion = this.state.regions.bat;
    if (offset >= batRegion.offset && offset < batRegion.offset + this.bat.bytes.length) {
      s = this.bat.bytes.slice(offset - batRegion.offset, offset - batRegion.offset + LOG_SECTOR);
    } else if (fresh.has(alignDown(offset, SECTOR_BITMAP_BLOCK_SIZE))) {
      s = new Uint8Array(LOG_SECTOR);
    } else s = (await this.bitmaps.sector(offset)).slice();
    updates.set(offset, s);
    return s;
  }

  private async setBatEntry(updates: SectorUpdates, index: number, state: number, fileOffset: number, fresh: Set<number>): Promise<void> {
    const byte = this.state.regions.bat.offset + index * BAT_ENTRY_SIZE;
    const sectorOffset = alignDown(byte, LOG_SECTOR);
    const s = await this.sectorImage(updates, sectorOffset, fresh);
    Bat.encode(new DataView(s.buffer, s.byteOffset, s.byteLength), byte - sectorOffset, state, fileOffset);
  }

  /** Commit a transaction through the log and bring the in-memory BAT and bitmap cache up to date. */
  private async commit(updates: SectorUpdates): Promise<void> {
    await this.extendFile();
    const batRegion = this.state.regions.bat;
    await this.state.journal.commit(updates, (offset, data) => {
      if (offset >= batRegion.offset && offset < batRegion.offset + this.bat.bytes.length) this.bat.bytes.set(data, offset - batRegion.offset);
      else this.bitmaps.put(offset, data);
    });
    updates.clear();
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkWritable('write');
    checkRequest(this, 'write', offset, data.length, this.logicalSectorSize);
    if (data.length === 0) return;
    const issued = await this.lock.run(async () => {
      await this.beginWrite(true);
      const inPlace: Array<[number, Uint8Array]> = [];
      await this.writeLocked(offset, data, inPlace);
      // Issued and counted in flight before the lock is released, so no exclusive section can miss them.
      // An array, not a promise: returning a promise would keep the lock until it settled.
      return inPlace.map(([host, slice]) => this.inflight.track(this.store.write(host, slice)));
    });
    await settleAll(issued);
  }

  /**
   * Writable.fillBlocks: a batch of allocations whose data a copier writes
   * itself. Slot k is the space the k-th allocateAtEnd(blockSize) takes
   * (blocks are whole MiBs, so one after the other from fileEnd; holes
   * freed by compaction are left to the JavaScript path's allocate()). Order
   * (2.3, as writeLocked): the data is written first; then all the batch's
   * BAT entries go into one commit — group commit: the journal flushes
   * once (the data becomes durable before any entry names it), logs the
   * sectors in as few entries as its capacity allows, then writes them in
   * place — instead of one log transaction per block. Blocks that have a
   * place (FULLY_PRESENT) are written in place and need no metadata. If the
   * copier fails, nothing is logged and the file is cut back, so no later
   * allocation finds its stray data in fresh space.
   */
  private async fill(fill: (where: BlockFill) => Promise<number[]>): Promise<void> {
    this.checkWritable('write');
    await this.exclusive(async () => {
      await this.beginWrite(true);
      const bs = this.blockSize;
      const base = this.state.fileEnd;
      const placeOf = (block: number): number | undefined => {
        const i = this.bat.payloadIndex(block);
        return this.bat.state(i) === PAYLOAD_FULLY_PRESENT ? this.bat.offset(i) : undefined;
      };
      let blocks: number[];
      try {
        blocks = await fill({ store: this.store, blockSize: bs, base, stride: bs, placeOf });
        const count = Math.ceil(this.size / bs);
        const seen = new Set<number>();
        for (const b of blocks) {
          const ok = Number.isSafeInteger(b) && b >= 0 && b < count && !seen.has(b);
          const state = ok ? this.bat.state(this.bat.payloadIndex(b)) : 0;
          if (!ok || !(isUnallocated(state) || state === PAYLOAD_ZERO)) {
            throw new BlockError('invalid-argument', `block ${b} cannot take a new place (allocated already, repeated or out of range)`, { path: this.path });
          }
          seen.add(b);
        }
      } catch (e) {
        await this.store.truncate(base).catch(() => {});
        if (this.state.fileSize > base) await this.store.truncate(this.state.fileSize).catch(() => {});
        throw e;
      }
      const updates: SectorUpdates = new Map();
      const fresh = new Set<number>();
      for (const b of blocks) await this.setBatEntry(updates, this.bat.payloadIndex(b), PAYLOAD_FULLY_PRESENT, this.allocateAtEnd(bs), fresh);
      if (updates.size) await this.commit(updates);
    });
  }

  /** Run `fn` under the lock once every write in flight outside it has settled. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.lock.run(async () => {
      await this.inflight.drain();
      return fn();
    });
  }

  /**
   * The write path. Blocks that hold data are written in place. A block that
   * holds nothing gets new space at the end of the file; its data is written
   * (and flushed by the commit) before the BAT entry naming it is logged and
   * applied. In a differencing disk a block only partly written becomes
   * PARTIALLY_PRESENT with the written sectors' bitmap bits set, so the rest
   * still reads from the parent. With `deferred`, writes into FULLY_PRESENT
   * blocks are handed back to be issued outside the lock instead.
   */
  private async writeLocked(offset: number, data: Uint8Array, deferred?: Array<[number, Uint8Array]>): Promise<void> {
    const bs = this.blockSize;
    const updates: SectorUpdates = new Map();
    const fresh = new Set<number>();
    /** Bitmap blocks allocated within this call, by chunk. */
    const newBitmaps = new Map<number, number>();
    for (const { index: block, unitStart: blockStart, start: pos, end: pieceEnd } of unitPieces(offset, data.length, bs)) {
      const blockLen = Math.min(bs, this.size - blockStart);
      const n = pieceEnd - pos;
      const slice = data.subarray(pos - offset, pos - offset + n);
      const i = this.bat.payloadIndex(block);
      const state = this.bat.state(i);
      if (state === PAYLOAD_FULLY_PRESENT) {
        if (deferred) deferred.push([this.bat.offset(i) + (pos - blockStart), slice]);
        else await this.store.write(this.bat.offset(i) + (pos - blockStart), slice);
      } else if (state === PAYLOAD_PARTIALLY_PRESENT) {
        await this.store.write(this.bat.offset(i) + (pos - blockStart), slice);
        await this.markSectors(updates, block, pos, n, fresh, newBitmaps, i, this.bat.offset(i));
      } else {
        const host = await this.allocate(bs);
        await this.store.write(host + (pos - blockStart), slice);
        // New space reads as zeros, which is right for a ZERO block and for any block of a disk
        // without a parent; only a differencing disk's absent block must keep deferring to the parent.
        const whole = pos === blockStart && n === blockLen;
        if (this.hasParent && isUnallocated(state) && !whole) {
          await this.setBatEntry(updates, i, PAYLOAD_PARTIALLY_PRESENT, host, fresh);
          await this.markSectors(updates, block, pos, n, fresh, newBitmaps, i, host);
        } else await this.setBatEntry(updates, i, PAYLOAD_FULLY_PRESENT, host, fresh);
      }
      if (updates.size >= COMMIT_BATCH) {
        await this.commit(updates);
        fresh.clear();
        newBitmaps.clear();
      }
    }
    if (updates.size) await this.commit(updates);
  }

  /**
   * Set the bitmap bits of sectors [pos, pos+n) of a PARTIALLY_PRESENT block,
   * allocating its chunk's bitmap block first when there is none. A block
   * whose bits all end up set becomes FULLY_PRESENT.
   */
  private async markSectors(
    updates: SectorUpdates,
    block: number,
    pos: number,
    n: number,
    fresh: Set<number>,
    newBitmaps: Map<number, number>,
    batIndex: number,
    host: number,
  ): Promise<void> {
    const g = this.bat.geometry;
    const chunk = Math.floor(block / g.chunkRatio);
    const bi = this.bat.bitmapIndex(chunk);
    let sb = newBitmaps.get(chunk);
    if (sb === undefined) {
      if (this.bat.state(bi) === SB_PRESENT) sb = this.bat.offset(bi);
      else {
        sb = await this.allocate(SECTOR_BITMAP_BLOCK_SIZE);
        fresh.add(sb);
        await this.setBatEntry(updates, bi, SB_PRESENT, sb, fresh);
      }
      newBitmaps.set(chunk, sb);
    }
    const allSet = await this.updateBlockBits(updates, fresh, sb, block, pos, n, true);
    if (allSet) await this.setBatEntry(updates, batIndex, PAYLOAD_FULLY_PRESENT, host, fresh);
  }

  async writeZeroes(offset: number, length: number, options: { mayUnmap?: boolean } = {}): Promise<void> {
    this.checkWritable('write zeroes');
    checkRequest(this, 'write zeroes', offset, length, this.logicalSectorSize);
    if (length === 0) return;
    await this.exclusive(async () => {
      await this.beginWrite(true);
      const bs = this.blockSize;
      const updates: SectorUpdates = new Map();
      const fresh = new Set<number>();
      for (const { index: block, unitStart: blockStart, start: pos, end: pieceEnd } of unitPieces(offset, length, bs)) {
        const n = pieceEnd - pos;
        const i = this.bat.payloadIndex(block);
        const state = this.bat.state(i);
        const readsZero = state === PAYLOAD_ZERO || (!this.hasParent && isUnallocated(state));
        const whole = pos === blockStart && n === Math.min(bs, this.size - blockStart);
        const allocated = !isUnallocated(state) && state !== PAYLOAD_ZERO;
        if (readsZero) {
          // Nothing to do: this layer already reads zeros here.
        } else if (whole && !this.state.params.leaveBlocksAllocated && (!allocated || options.mayUnmap)) {
          if (this.hasParent) {
            // 2.5.1 allows PAYLOAD_BLOCK_ZERO here too, but libvhdi (20210425) reads a ZERO block of a
            // differencing disk from the parent. Fresh file space reads as zeros for every reader and
            // costs nothing on a sparse host file: point the block there instead.
            await this.setBatEntry(updates, i, PAYLOAD_FULLY_PRESENT, await this.allocate(bs), fresh);
          } else {
            // 2.5.1 PAYLOAD_BLOCK_ZERO: the block reads as zeros without any file space.
            await this.setBatEntry(updates, i, PAYLOAD_ZERO, 0, fresh);
          }
          if (updates.size >= COMMIT_BATCH) await this.commit(updates);
        } else {
          if (updates.size) await this.commit(updates);
          await writeZeroBytes((o, d) => this.writeLocked(o, d), pos, n);
        }
      }
      if (updates.size) await this.commit(updates);
    });
  }

  /**
   * Discard (2.5.1): a whole payload block becomes PAYLOAD_BLOCK_UNMAPPED in
   * a disk without a parent (it reads as zeros) and PAYLOAD_BLOCK_NOT_PRESENT
   * in a differencing disk (it reads from the parent again); its file space
   * is then referenced by nothing (compact gives it back, and new blocks
   * reuse it). Part of a block: a differencing disk clears the sectors' bits
   * in the sector bitmap (a FULLY_PRESENT block first becomes
   * PARTIALLY_PRESENT with every other bit set); a disk without a parent
   * leaves it alone, since discard is advisory and the block would have to
   * be rewritten. Every BAT and bitmap change goes through the log, after
   * which the in-memory copies change (commit()).
   */
  private async discard(offset: number, length: number): Promise<void> {
    this.checkWritable('trim');
    checkRequest(this, 'trim', offset, length, this.logicalSectorSize);
    if (length === 0) return;
    await this.exclusive(async () => {
      const bs = this.blockSize;
      const updates: SectorUpdates = new Map();
      const fresh = new Set<number>();
      const newBitmaps = new Map<number, number>();
      /** File space of blocks released by this discard: free for new blocks once the log holds the release. */
      const released: number[] = [];
      const commitReleasing = async () => {
        await this.commit(updates);
        for (const off of released.splice(0)) this.state.free?.give(off, bs);
      };
      let begun = false;
      const begin = async () => {
        if (!begun) await this.beginWrite(true);
        begun = true;
      };
      for (const { index: block, unitStart: blockStart, start: pos, end: pieceEnd } of unitPieces(offset, length, bs)) {
        const n = pieceEnd - pos;
        const i = this.bat.payloadIndex(block);
        const state = this.bat.state(i);
        const whole = pos === blockStart && n === Math.min(bs, this.size - blockStart);
        if (whole) {
          const target = this.hasParent ? PAYLOAD_NOT_PRESENT : PAYLOAD_UNMAPPED;
          // Already showing what a discard would (the parent, or zeros) with no file space: leave it.
          const holdsNothing = this.hasParent ? isUnallocated(state) : state !== PAYLOAD_FULLY_PRESENT;
          if (holdsNothing && this.bat.offset(i) === 0) continue;
          await begin();
          if (state === PAYLOAD_FULLY_PRESENT || state === PAYLOAD_PARTIALLY_PRESENT) released.push(this.bat.offset(i));
          // Its sector bits go too: libvhdi (20210425) reads a set bit from the child even in a NOT_PRESENT block.
          const chunk = Math.floor(block / this.bat.geometry.chunkRatio);
          if (this.hasParent && (newBitmaps.has(chunk) || this.bat.state(this.bat.bitmapIndex(chunk)) === SB_PRESENT)) {
            await this.clearSectors(updates, block, pos, n, fresh, newBitmaps, i);
          }
          await this.setBatEntry(updates, i, target, 0, fresh);
        } else if (this.hasParent && (state === PAYLOAD_FULLY_PRESENT || state === PAYLOAD_PARTIALLY_PRESENT)) {
          await begin();
          const host = this.bat.offset(i);
          if (state === PAYLOAD_FULLY_PRESENT) {
            // Every sector of the block is this layer's: say so bit by bit before clearing some.
            await this.markSectors(updates, block, blockStart, Math.min(bs, this.size - blockStart), fresh, newBitmaps, i, host);
          }
          if (!(await this.clearSectors(updates, block, pos, n, fresh, newBitmaps, i))) released.push(host);
        }
        if (updates.size >= COMMIT_BATCH) {
          await commitReleasing();
          fresh.clear();
          newBitmaps.clear();
        }
      }
      if (updates.size) await commitReleasing();
    });
  }

  /**
   * Set (`value` true) or clear the sector-bitmap bits of sectors [pos,
   * pos+n) of `block` (VHDX 2.5.1: one bit per logical sector, a chunk's
   * blocks one after the other in the bitmap block at `sb`), in the
   * transaction's 4 KiB sector images. Resolves true when every bit of the
   * block then equals `value` (all set: FULLY_PRESENT; none set: NOT_PRESENT).
   */
  private async updateBlockBits(updates: SectorUpdates, fresh: Set<number>, sb: number, block: number, pos: number, n: number, value: boolean): Promise<boolean> {
    const lss = this.logicalSectorSize;
    const sectorsPerBlock = this.blockSize / lss;
    const firstBit = (block % this.bat.geometry.chunkRatio) * sectorsPerBlock;
    const from = firstBit + (pos - block * this.blockSize) / lss;
    const count = n / lss;
    // The block's bits, sector by 4 KiB bitmap sector.
    const byteFirst = sb + firstBit / 8;
    const byteEnd = byteFirst + sectorsPerBlock / 8;
    const want = value ? 0xff : 0;
    let uniform = true;
    for (let s = alignDown(byteFirst, LOG_SECTOR); s < byteEnd; s += LOG_SECTOR) {
      const img = await this.sectorImage(updates, s, fresh);
      const sectorFirstBit = (s - sb) * 8;
      const a = Math.max(from, sectorFirstBit);
      const b = Math.min(from + count, sectorFirstBit + LOG_SECTOR * 8);
      if (b > a) setBits(img, a - sectorFirstBit, b - a, value);
      const lo = Math.max(byteFirst, s) - s;
      const hi = Math.min(byteEnd, s + LOG_SECTOR) - s;
      for (let k = lo; k < hi && uniform; k++) if (img[k] !== want) uniform = false;
    }
    return uniform;
  }

  /**
   * Clear the bitmap bits of sectors [pos, pos+n) of a block about to be (or
   * already) PARTIALLY_PRESENT: it is marked so, and when no bit of it is
   * left set, it becomes NOT_PRESENT (its file space then holds nothing).
   */
  private async clearSectors(updates: SectorUpdates, block: number, pos: number, n: number, fresh: Set<number>, newBitmaps: Map<number, number>, batIndex: number): Promise<boolean> {
    const g = this.bat.geometry;
    const chunk = Math.floor(block / g.chunkRatio);
    const bi = this.bat.bitmapIndex(chunk);
    // The chunk's bitmap: present already (a PARTIALLY_PRESENT block has one), or made by markSectors in this transaction.
    const sb = newBitmaps.get(chunk) ?? this.bat.offset(bi);
    const anySet = !(await this.updateBlockBits(updates, fresh, sb, block, pos, n, false));
    await this.setBatEntry(updates, batIndex, anySet ? PAYLOAD_PARTIALLY_PRESENT : PAYLOAD_NOT_PRESENT, anySet ? this.bat.offset(batIndex) : 0, fresh);
    return anySet;
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.exclusive(() => this.store.flush());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.readOnly) {
        await this.exclusive(async () => {
          await this.store.flush();
          await this.state.journal.close();
        });
      }
    } finally {
      this.closed = true;
      await this.store.close();
    }
  }

  info(): FormatInfo {
    const s = this.state;
    const h = s.headers.current;
    const specific: Record<string, unknown> = {
      'block-size': s.params.blockSize,
      'logical-sector-size': s.params.logicalSectorSize,
      'physical-sector-size': s.params.physicalSectorSize,
      'leave-blocks-allocated': s.params.leaveBlocksAllocated,
      'has-parent': s.params.hasParent,
      'virtual-disk-id': guidText(s.params.page83),
      creator: s.creator,
      ...Object.fromEntries(Object.entries(describeHeader(h)).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()), v])),
      'log-offset': s.log.offset,
      'log-length': s.log.length,
      'log-replayed': s.replay !== null,
    };
    if (s.replay) specific['log-replay'] = { entries: s.replay.entries, onto: s.replay.onto };
    if (s.parentLocator) specific['parent-locator'] = Object.fromEntries(s.parentLocator);
    if (s.problems.length) specific.problems = [...s.problems];
    return { clusterSize: s.params.blockSize, dirty: s.replay !== null && s.replay.onto === 'memory', specific };
  }

  // ---- maintenance (check.ts, maintenance.ts) ------------------------------

  check(options: { repair?: 'leaks' | 'all' }): Promise<CheckResult> {
    return this.exclusive(() => checkVhdx(this.state, options));
  }

  /**
   * Only a shrink changes the DataWriteGuid (2.2.2: it names the content of
   * the user-visible data, and changes before that content does). A grow
   * changes no byte a child can read: past this disk's end a child read
   * zeros, and the new area reads zeros too. So a child's parent_linkage
   * stays valid, and `resize --chain` grows a VHDX chain layer by layer with
   * no relinking (docs/formats/vhdx.md).
   */
  resize(newSize: number, options: ResizeOptions): Promise<void> {
    this.checkWritable('resize');
    return this.exclusive(async () => {
      await this.beginWrite(newSize < this.state.params.virtualSize);
      await resizeVhdx(this.state, newSize, options);
    });
  }

  resetIdentity(): Promise<IdentityChange[]> {
    this.checkWritable('reset identity');
    return this.exclusive(async () => {
      const changes = await resetIdentityVhdx(this.state, this.fileGuidChanged);
      // Both GUIDs are new now: later writes of this open change neither again.
      this.fileGuidChanged = true;
      this.dataGuidChanged = true;
      this.nextDataWriteGuid = undefined;
      return changes;
    });
  }

  get flattenRefusal(): string | undefined {
    return this.state.params.hasParent ? VHDX_FLATTEN_REFUSAL : undefined;
  }

  private compactFile(release: readonly number[], options: CompactOptions): Promise<CompactOutcome> {
    if (!options.dryRun) this.checkWritable('compact');
    return this.exclusive(async () => {
      // Only FileWriteGuid: compaction keeps what the disk reads (compact.ts).
      if (!options.dryRun) await this.beginWrite(false);
      return compactVhdx(this.state, release, options);
    });
  }

  setBacking(parent: BackingTarget | null): Promise<void> {
    this.checkWritable('set backing');
    return this.exclusive(async () => {
      await this.beginWrite(false);
      await setBackingVhdx(this.state, parent);
    });
  }
}
