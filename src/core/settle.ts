/**
 * Wait for every promise to settle, then throw the first rejection, if any.
 * Unlike Promise.all, nothing is still running when the caller sees the
 * error: a failed write never races a clean-up (close, unlink) that follows.
 */
export async function settleAll(work: readonly (Promise<unknown> | undefined)[]): Promise<void> {
  const results = await Promise.allSettled(work);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/**
 * Work started and not yet settled, for a step that must wait for all of it
 * (a flush after writes issued outside a lock). Failures are left to whoever
 * awaits each promise; draining only waits.
 */
export class InFlight {
  private readonly pending = new Set<Promise<unknown>>();

  /** Count `work` until it settles; returns it. */
  track<T>(work: Promise<T>): Promise<T> {
    this.pending.add(work);
    const forget = () => void this.pending.delete(work);
    work.then(forget, forget);
    return work;
  }

  /** Until everything tracked so far, and anything tracked meanwhile, has settled. */
  async drain(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }
}
