import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FORMATS } from '../src/formats/registry.js';
import { run } from './measure.js';

/** The repository root (dist/bench/peers.js → ../..; a snapshot's children are told by run.js). */
export const REPO = process.env.VDISK_BENCH_REPO ?? resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const PEERS_DIR = join(REPO, 'bench', '.peers');

/**
 * Where the code under test lives: run.js copies dist/ and bin/ into its
 * scratch folder first, so that other people rebuilding dist/ in the same
 * tree during a run cannot change (or break) what is measured.
 */
let appRoot = REPO;
export function useApp(root: string): void {
  appRoot = root;
}
export const appDir = (): string => appRoot;
export const vdiskBin = (): string => join(appRoot, 'bin', 'vdisk.cjs');
export const workerJs = (): string => join(appRoot, 'dist', 'bench', 'worker.js');
export const VHD_LIB_VERSION = '0.7.2';

/** null when vdisk has the format (and can create it, if asked); otherwise why not. */
export function formatAvailable(name: string, create = false): string | null {
  const f = FORMATS.find((x) => x.name === name || x.aliases.includes(name));
  if (!f) return `not available yet: vdisk has no '${name}' format registered`;
  if (create && !f.create) return `not available yet: vdisk's '${name}' format cannot create images`;
  return null;
}

let serveChecked: string | null | undefined;
/** null when `vdisk serve` exists. */
export async function serveAvailable(): Promise<string | null> {
  if (serveChecked === undefined) {
    const r = await run([process.execPath, vdiskBin(), 'serve', '--help']);
    serveChecked = r.code === 0 && /Usage: vdisk serve/.test(r.stdout) ? null : 'not available yet: vdisk has no `serve` command';
  }
  return serveChecked;
}

/** vdisk convert takes `-t unsafe|writeback` (qemu-img's cache modes). */
export async function convertHasCache(): Promise<boolean> {
  const r = await run([process.execPath, vdiskBin(), 'convert', '--help']);
  return r.code === 0 && /--cache/.test(r.stdout);
}

export async function toolVersion(argv: string[]): Promise<string | null> {
  try {
    const r = await run(argv);
    return r.code === 0 ? r.stdout.split('\n')[0].trim() : null;
  } catch {
    return null;
  }
}

/**
 * vhd-lib is Xen Orchestra's VHD library, used here as a peer only: installed
 * by the bench into the git-ignored bench/.peers (never a dependency of
 * vdisk). 0.7.2 is the newest release whose dependencies the registry here
 * can satisfy.
 */
export async function ensureVhdLib(install: boolean, log: (s: string) => void): Promise<string | null> {
  const pkg = join(PEERS_DIR, 'node_modules', 'vhd-lib', 'package.json');
  if (existsSync(pkg)) return null;
  if (!install) return 'vhd-lib is not installed in bench/.peers (run without --no-install)';
  log(`installing vhd-lib@${VHD_LIB_VERSION} into bench/.peers ...`);
  const r = await run(['npm', 'install', '--no-save', '--no-audit', '--no-fund', '--prefix', PEERS_DIR, `vhd-lib@${VHD_LIB_VERSION}`]);
  if (r.code !== 0 || !existsSync(pkg)) return `could not install vhd-lib@${VHD_LIB_VERSION}: ${r.stderr.trim().split('\n').pop()}`;
  return null;
}
