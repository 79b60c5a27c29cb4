import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from './corpus.js';

export const VDISK_BIN = join(REPO_ROOT, 'bin', 'vdisk.cjs');

/** Run the real CLI (the built launcher) and capture its output and exit code. */
export function vdisk(...args: string[]): { stdout: string; stderr: string; status: number } {
  const r = spawnSync(process.execPath, [VDISK_BIN, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
}
