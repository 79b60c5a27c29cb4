import { constants } from 'node:os';

/** The signal a job was interrupted by. */
class Interrupted extends Error {
  constructor(readonly signal: 'SIGINT' | 'SIGTERM') {
    super(`interrupted by ${signal}`);
  }
}

/**
 * Run `work` with SIGINT (Ctrl-C) and SIGTERM turned into an abort of its
 * signal instead of killing the process: the job then removes what it was
 * making (ops/create.ts, ops/convert.ts: new images are renamed into place
 * only when complete) and a progress bar inside `work` is stopped by its
 * finally (withProgress), which shows the cursor again and turns line
 * wrapping back on — a process killed outright leaves the terminal
 * without both. Resolves to the exit status a shell gives a process killed
 * by that signal (128 + signal number: 130, 143) after one line saying so,
 * or undefined when the job ended on its own; a job that completed before
 * noticing the abort counts as completed. A second signal while the job
 * cleans up is ignored (its cleanup is short: closing files, removing
 * temporary ones).
 */
export async function interruptible(what: string, work: (signal: AbortSignal) => Promise<unknown>): Promise<number | undefined> {
  const controller = new AbortController();
  const onSignal = (signal: 'SIGINT' | 'SIGTERM') => {
    if (!controller.signal.aborted) controller.abort(new Interrupted(signal));
  };
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    await work(controller.signal);
    return undefined;
  } catch (e) {
    const reason: unknown = controller.signal.reason;
    if (!(reason instanceof Interrupted)) throw e;
    console.error(`vdisk: ${reason.message}; ${what}`);
    return 128 + constants.signals[reason.signal];
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}
