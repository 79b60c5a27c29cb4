import { BlockError } from '../../core/errors.js';
import { isZeroGuid, randomGuid } from '../../core/guid.js';
import type { Store } from '../../io/store.js';
import { encodeHeader, type HeaderValue } from './header.js';
import { HEADER_OFFSETS, LOG_SECTOR, MiB } from './layout.js';
import { buildEntry, descriptorSectors } from './log-entry.js';

/**
 * The header update procedure (VHDX spec 2.2.2.1): write the new header, with
 * the sequence number one higher, over the non-current copy and flush; it is
 * now current. Done twice so both copies end up carrying the new values and
 * a torn write of either always leaves the other one valid.
 */
export class HeaderWriter {
  constructor(
    private readonly store: Store,
    private currentSlot: number,
    private value: HeaderValue,
  ) {}

  get current(): HeaderValue {
    return this.value;
  }

  async update(change: Partial<HeaderValue>): Promise<void> {
    let next = { ...this.value, ...change };
    for (let round = 0; round < 2; round++) {
      next = { ...next, sequenceNumber: this.value.sequenceNumber + 1n };
      const slot = 1 - this.currentSlot;
      await this.store.write(HEADER_OFFSETS[slot], encodeHeader(next));
      await this.store.flush();
      this.currentSlot = slot;
      this.value = next;
    }
  }
}

/** A 4 KiB sector image to be written at a 4 KiB-aligned file offset through the log. */
export type SectorUpdates = Map<number, Uint8Array>;

/**
 * Journaled metadata writes (VHDX spec 2.3): every change to the BAT, the
 * sector bitmaps or the metadata region is a set of whole 4 KiB sectors that
 * is first written to the log as one entry and flushed, then written in
 * place. The data the new metadata points at has already been written and
 * is made durable by the flush that precedes the entry, so after a crash
 * replaying the log never exposes a pointer to unwritten data.
 *
 * Each entry's tail is the entry itself: the previous entry's in-place writes
 * are durable (flushed before the next entry is written), so only the newest
 * entry ever needs replaying, and entries never need to wrap around the end
 * of the log (the writer starts again at the log's beginning instead).
 */
export class Journal {
  private position = 0;
  private sequence = 1n;

  constructor(
    private readonly store: Store,
    private readonly headers: HeaderWriter,
    private readonly log: { offset: number; length: number },
    /** Durable file size and the end of every structure, for the entry's FlushedFileOffset / LastFileOffset. */
    private readonly fileExtent: () => { flushed: number; last: number },
  ) {}

  /** Most sectors one entry can carry in this log. */
  get capacity(): number {
    const sectors = this.log.length / LOG_SECTOR;
    let n = sectors - 1;
    while (n > 0 && descriptorSectors(n) + n > sectors) n--;
    return n;
  }

  get active(): boolean {
    return !isZeroGuid(this.headers.current.logGuid);
  }

  /**
   * Log, flush, apply. `apply` is called for each sector once it is durable in
   * the log and written in place, so the caller updates its in-memory copy.
   */
  async commit(updates: SectorUpdates, apply: (offset: number, data: Uint8Array) => void): Promise<void> {
    if (updates.size === 0) return;
    if (this.log.length < MiB) throw new BlockError('unsupported', 'the image has no log to journal metadata updates in', { path: this.store.path });
    if (!this.active) {
      // A fresh LogGuid makes every older entry in the log invalid (2.3.1.1), so the log starts empty.
      await this.headers.update({ logGuid: randomGuid() });
      this.position = 0;
      this.sequence = 1n;
    }
    // In insertion order: when a large commit (resize) needs several rounds, each atomic on its
    // own, the caller puts the sectors that must land first first.
    const all = [...updates];
    for (let i = 0; i < all.length; i += this.capacity) {
      const round = all.slice(i, i + this.capacity);
      // Makes the data the new metadata points at, and the previous round's in-place writes, durable.
      await this.store.flush();
      const length = (descriptorSectors(round.length) + round.length) * LOG_SECTOR;
      if (this.position + length > this.log.length) this.position = 0;
      const { flushed, last } = this.fileExtent();
      const entry = buildEntry({
        sequenceNumber: this.sequence,
        logGuid: this.headers.current.logGuid,
        position: this.position,
        tail: this.position,
        flushedFileOffset: flushed,
        lastFileOffset: last,
        sectors: round.map(([offset, data]) => ({ offset, data })),
      });
      await this.store.write(this.log.offset + this.position, entry);
      await this.store.flush();
      this.position = (this.position + length) % this.log.length;
      this.sequence++;
      for (const [offset, data] of round) {
        await this.store.write(offset, data);
        apply(offset, data);
      }
    }
  }

  /** Make the in-place writes durable and mark the log empty (a clean file needs no replay). */
  async close(): Promise<void> {
    if (!this.active) return;
    await this.store.flush();
    await this.headers.update({ logGuid: new Uint8Array(16) });
  }
}
