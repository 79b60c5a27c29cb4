/**
 * Wait for every promise to settle, then throw the first rejection, if any.
 * Unlike Promise.all, nothing is still running when the caller sees the
 * error: a failed write never races a clean-up (close, unlink) that follows.
 */
export async function settleAll(work: readonly (Promise<unknown> | undefined)[]): Promise<void> {
  const results = await Promise.allSettled(work);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
