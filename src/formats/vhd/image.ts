import { BlockError } from '../../core/errors.js';
import type { Extent } from '../../core/extent.js';
import { pushExtent } from '../../core/extent.js';
import { uuidToString } from '../../core/guid.js';
import { Mutex } from '../../core/mutex.js';
import { checkRequest, readOnlyError } from '../../core/request.js';
import { InFlight, settleAll } from '../../core/settle.js';
import { writeZeroBytes } from '../../core/zeros.js';
import { unitPieces } from '../../core/align.js';
import type { HostRange, Store } from '../../io/store.js';
import { readExact, readOrZero, writeParts } from '../../io/store.js';
import type { BackingRef, BackingTarget, BlockFill, CheckResult, CompactBlocks, CompactOptions, CompactOutcome, FormatInfo, IdentityChange, Image, ResizeOptions, WritePlacement } from '../types.js';
import { compactBlocksVhd, compactVhd } from './compact.js';
import { ENTRIES_PER_SECTOR, UNALLOCATED, encodeBatSector } from './bat.js';
import { checkVhd } from './check.js';
import { FOOTER_SIZE, VHD_EPOCH_UNIX, chsBytes, encodeFooter, hostOsName, isMaxGeometry, SECTOR } from './footer.js';
import { resizeVhd, setBackingVhd } from './maintenance.js';
import { resetIdentityVhd } from './identity.js';
import { BitmapCache, bitmapBytes, clearBits, forEachRun, setBits } from './sector-bitmap.js';
import { MAX_SIZE, type VhdState, backingRef } from './state.js';


/** Zero bytes written over [offset, offset+length) of the file (fixed disks, allocated blocks of differencing ones). */
function writeZeroData(store: Store, offset: number, length: number): Promise<void> {
  return writeZeroBytes((o, d) => store.write(o, d), offset, length);
}
/** Dirty sector bitmaps kept before the metadata is written out without waiting for a flush. */
const MAX_DIRTY_BITMAPS = 256;
/** Largest sector number a 32-bit BAT entry can hold (0xFFFFFFFF means unallocated). */
const MAX_BLOCK_SECTOR = 0xfffffffe;

/**
 * One VHD layer: fixed, dynamic or differencing (VHD spec 2006).
 *
 * Write order of an allocating write (dynamic and differencing disks), chosen
 * so that the file is valid after a crash at any point and every sector reads
 * either its old or its new contents:
 *
 *   1. write the footer at the new end of the file (block offset + bitmap +
 *      block size). The old footer's sector becomes the new block's bitmap
 *      sector but is not overwritten yet, so the file has a valid end footer
 *      whichever of the writes so far reached the disk — except when the data
 *      write (2) lands and (1) does not: then the last sector is data, and the
 *      open falls back to the footer copy at offset 0 (the BAT does not point
 *      at the block yet, so every sector still reads its old contents).
 *   2. write the data sectors in place inside the new block (the rest of the
 *      block is a hole, so it reads as zeros). 1 and 2 are issued together:
 *      nothing orders them, and what is said under 1 holds for either order.
 *      Where the data starts at the block's first sector, the new bitmap goes
 *      in the same request, just before it (over the old footer); where it
 *      reaches the block's end, so does the new footer, just after it (one
 *      request for a whole-block write instead of three). But while the
 *      allocation before this one is still in flight, its footer write is
 *      aimed at this block's bitmap sector, and two writes in flight to one
 *      sector may land in either order: then the bitmap is left for step 4
 *      (else that footer could land last, over the bitmap, with the cache
 *      saying the bitmap is on disk; a libvhdi interop test caught this
 *      under load). Measured on raw→vhd, where most allocations overlap,
 *      this costs nothing visible (208 → 210 ms). Parts of a request
 *      may land without the others: a landed bitmap without its footer is
 *      the case above (the last sector is not a footer; the copy at 0 is
 *      used), and a bitmap on disk means nothing until the BAT points at
 *      its block.
 *      The BAT entry (and any bitmap not yet written) stays in memory
 *      (dirty) until flush:
 *   3. flush: data and the new footer become durable;
 *   4. write the dirty sector bitmaps (a new block's bitmap goes where the
 *      old footer was, unless step 2 took it); flush, so no BAT entry can
 *      reach the disk before the bitmap of its block;
 *   5. write the dirty BAT sectors; flush.
 *
 * Writes into allocated blocks write the data in place and set the bitmap
 * bits in memory; the bitmap reaches the disk in step 4 of the next flush,
 * after the data. Until then a crash leaves those bits clear (differencing:
 * the parent's old contents show through). The footer contents never change
 * on a write (the footer records no file size), so the copy at offset 0
 * stays in step without being rewritten.
 *
 * Concurrency: the lock covers only the planning of a write — reserving the
 * place of each new block (the end moves at once, so blocks are laid out in
 * the order writes are called) and issuing its file writes. The data then
 * lands outside the lock, several writes at once, and only when a write has
 * landed does the in-memory state say so (BAT entry, bitmap bits): until
 * then a read sees the old contents. Steps 3-5 and every maintenance
 * operation first wait for all writes in flight. Several allocations in
 * flight keep the crash argument of 1-2: a footer is overwritten only by the
 * next block's bitmap (step 2 or 4), which leaves the case of a last sector
 * that is not a footer (the copy at 0 is used), and no BAT entry on disk
 * points at any of their blocks.
 *
 * A failed allocation (ENOSPC, EFBIG, EIO) may have left the file without a
 * footer at its end (its bitmap over the old footer, part of its data, no
 * new footer) — Hyper-V refuses such a file even though the copy at offset 0
 * lets vdisk and qemu open it. So the write that saw the failure puts the
 * end back before it reports the error: it waits for every write in flight,
 * then writes the footer at the end of the last block that did land
 * (`solidEnd`) and cuts the file there (restoreEnd). The failed block is
 * not in the BAT, so nothing points into what is cut, and a later write
 * allocates from that end again: no leak. If restoring fails too (the disk
 * is still full), the original error is reported and the next metadata
 * write (flush, close) tries again; meanwhile the copy at offset 0 keeps the
 * file openable. One case still leaks: a block whose allocation failed while
 * a later one (further out, issued before the failure was seen) landed —
 * the landed block is in use, so the file cannot be cut below it.
 */
