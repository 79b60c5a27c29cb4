/**
 * Byte-range locks: a holder excludes only the requests whose ranges overlap
 * its own. A request waits for every earlier request it overlaps, held or
 * still waiting, so overlapping requests run one at a time in arrival order
 * (none starves) while disjoint ones run side by side.
 */
export class RangeLock {
  private readonly entries = new Set<{ start: number; end: number; done: Promise<void> }>();

  async run<T>(start: number, end: number, fn: () => Promise<T>): Promise<T> {
    const earlier: Promise<void>[] = [];
    for (const e of this.entries) if (e.start < end && start < e.end) earlier.push(e.done);
    let release!: () => void;
    const entry = { start, end, done: new Promise<void>((r) => (release = r)) };
    this.entries.add(entry);
    try {
      if (earlier.length > 0) await Promise.all(earlier);
      return await fn();
    } finally {
      this.entries.delete(entry);
      release();
    }
  }
}
