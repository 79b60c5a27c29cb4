import { createRequire } from 'node:module';
import type cliProgressModule from 'cli-progress';

/** A progress bar on a terminal; silent when stderr is not a TTY (logs, pipes, CI). */
export function progressBar(): { update: (done: number, total: number) => void; stop: () => void } {
  if (!process.stderr.isTTY) return { update: () => {}, stop: () => {} };
  // Loaded only when a bar is really drawn (start-up stays short otherwise).
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof cliProgressModule;
  const bar = new cliProgress.SingleBar(
    { stream: process.stderr, format: '  {bar} {percentage}% | {value}/{total} MiB', hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done: number, total: number) {
      const mib = (n: number) => Math.round(n / 2 ** 20);
      if (!started) {
        bar.start(mib(total), 0);
        started = true;
      }
      bar.update(mib(done));
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