export class VhdImage implements Image {
  readonly format = 'vhd';
  readonly logicalSectorSize = SECTOR;
  identity: string;
  readonly readOnly: boolean;
  /** Dynamic disks leave zeroed unallocated blocks unallocated. */
  readonly fastZero: boolean;
  readonly placement: WritePlacement;
  /*
   * What only some disk types can do (the presence of the method is the
   * capability, types.ts): set once in the constructor, undefined where the
   * disk type has no such operation. Always assigned, so every VhdImage has
   * one shape and the data path's property accesses stay monomorphic.
   */
  /** Differencing disks only: see discard(). */
  readonly trim: ((offset: number, length: number) => Promise<void>) | undefined;
  /** Every disk type: a differencing disk only to follow its parent's size (ResizeOptions.parent, maintenance.ts). */
  readonly resize: ((newSize: number, options?: ResizeOptions) => Promise<void>) | undefined;
  /** Differencing disks only. */
  readonly setBacking: ((parent: BackingTarget | null) => Promise<void>) | undefined;
  /** Dynamic disks only (a differencing disk's partly written blocks need their own bitmaps): see fill(). */
  readonly fillBlocks: ((fill: (where: BlockFill) => Promise<number[]>) => Promise<void>) | undefined;
  /** Dynamic and differencing disks (compact.ts): a fixed disk has no blocks to release. */
  readonly compactBlocks: (() => Promise<CompactBlocks>) | undefined;
  readonly compact: ((release: readonly number[], options: CompactOptions) => Promise<CompactOutcome>) | undefined;
  backing: BackingRef | null;
  size: number;

  private readonly lock = new Mutex();
  private readonly bitmaps = new BitmapCache(64);
  /** Where the latest allocation writes its footer, and whether its writes are over (see allocate). */
  private lastFooter: { at: number; landed: boolean } | undefined;
  private readonly dirtyBatSectors = new Set<number>();
  /** File writes issued under the lock and not yet settled (with their in-memory updates). */
  private readonly inflight = new InFlight();
  /** Blocks being allocated: a later write into one waits until its BAT entry is known. */
  private readonly allocating = new Map<number, Promise<void>>();
  /** An allocation failed after the end moved: the end is restored (restoreEnd) before anything else is written. */
  private footerStale = false;
  /** End of the last block whose allocation landed (or of the metadata): where the footer goes back after a failed allocation. */
  private solidEnd: number;
  private readonly blockSize: number;
  private readonly bitmapSize: number;
  private closed = false;

  /** The file (state.store), held here too: the data path reaches it in one property load, as before. */
  private readonly store: Store;

