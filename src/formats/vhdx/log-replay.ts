import { BlockError } from '../../core/errors.js';
import { readOnlyError } from '../../core/request.js';
import { writeZeroBytes } from '../../core/zeros.js';
import type { Store } from '../../io/store.js';
import { LOG_SECTOR, MiB } from './layout.js';
import { parseEntry, type LogWrite, type ParsedEntry } from './log-entry.js';

/**
 * Log replay (VHDX spec 2.3.2, 2.3.3). The active sequence is the run of
 * valid, contiguous entries with consecutive sequence numbers whose last
 * entry (the head) has the highest sequence number found, and whose head's
 * Tail names an entry of the run. Replaying applies the writes of the
 * entries from that tail to the head, in order.
 */
interface ReplayPlan {
  entries: ParsedEntry[];
  writes: LogWrite[];
  /** From the head: the file must be at least this long, else it was truncated after the log was written. */
  flushedFileOffset: number;
  /** From the head: the size every structure fits into; the file grows to it. */
  lastFileOffset: number;
}

/** Largest log we read into memory (the specification allows any 1 MiB multiple up to 4 GiB; writers use 1 MiB). */
const MAX_LOG_IN_MEMORY = 1024 * MiB;

export function findActiveSequence(log: Uint8Array, logGuid: Uint8Array): ParsedEntry[] | null {
  let best: ParsedEntry[] | null = null;
  let pos = 0;
  while (pos < log.length) {
    const first = parseEntry(log, pos, logGuid);
    if (!first) {
      pos += LOG_SECTOR;
      continue;
    }
    const run = [first];
    let covered = first.length;
    let cur = first;
    // Follow the run around the circle; it can never be longer than the log itself.
    while (covered < log.length) {
      const next = parseEntry(log, (cur.position + cur.length) % log.length, logGuid);
      if (!next || next.sequenceNumber !== cur.sequenceNumber + 1n || covered + next.length > log.length) break;
      run.push(next);
      covered += next.length;
      cur = next;
    }
    const tailIndex = run.findIndex((e) => e.position === cur.tail);
    if (tailIndex >= 0 && (!best || cur.sequenceNumber > best[best.length - 1].sequenceNumber)) best = run.slice(tailIndex);
    const end = cur.position + cur.length;
    // A run that wrapped has been followed to its end: nothing further to scan.
    if (end <= pos || end > log.length || cur.position < first.position) break;
    pos = end;
  }
  return best;
}

/** Read the log and work out what replaying it means. Null: nothing to replay. */
export async function planReplay(
  store: Store,
  log: { offset: number; length: number; guid: Uint8Array },
  fileSize: number,
  path?: string,
): Promise<ReplayPlan | null> {
  if (log.length > MAX_LOG_IN_MEMORY) {
    throw new BlockError('unsupported', `log of ${log.length} bytes is larger than vdisk replays (${MAX_LOG_IN_MEMORY})`, { path, offset: log.offset });
  }
  if (log.offset + log.length > fileSize) {
    throw new BlockError('corrupt', `log (offset ${log.offset}, length ${log.length}) lies past the end of the file (${fileSize})`, { path, offset: log.offset });
  }
  const buf = new Uint8Array(log.length);
  const n = await store.read(log.offset, buf);
  if (n !== buf.length) throw new BlockError('corrupt', 'log is truncated', { path, offset: log.offset });
  const entries = findActiveSequence(buf, log.guid);
  if (!entries) return null;
  const head = entries[entries.length - 1];
  if (fileSize < head.flushedFileOffset) {
    throw new BlockError('corrupt', `file is ${fileSize} bytes but the log says it was at least ${head.flushedFileOffset}: it was truncated`, { path });
  }
  // Nothing a valid log writes lies beyond the file as it was or will be (2.3.1.1 LastFileOffset).
  const limit = Math.max(fileSize, head.lastFileOffset);
  const writes = entries.flatMap((e) => e.writes);
  for (const w of writes) {
    const end = w.offset + (w.kind === 'data' ? LOG_SECTOR : w.length);
    if (w.offset < MiB && !(w.offset >= 64 * 1024 && end <= 320 * 1024)) {
      // Only headers and region tables may be logged inside the first MiB; never the file identifier.
      throw new BlockError('corrupt', `log entry writes into the file identifier (offset ${w.offset})`, { path });
    }
    if (!Number.isSafeInteger(end) || end > limit) {
      throw new BlockError('corrupt', `log entry writes past the end of the file (offset ${w.offset}, file ${limit})`, { path });
    }
  }
  return { entries, writes, flushedFileOffset: head.flushedFileOffset, lastFileOffset: head.lastFileOffset };
}

