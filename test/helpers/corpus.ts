import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (tests run from dist/test/..., sources live in test/...). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', ...(import.meta.url.includes('/dist/') ? ['..'] : []));
export const SHARED_CORPUS = resolve(REPO_ROOT, '..', 'shared', 'corpus');
export const CACHE_DIR = join(REPO_ROOT, '.cache');

let unpacked: string | undefined;

/**
 * Unpack ../shared/corpus once into the git-ignored .cache/corpus and return
 * that folder. Files keep their sub-folders, `.xz` dropped.
 */
export function corpusDir(): string {
  if (unpacked) return unpacked;
  const dest = join(CACHE_DIR, 'corpus');
  mkdirSync(dest, { recursive: true });
  execFileSync('sh', [join(SHARED_CORPUS, 'unpack.sh'), dest], { stdio: 'inherit' });
  unpacked = dest;
  return dest;
}

/** Path of one corpus file, e.g. corpusFile('go-vhd/win8.vhd'). */
export function corpusFile(rel: string): string {
  const p = join(corpusDir(), rel);
  if (!existsSync(p)) throw new Error(`corpus file missing: ${rel}`);
  return p;
}
