import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
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
  /** CPU seconds (user + system, the process and the children it waited for), when GNU time is available. */
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
    // The last line: "%U %S %M" (a killed process gets a line of its own before it).
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
