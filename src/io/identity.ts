import { readdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { hostFor } from './hosts.js';

/**
 * The one answer to "is this the same file?" — a backing chain looping back
 * (chain/open), commit's base and rebase's loop check (ops), add-cow's image
 * file against the add-cow file and its backing file (formats/add-cow).
 * Each host answers for its locations (io/host.ts): a local file's real
 * path, a URL's normal form.
 */

/** A location's identity: a local file's real path (links and `..` resolved), or the resolved path when there is no such file (memory stores, a file not created yet); a URL's normal form. */
export function fileIdentity(path: string): Promise<string> {
  return hostFor(path).identity(path);
}

/** Whether two locations name one file (see fileIdentity). */
export async function sameFile(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([fileIdentity(a), fileIdentity(b)]);
  return x === y;
}

/** When the file was last modified, or undefined when the host has no such file or cannot tell (memory stores). */
export async function modifiedTime(path: string): Promise<Date | undefined> {
  try {
    return (await hostFor(path).stat(path))?.mtime;
  } catch {
    return undefined;
  }
}

/**
 * The other regular files in the folder of `path` (links not followed):
 * where amend looks for images that name `path` as their parent. A folder
 * that cannot be listed gives none.
 */
export async function folderSiblings(path: string): Promise<string[]> {
  const dir = dirname(resolve(path));
  const self = resolve(path);
  try {
    return (await readdir(dir, { withFileTypes: true }))
      .filter((e) => e.isFile())
      .map((e) => join(dir, e.name))
      .filter((p) => p !== self);
  } catch {
    return [];
  }
}

/** Whether a file (or anything) exists under this name. */
export async function fileExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