/** Replay onto the file (read-write open), then make it durable. */
export async function replayOntoFile(store: Store, plan: ReplayPlan): Promise<void> {
  let size = await store.size();
  for (const w of plan.writes) {
    if (w.kind === 'data') await store.write(w.offset, w.data);
    else {
      // Bytes past the end of the file are zero already; write zeros only below it.
      const end = Math.min(w.offset + w.length, size);
      await writeZeroBytes((o, d) => store.write(o, d), w.offset, end - w.offset);
    }
    size = await store.size();
  }
  if (size < plan.lastFileOffset) await store.truncate(plan.lastFileOffset);
  await store.flush();
}

/**
 * A read-only view of a file with a log replayed in memory only (read-only
 * opens must leave the file byte-identical). Reads see the file with the
 * replayed sectors and zeroed ranges laid over it.
 */
export class OverlayStore implements Store {
  readonly readOnly = true;
  private readonly sectors = new Map<number, Uint8Array>();
  private readonly zeros: { offset: number; length: number }[] = [];
  private readonly keys: number[];
  private readonly overlaySize: number;

  constructor(
    private readonly inner: Store,
    plan: ReplayPlan,
    innerSize: number,
  ) {
    let end = Math.max(innerSize, plan.lastFileOffset);
    for (const w of plan.writes) {
      if (w.kind === 'data') {
        this.sectors.set(w.offset, w.data);
        end = Math.max(end, w.offset + LOG_SECTOR);
      } else {
        // A zero range wins over every earlier sector it covers; later sectors win over it.
        for (const k of [...this.sectors.keys()]) if (k >= w.offset && k < w.offset + w.length) this.sectors.delete(k);
        this.zeros.push({ offset: w.offset, length: w.length });
      }
    }
    this.keys = [...this.sectors.keys()].sort((a, b) => a - b);
    this.overlaySize = end;
  }

  get path(): string {
    return this.inner.path;
  }

  async size(): Promise<number> {
    return this.overlaySize;
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    const len = Math.max(0, Math.min(into.length, this.overlaySize - offset));
    const view = into.subarray(0, len);
    const n = await this.inner.read(offset, view);
    view.fill(0, n);
    const end = offset + len;
    for (const z of this.zeros) {
      const a = Math.max(offset, z.offset);
      const b = Math.min(end, z.offset + z.length);
      if (a < b) view.fill(0, a - offset, b - offset);
    }
    // First replayed sector that may overlap [offset, end).
    let lo = 0;
    let hi = this.keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.keys[mid] + LOG_SECTOR <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.keys.length && this.keys[i] < end; i++) {
      const k = this.keys[i];
      const data = this.sectors.get(k)!;
      const a = Math.max(offset, k);
      const b = Math.min(end, k + LOG_SECTOR);
      view.set(data.subarray(a - k, b - k), a - offset);
    }
    return len;
  }

  async write(): Promise<void> {
    throw readOnlyError({ path: this.path, operation: 'write' });
  }
  async truncate(): Promise<void> {
    throw readOnlyError({ path: this.path, operation: 'truncate' });
  }
  async flush(): Promise<void> {}
  close(): Promise<void> {
    return this.inner.close();
  }
}