  constructor(
    /** What open decoded; check.ts and maintenance.ts work on it (and on the file) under the image's lock. */
    private readonly state: VhdState,
  ) {
    const f = state.footer;
    this.store = state.store;
    this.solidEnd = state.footerOffset;
    this.readOnly = state.readOnly;
    this.size = f.currentSize;
    this.identity = uuidToString(f.uniqueId);
    this.blockSize = state.header?.blockSize ?? 0;
    this.bitmapSize = state.header ? bitmapBytes(state.header.blockSize) : 0;
    this.backing = f.diskType === 'differencing' && state.header ? backingRef(state.header, state.locators) : null;
    const differencing = f.diskType === 'differencing';
    this.fastZero = f.diskType === 'dynamic';
    // A fixed disk's data is the file's first bytes, written in place (the footer follows it); the others allocate in call order (see the class comment).
    this.placement = f.diskType === 'fixed' ? 'identity' : 'call-order';
    this.trim = differencing ? (offset, length) => this.discard(offset, length) : undefined;
    this.resize = (newSize, options) => this.resizeDisk(newSize, options);
    this.setBacking = differencing ? (parent) => this.changeBacking(parent) : undefined;
    this.fillBlocks = f.diskType === 'dynamic' && !state.readOnly ? (fill) => this.fill(fill) : undefined;
    const fixed = f.diskType === 'fixed';
    this.compactBlocks = fixed ? undefined : () => this.maintain(() => compactBlocksVhd(this.state), false);
    this.compact = fixed ? undefined : (release, options) => this.maintain(() => compactVhd(this.state, release, options), !options.dryRun);
  }

  get path(): string {
    return this.store.path;
  }

  private get differencing(): boolean {
    return this.state.footer.diskType === 'differencing';
  }

