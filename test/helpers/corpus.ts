import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (tests run from dist/test/..., sources live in test/...). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', ...(import.meta.url.includes('/dist/') ? ['..'] : []));
/**
 * The corpus folder: ../shared/corpus next to the checkout, or $VDISK_CORPUS
 * for a checkout that does not sit there (a git worktree in a sub-folder).
 */
export const SHARED_CORPUS = process.env.VDISK_CORPUS ? resolve(process.env.VDISK_CORPUS) : resolve(REPO_ROOT, '..', 'shared', 'corpus');
export const CACHE_DIR = join(REPO_ROOT, '.cache');

let unpacked: string | undefined;

/**
 * Unpack the corpus (SHARED_CORPUS) once into the git-ignored .cache/corpus and return
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
