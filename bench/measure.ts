import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Running one measured process: wall time from the parent's clock, peak RSS
 * from GNU time (`%M`, KiB, the largest resident set of the process and the
 * children it waited for), and an optional inner timing the process reports
 * itself (qemu-img bench's "Run completed in", our workers' `BENCH {...}`).
 */

export interface Measurement {
  /** Wall seconds of the whole process (start-up included). */
  wall: number;
  /** Seconds the process reports for its measured part, when it does. */
  inner?: number;
  /** Peak resident set in bytes, when GNU time is available. */
  rss?: number;
  /** CPU seconds (user + system) of the process and the children it waited for, when GNU time is available. */
  cpu?: number;
  stdout: string;
}

const GNU_TIME = '/usr/bin/time';
export const hasGnuTime = existsSync(GNU_TIME);

export class CommandError extends Error {
  constructor(
    readonly argv: string[],
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(`${argv.join(' ')} exited with ${code}: ${stderr.trim().split('\n').slice(-3).join(' / ')}`);
  }
}

let seq = 0;

/** Run argv to completion, measuring it. Fails with CommandError on a non-zero exit. */
export async function measure(argv: string[], options: { scratch: string; env?: NodeJS.ProcessEnv; cwd?: string }): Promise<Measurement> {
  const timeFile = join(options.scratch, `.time-${process.pid}-${seq++}`);
  const full = hasGnuTime ? [GNU_TIME, '-f', '%U %S %M', '-o', timeFile, ...argv] : argv;
  const start = process.hrtime.bigint();
  const { code, stdout, stderr } = await run(full, options);
  const wall = Number(process.hrtime.bigint() - start) / 1e9;
  let rss: number | undefined;
  let cpu: number | undefined;
  if (hasGnuTime) {
    const text = await readFile(timeFile, 'utf8').catch(() => '');
    await rm(timeFile, { force: true });
    // The last line: "user system KiB" (GNU time puts a note about a signal or exit status on lines before it).
    const [user, sys, kib] = (text.trim().split('\n').pop() ?? '').split(' ').map(Number);
    if (Number.isFinite(kib) && kib > 0) rss = kib * 1024;
    if (Number.isFinite(user) && Number.isFinite(sys)) cpu = user + sys;
  }
  if (code !== 0) throw new CommandError(argv, code, stderr);
  // qemu-img bench prints milliseconds only: a too-short inner time is no time at all.
  const inner = innerSeconds(stdout);
  return { wall, rss, cpu, inner: inner !== undefined && inner >= 0.001 ? inner : undefined, stdout };
}

/** Run a command, collecting its output (for setup steps that are not measured). */
export function run(argv: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { env: options.env ?? process.env, cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d.length > 65536 ? d.slice(-65536) : d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Run a setup command and fail loudly if it fails. */
export async function runOk(argv: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<string> {
  const r = await run(argv, options);
  if (r.code !== 0) throw new CommandError(argv, r.code, r.stderr);
  return r.stdout;
}

function innerSeconds(stdout: string): number | undefined {
  const q = /Run completed in ([0-9.]+) seconds/.exec(stdout);
  if (q) return Number(q[1]);
  const m = /^BENCH (\{.*\})$/m.exec(stdout);
  if (m) {
    const v = (JSON.parse(m[1]) as { seconds?: number }).seconds;
    if (typeof v === 'number') return v;
  }
  return undefined;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const PAGE_REPORTING = '/sys/module/page_reporting/parameters/page_reporting_order';
const PAUSED = '11'; // above MAX_PAGE_ORDER (10): no free block is ever large enough to report
/** Whether this process paused reporting (touchFreeMemory then has something to do). */
let paused = false;

/**
 * Free page reporting (virtio-balloon, VIRTIO_BALLOON_F_REPORTING) hands the
 * guest's free memory back to the host within about a second of its being
 * freed, and the next touch of such a page costs a fault in the host. On the
 * virtual machine BENCHMARKS.md is made on, touching 2 GiB runs at 0.35-0.86
 * GB/s when the memory was freed 2 s earlier and at 2.4-2.7 GB/s when it was
 * freed 0.1 s earlier or reporting is paused (a C program touching one byte
 * per page of a fresh mapping; BENCHMARKS.md, session 10). Every output a
 * case writes needs fresh page-cache pages, so a run's time came to depend
 * on how long ago the previous run's output was
 * deleted: the "bimodal system time" of earlier sections (curl's 2 GiB
 * download: 2.2-2.6 s in one series, 4.6-9.9 s in another).
 *
 * For the length of a bench run (every tool alike) reporting is paused by
 * setting its minimum order above the largest one (restored at exit, also
 * on SIGINT/SIGTERM), and, once the inputs are built, some memory is
 * touched once (touchFreeMemory) so that the pool the tools draw from is
 * backed by the host. Nothing changes where the knob is missing or not
 * writable; VDISK_BENCH_KEEP_REPORTING=1 leaves it alone. Returns what was
 * done, for the results' machine line.
 */
export async function pausePageReporting(log: (s: string) => void): Promise<string | undefined> {
  if (!existsSync(PAGE_REPORTING)) return undefined;
  if (process.env.VDISK_BENCH_KEEP_REPORTING === '1') return 'free page reporting left on (VDISK_BENCH_KEEP_REPORTING=1)';
  const old = readFileSync(PAGE_REPORTING, 'utf8').trim();
  try {
    writeFileSync(PAGE_REPORTING, PAUSED);
  } catch (e) {
    return `free page reporting left on (${(e as Error).message})`;
  }
  const restore = (): void => {
    try {
      writeFileSync(PAGE_REPORTING, old);
    } catch {
      // nothing more to do: the next boot resets it
    }
  };
  if (readFileSync(PAGE_REPORTING, 'utf8').trim() !== PAUSED) {
    restore();
    return 'free page reporting left on (the kernel refused to pause it)';
  }
  process.once('exit', restore);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      restore();
      process.exit(130);
    });
  }
  paused = true;
  log(`  free page reporting paused (page_reporting_order ${old} -> ${PAUSED}, restored at exit)`);
  return `free page reporting paused for the run (page_reporting_order ${old} -> ${PAUSED}, restored after), free memory touched once before the cases`;
}


/** After pausePageReporting: touch up to 8 GiB (half of what is available) in a child process, which then exits and frees it. */
export async function touchFreeMemory(log: (s: string) => void): Promise<void> {
  if (!paused) return;
  const avail = Number(/MemAvailable:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0) * 1024;
  const gib = Math.max(0, Math.min(8, Math.floor(avail / 2 / 2 ** 30)));
  const t0 = Date.now();
  await runOk([process.execPath, '-e', `const a = []; for (let i = 0; i < ${gib * 4}; i++) a.push(Buffer.alloc(256 << 20, 1));`]);
  log(`  ${gib} GiB of free memory touched once (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}