  // -------------------------------------------------------------------------
  // reading

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    for (let at = offset, end = offset + length; ; ) {
      const miss = this.walkCached(at, end, out);
      if (miss === null) return out;
      // A differencing block whose bitmap is not cached: load it, go on from there.
      await this.bitmap(miss.block);
      at = miss.at;
    }
  }

  mapCached(offset: number, length: number): Extent[] | undefined {
    const out: Extent[] = [];
    return this.walkCached(offset, offset + length, out) === null ? out : undefined;
  }

  /**
   * The extents of [at, end) appended to `out`, as far as cached bitmaps
   * allow. Returns null when done, or where it stopped and the block whose
   * bitmap it needs (nothing of that block has been appended).
   */
  private walkCached(at: number, end: number, out: Extent[]): { at: number; block: number } | null {
    if (!this.state.bat) {
      pushExtent(out, { offset: at, length: end - at, kind: 'data', hostOffset: at });
      return null;
    }
    const bs = this.blockSize;
    // Most requests lie in one block: no block walk (a generator) for them.
    const first = Math.floor(at / bs);
    if (end <= (first + 1) * bs) return this.walkBlock(first, first * bs, at, end, out) ? null : { at, block: first };
    for (const { index: b, unitStart: blockStart, start: pos, end: pieceEnd } of unitPieces(at, end - at, bs)) {
      if (!this.walkBlock(b, blockStart, pos, pieceEnd, out)) return { at: pos, block: b };
    }
    return null;
  }

  /** The extents of [pos, pieceEnd) inside block b, appended to `out`; false (nothing appended) when its bitmap is not cached. */
  private walkBlock(b: number, blockStart: number, pos: number, pieceEnd: number, out: Extent[]): boolean {
    const bat = this.state.bat!;
    const entry = b < bat.length ? bat[b] : UNALLOCATED;
    if (entry === UNALLOCATED) {
      // Spec: an unallocated block of a dynamic disk reads as zeros; of a differencing disk, from the parent.
      pushExtent(out, { offset: pos, length: pieceEnd - pos, kind: this.differencing ? 'unallocated' : 'zero' });
      return true;
    }
    const dataBase = entry * SECTOR + this.bitmapSize;
    if (!this.differencing) {
      // Dynamic disks: the whole block is this layer's data (unwritten sectors hold zeros).
      pushExtent(out, { offset: pos, length: pieceEnd - pos, kind: 'data', hostOffset: dataBase + (pos - blockStart) });
      return true;
    }
    const bits = this.bitmaps.get(b);
    if (!bits) return false;
    const s0 = Math.floor((pos - blockStart) / SECTOR);
    const s1 = Math.ceil((pieceEnd - blockStart) / SECTOR);
    forEachRun(bits, s0, s1, (a, z, set) => {
      const from = Math.max(pos, blockStart + a * SECTOR);
      const to = Math.min(pieceEnd, blockStart + z * SECTOR);
      pushExtent(out, set ? { offset: from, length: to - from, kind: 'data', hostOffset: dataBase + (from - blockStart) } : { offset: from, length: to - from, kind: 'unallocated' });
    });
    return true;
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

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRequest(this, 'read', offset, into.length);
    if (!this.state.bat) {
      await readOrZero(this.store, offset, into);
      return;
    }
    const bs = this.blockSize;
    const end = offset + into.length;
    // Most requests lie in one block: no block walk (a generator) for them.
    const first = Math.floor(offset / bs);
    if (end <= (first + 1) * bs) {
      await this.readBlock(first, first * bs, offset, into);
      return;
    }
    // The blocks of a longer read lie apart in the file: read them at once.
    const reads: Promise<void>[] = [];
    for (const { index: b, unitStart: blockStart, start: pos, end: pieceEnd } of unitPieces(offset, into.length, bs)) {
      reads.push(this.readBlock(b, blockStart, pos, into.subarray(pos - offset, pieceEnd - offset)));
    }
    await settleAll(reads);
  }

  /** Read `part`, which starts at disk offset pos inside block b. */
  private async readBlock(b: number, blockStart: number, pos: number, part: Uint8Array): Promise<void> {
    const entry = this.state.bat![b];
    if (entry === UNALLOCATED) {
      part.fill(0);
      return;
    }
    // One read per block piece, straight into the caller's buffer.
    await readOrZero(this.store, entry * SECTOR + this.bitmapSize + (pos - blockStart), part);
    if (this.differencing) {
      // Sectors this layer does not hold read as zeros here (the chain reads them from the parent).
      const bits = await this.bitmap(b);
      const s0 = Math.floor((pos - blockStart) / SECTOR);
      const s1 = Math.ceil((pos + part.length - blockStart) / SECTOR);
      forEachRun(bits, s0, s1, (a, z, set) => {
        if (set) return;
        const from = Math.max(pos, blockStart + a * SECTOR);
        const to = Math.min(pos + part.length, blockStart + z * SECTOR);
        part.fill(0, from - pos, to - pos);
      });
    }
  }


  /** A block's sector bitmap, from the cache or with one read. */
  private async bitmap(block: number): Promise<Uint8Array> {
    const cached = this.bitmaps.get(block);
    if (cached) return cached;
    const entry = this.state.bat![block];
    const bits = await readExact(this.store, entry * SECTOR, new Uint8Array(this.bitmapSize), `sector bitmap of block ${block}`);
    // Someone else may have loaded (and changed) it meanwhile: theirs is newer than what the file holds.
    const raced = this.bitmaps.get(block);
    if (raced) return raced;
    this.bitmaps.put(block, bits);
    return bits;
  }

  // -------------------------------------------------------------------------
  // writing

  async write(offset: number, data: Uint8Array): Promise<void> {
    checkRequest(this, 'write', offset, data.length, SECTOR);
    if (data.length === 0) return;
    if (!this.state.bat) {
      await this.store.write(offset, data);
      return;
    }
    await this.restoringEnd(async () => settleAll(await this.lock.run(() => this.issueBlocks(offset, data.length, data))));
  }

  /** Run a write; when it fails after an allocation moved the end, restore the end (see the class comment) before reporting the original error. */
  private async restoringEnd(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      // A failed restore leaves footerStale set: flush and close try again. The caller hears of the write's failure, not of the restore's.
      if (this.footerStale) await this.lock.run(() => this.restoreEnd()).catch(() => {});
      throw e;
    }
  }

  /**
   * Under the lock: wait for the writes in flight, then, if an allocation
   * failed, put the footer at the end of the last landed block and cut the
   * file after it. The footer goes first, as in check's repair: a crash
   * before the cut leaves a file whose last sector is not a footer, which the
   * copy at offset 0 covers. When the footer cannot be written there (on a
   * full disk the sector may be a hole that needs space), the cut goes first
   * to free the space, then the footer.
   */
  private async restoreEnd(): Promise<void> {
    await this.inflight.drain();
    if (!this.footerStale) return;
    const end = this.solidEnd;
    const footer = encodeFooter(this.state.footer);
    try {
      await this.store.write(end, footer);
      await this.store.flush();
      if ((await this.store.size()) > end + FOOTER_SIZE) await this.store.truncate(end + FOOTER_SIZE);
    } catch {
      await this.store.truncate(end + FOOTER_SIZE);
      await this.store.write(end, footer);
    }
    await this.store.flush();
    this.state.footerOffset = end;
    this.state.endFooterDamaged = null;
    this.lastFooter = undefined;
    this.footerStale = false;
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRequest(this, 'write zeroes', offset, length, SECTOR);
    if (length === 0) return;
    if (!this.state.bat) {
      await writeZeroData(this.store, offset, length);
      return;
    }
    // Dynamic: unallocated blocks already read as zeros and stay unallocated.
    // Differencing: zeros must hide the parent, so they are written like data.
    await this.restoringEnd(async () => settleAll(await this.lock.run(() => this.issueBlocks(offset, length, null, !this.differencing))));
  }

  /**
   * Discard (differencing disks only, as `trim`): clear the sector bits so
   * the parent shows through again. Blocks stay allocated (VHD cannot free
   * space inside the file); the bitmaps reach the disk with the next metadata
   * write, and a cleared bit is safe to lose or to land early — either way
   * the sector reads a value it legitimately had. Dynamic and fixed disks
   * have no trim: a discard there would free nothing and change nothing.
   */
  private async discard(offset: number, length: number): Promise<void> {
    checkRequest(this, 'trim', offset, length, SECTOR);
    if (length === 0) return;
    await this.lock.run(async () => {
      const bat = this.state.bat!;
      const bs = this.blockSize;
      for (const { index: b, unitStart: blockStart, start: pos, end: pieceEnd } of unitPieces(offset, length, bs)) {
        await this.allocating.get(b)?.catch(() => {});
        if (bat[b] !== UNALLOCATED) {
          const bits = await this.bitmap(b);
          if (clearBits(bits, (pos - blockStart) / SECTOR, (pieceEnd - blockStart) / SECTOR)) this.bitmaps.markDirty(b);
        }
      }
      if (this.bitmaps.dirtyCount() > MAX_DIRTY_BITMAPS) await this.writeMetadata();
    });
  }

  /**
   * Issue the writes of [offset, offset+length) block by block: `data`, or
   * zeros when null (`skipUnallocated`: leave unallocated blocks alone, they
   * read as zeros already). Runs under the lock; returns the writes, which
   * settle outside it (see the class comment).
   */
  private async issueBlocks(offset: number, length: number, data: Uint8Array | null, skipUnallocated = false): Promise<Promise<void>[]> {
    const bat = this.state.bat!;
    const bs = this.blockSize;
    const issued: Promise<void>[] = [];
    try {
      for (const { index: b, unitStart: blockStart, start: pos, end: pieceEnd } of unitPieces(offset, length, bs)) {
        // A block still being allocated: its BAT entry (or the failure) decides where this piece goes.
        await this.allocating.get(b)?.catch(() => {});
        const entry = bat[b];
        if (entry === UNALLOCATED && skipUnallocated) continue;
        const piece = data?.subarray(pos - offset, pieceEnd - offset) ?? null;
        const s0 = (pos - blockStart) / SECTOR;
        const s1 = (pieceEnd - blockStart) / SECTOR;
        const work =
          entry === UNALLOCATED
            ? this.allocate(b, pos - blockStart, piece, s0, s1)
            : this.writeInPlace(b, entry * SECTOR + this.bitmapSize + (pos - blockStart), piece, pieceEnd - pos, s0, s1);
        issued.push(this.inflight.track(work));
      }
      if (this.bitmaps.dirtyCount() > MAX_DIRTY_BITMAPS) await this.writeMetadata();
    } catch (e) {
      // Nothing issued may outlive the caller's error unseen.
      await Promise.allSettled(issued);
      throw e;
    }
    return issued;
  }

  /** Data (or zeros) into an allocated block, then its bits set: a bit never claims a sector before its data is there. */
  private async writeInPlace(b: number, host: number, piece: Uint8Array | null, length: number, s0: number, s1: number): Promise<void> {
    if (piece) await this.store.write(host, piece);
    else await writeZeroData(this.store, host, length);
    const bits = await this.bitmap(b);
    if (setBits(bits, s0, s1)) this.bitmaps.markDirty(b);
  }

  /**
   * Steps 1 and 2 of the write order (see the class comment). The block's
   * place is taken at once — the end moves before anything is written, so
   * the next allocation goes behind it — then the new footer and the first
   * data are issued together (either may land first: the comment covers both
   * orders). The BAT entry and the bitmap change in memory only once both
   * have landed, so a failed allocation leaves the block unallocated.
   */
  private allocate(block: number, at: number, first: Uint8Array | null, s0: number, s1: number): Promise<void> {
    const reused = this.state.free?.take(this.bitmapSize + this.blockSize, SECTOR);
    if (reused !== undefined) return this.allocateInHole(block, reused, at, first, s0, s1);
    const off = this.state.footerOffset;
    const sector = off / SECTOR;
    if (sector > MAX_BLOCK_SECTOR) {
      throw new BlockError('out-of-range', 'the VHD file cannot grow further: block offsets are limited to 32-bit sector numbers', { path: this.path, offset: off });
    }
    const newFooterOffset = off + this.bitmapSize + this.blockSize;
    this.state.footerOffset = newFooterOffset;
    const bits = new Uint8Array(this.bitmapSize);
    // Dynamic: the whole new block is valid (zeros where not written). Differencing: only what was written.
    if (!this.differencing) setBits(bits, 0, this.blockSize / SECTOR);
    else setBits(bits, s0, s1);
    const footer = encodeFooter(this.state.footer);
    // Bitmap, data and the new footer lie back to back in the file: what
    // of them this write touches goes as one request (a whole-block write,
    // as convert and large NBD writes make, is one request instead of three).
    // Landing together is safe: nothing points at the block before its BAT
    // entry, which is written only after them (steps 3-5).
    // The allocation before this one, if still in flight, writes its footer
    // where this block's bitmap goes: then the bitmap waits for step 4.
    const last = this.lastFooter;
    const footerInFlightHere = last !== undefined && last.at === off && !last.landed;
    const withBits = first !== null && at === 0 && !footerInFlightHere;
    const withFooter = first !== null && at + first.length === this.blockSize;
    const done = (async () => {
      const writes: Promise<void>[] = [];
      // Zeros need no data write: a fresh block's data area is a hole and reads as zeros already.
      if (first) {
        const parts = [...(withBits ? [bits] : []), first, ...(withFooter ? [footer] : [])];
        writes.push(writeParts(this.store, withBits ? off : off + this.bitmapSize + at, parts));
      }
      if (!withFooter) writes.push(this.store.write(newFooterOffset, footer));
      try {
        await settleAll(writes);
      } catch (e) {
        this.footerStale = true;
        throw e;
      }
      if (this.state.footerOffset === newFooterOffset) this.state.endFooterDamaged = null;
      if (newFooterOffset > this.solidEnd) this.solidEnd = newFooterOffset;
      this.state.bat![block] = sector;
      this.dirtyBatSectors.add(Math.floor(block / ENTRIES_PER_SECTOR));
      this.bitmaps.put(block, bits, !withBits);
    })();
    this.allocating.set(block, done);
    const mine = { at: newFooterOffset, landed: false };
    this.lastFooter = mine;
    const forget = () => {
      this.allocating.delete(block);
      mine.landed = true; // (or failed: either way its writes are over)
    };
    done.then(forget, forget);
    return done;
  }

  /**
   * Writable.fillBlocks for a dynamic disk: a batch of allocations whose
   * data a copier writes itself. Slot k is the block at footerOffset +
   * k * (bitmap + block), exactly where allocate() would have put the k-th
   * new block, so the file is laid out as by writes in that order. The
   * write order is allocate()'s (see the class comment): the data lands
   * first, past the old footer (a crash here leaves a last sector that is
   * not a footer: the copy at offset 0 covers it, and no BAT entry points
   * at the new blocks); then the new footer at the new end; the bitmaps
   * (all set: a dynamic block holds the whole of its disk range) and BAT
   * entries stay dirty in memory for steps 3-5. If the copier fails, the
   * end is restored (restoreEnd) as after a failed allocation.
   */
  private async fill(fill: (where: BlockFill) => Promise<number[]>): Promise<void> {
    await this.restoringEnd(() =>
      this.lock.run(async () => {
        await this.restoreEnd();
        const bat = this.state.bat!;
        const start = this.state.footerOffset;
        const stride = this.bitmapSize + this.blockSize;
        let blocks: number[];
        try {
          blocks = await fill({
            store: this.store,
            blockSize: this.blockSize,
            base: start + this.bitmapSize,
            stride,
            placeOf: (b) => (bat[b] === UNALLOCATED ? undefined : bat[b] * SECTOR + this.bitmapSize),
          });
          const last = start + (blocks.length - 1) * stride;
          if (blocks.length && last / SECTOR > MAX_BLOCK_SECTOR) {
            throw new BlockError('out-of-range', 'the VHD file cannot grow further: block offsets are limited to 32-bit sector numbers', { path: this.path, offset: last });
          }
          const seen = new Set<number>();
          for (const b of blocks) {
            if (!Number.isSafeInteger(b) || b < 0 || b >= bat.length || bat[b] !== UNALLOCATED || seen.has(b)) {
              throw new BlockError('invalid-argument', `block ${b} cannot take a new place (allocated already, repeated or out of range)`, { path: this.path });
            }
            seen.add(b);
          }
        } catch (e) {
          // Whatever the copier wrote past the old end is cut away with the end restored.
          this.footerStale = true;
          throw e;
        }
        if (blocks.length === 0) return;
        const end = start + blocks.length * stride;
        this.state.footerOffset = end;
        try {
          await this.store.write(end, encodeFooter(this.state.footer));
        } catch (e) {
          this.state.footerOffset = start;
          this.footerStale = true;
          throw e;
        }
        this.state.endFooterDamaged = null;
        this.solidEnd = end;
        this.lastFooter = undefined;
        blocks.forEach((b, k) => {
          const bits = new Uint8Array(this.bitmapSize);
          setBits(bits, 0, this.blockSize / SECTOR);
          bat[b] = (start + k * stride) / SECTOR;
          this.dirtyBatSectors.add(Math.floor(b / ENTRIES_PER_SECTOR));
          this.bitmaps.put(b, bits, true);
        });
        if (this.bitmaps.dirtyCount() > MAX_DIRTY_BITMAPS) await this.writeMetadata();
      }),
    );
  }

  /**
   * A new block in a hole inside the file (state.free: a released block's
   * place, free-ranges.ts) instead of at the end: no footer moves. The hole
   * may hold the old block's bytes, so the whole block is written — its
   * bitmap, zeros around the data, the data — before the BAT entry changes,
   * in memory once they have landed and on disk after the next flush (steps
   * 3-5), as for any allocation: until then nothing points at the hole.
   */
  private allocateInHole(block: number, off: number, at: number, first: Uint8Array | null, s0: number, s1: number): Promise<void> {
    const bits = new Uint8Array(this.bitmapSize);
    if (!this.differencing) setBits(bits, 0, this.blockSize / SECTOR);
    else setBits(bits, s0, s1);
    const data = off + this.bitmapSize;
    const length = first?.length ?? 0;
    const done = (async () => {
      await settleAll([
        this.store.write(off, bits),
        writeZeroData(this.store, data, at),
        ...(first ? [this.store.write(data + at, first)] : []),
        writeZeroData(this.store, data + at + length, this.blockSize - at - length),
      ]);
      this.state.bat![block] = off / SECTOR;
      this.dirtyBatSectors.add(Math.floor(block / ENTRIES_PER_SECTOR));
      this.bitmaps.put(block, bits);
    })();
    this.allocating.set(block, done);
    const forget = () => this.allocating.delete(block);
    done.then(forget, forget);
    return done;
  }

  /** Steps 3-5 of the write order. */
  private async writeMetadata(): Promise<void> {
    // A failed allocation whose end could not be restored when it failed: try again before the metadata goes out.
    await this.restoreEnd();
    const dirtyBitmaps = this.bitmaps.dirty();
    if (dirtyBitmaps.length === 0 && this.dirtyBatSectors.size === 0) {
      await this.store.flush();
      return;
    }
    await this.store.flush();
    // Within a step nothing is ordered: the bitmaps go at once, and runs of
    // neighbouring BAT sectors as one write each.
    await settleAll(
      dirtyBitmaps.map(async ([block, bits]) => {
        await this.store.write(this.state.bat![block] * SECTOR, bits);
        this.bitmaps.markClean(block);
      }),
    );
    if (this.dirtyBatSectors.size > 0) {
      await this.store.flush();
      const tableOffset = this.state.header!.tableOffset;
      const sectors = [...this.dirtyBatSectors].sort((a, b) => a - b);
      const runs: number[][] = [];
      for (const sec of sectors) {
        const run = runs[runs.length - 1];
        if (run && sec === run[run.length - 1] + 1) run.push(sec);
        else runs.push([sec]);
      }
      const max = this.state.header!.maxTableEntries;
      await settleAll(runs.map((run) => writeParts(this.store, tableOffset + run[0] * SECTOR, run.map((sec) => encodeBatSector(this.state.bat!, sec, max)))));
      this.dirtyBatSectors.clear();
    }
    await this.store.flush();
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.lock.run(() => this.writeMetadata());
  }

  // -------------------------------------------------------------------------
  // check (check.ts) and maintenance (maintenance.ts), each with the metadata written out first and the lock held

  private maintain<T>(fn: () => Promise<T>, writes: boolean): Promise<T> {
    if (writes && this.readOnly) return Promise.reject(readOnlyError({ path: this.path }));
    return this.lock.run(async () => {
      if (!this.readOnly) await this.writeMetadata();
      try {
        return await fn();
      } finally {
        this.bitmaps.clear();
        // Maintenance may move the end (a larger BAT, new parent locators at the end of the file).
        this.solidEnd = this.state.footerOffset;
      }
    });
  }

  check(options: { repair?: 'leaks' | 'all' } = {}): Promise<CheckResult> {
    return this.maintain(() => checkVhd(this.state, options), options.repair !== undefined);
  }

  private resizeDisk(newSize: number, options: ResizeOptions = {}): Promise<void> {
    return this.maintain(async () => {
      await resizeVhd(this.state, newSize, options);
      this.size = this.state.footer.currentSize;
    }, true);
  }

  private changeBacking(parent: BackingTarget | null): Promise<void> {
    return this.maintain(async () => {
      await setBackingVhd(this.state, parent);
      // Without a parent the disk is dynamic now (flatten.ts): reads take each allocated block whole.
      this.backing = this.differencing ? backingRef(this.state.header!, this.state.locators) : null;
    }, true);
  }

  resetIdentity(): Promise<IdentityChange[]> {
    return this.maintain(async () => {
      const changes = await resetIdentityVhd(this.state);
      this.identity = uuidToString(this.state.footer.uniqueId);
      return changes;
    }, true);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.readOnly) await this.flush();
    } finally {
      await this.store.close();
    }
  }

  // -------------------------------------------------------------------------
  // info

  info(): FormatInfo {
    const { footer: f, header: h } = this.state;
    const specific: Record<string, unknown> = {
      'disk-type': f.diskType,
      'current-size': f.currentSize,
      'original-size': f.originalSize,
      geometry: { cylinders: f.cylinders, heads: f.heads, 'sectors-per-track': f.sectorsPerTrack, size: chsBytes(f) },
      'creator-application': f.creatorApplication,
      'creator-version': `${f.creatorVersion >>> 16}.${f.creatorVersion & 0xffff}`,
      'creator-host-os': hostOsName(f.creatorHostOs),
      timestamp: vhdTime(f.timestamp),
      uuid: this.identity,
      'saved-state': f.savedState !== 0,
    };
    if (h) {
      specific['block-size'] = h.blockSize;
      specific['max-table-entries'] = h.maxTableEntries;
      specific['allocated-blocks'] = this.state.bat!.reduce((n, e) => (e === UNALLOCATED ? n : n + 1), 0);
    }
    if (this.differencing && h) {
      specific.parent = {
        uuid: uuidToString(h.parentUniqueId),
        timestamp: vhdTime(h.parentTimestamp),
        'unicode-name': h.parentUnicodeName,
        locators: this.state.locators.map((l) => ({
          platform: l.platform,
          'data-space': l.dataSpace,
          'data-length': l.dataLength,
          'data-offset': l.dataOffset,
          ...(l.path !== undefined ? { path: l.path } : {}),
        })),
      };
    }
    if (this.state.batmap) specific.batmap = { offset: this.state.batmap.offset, size: this.state.batmap.size, version: `${this.state.batmap.version >>> 16}.${this.state.batmap.version & 0xffff}`, 'checksum-ok': this.state.batmap.checksumOk };
    const warnings: string[] = [];
    if (this.state.endFooterDamaged) warnings.push(`footer at the end of the file is damaged (${this.state.endFooterDamaged}); using the copy at offset 0 (check -r all rewrites it)`);
    if (this.state.badChecksums.length) warnings.push(`wrong checksums tolerated (ignore-checksums): ${this.state.badChecksums.join(', ')}`);
    // The maximum geometry means "size by the current size" to qemu too (block/vpc.c): no disagreement to report.
    if (f.currentSize !== chsBytes(f) && !isMaxGeometry(f)) warnings.push(`CHS geometry gives ${chsBytes(f)} bytes; the footer's current size (${f.currentSize}) is used`);
    if (f.diskType === 'fixed' && f.currentSize > MAX_SIZE) warnings.push(`Hyper-V attaches fixed VHDs only up to 2040 GiB, and qemu opens none larger; this one is ${f.currentSize} bytes (Azure takes up to 32 TiB)`);
    if (warnings.length) specific.warnings = warnings;
    if (this.state.badChecksums.length) specific['checksums-ignored'] = this.state.badChecksums;
    return { clusterSize: h?.blockSize, specific };
  }
}

function vhdTime(t: number): string {
  return new Date((t + VHD_EPOCH_UNIX) * 1000).toISOString();
}
