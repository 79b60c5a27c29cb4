import { realpath, stat } from 'node:fs/promises';
import { resolve } from 'node:path';

/**
 * The one answer to "is this the same file?" — a backing chain looping back
 * (chain/open), commit's base and rebase's loop check (ops), add-cow's image
 * file against the add-cow file and its backing file (formats/add-cow).
 * Asked here, in io/, because only io/ touches the file system; when stores
 * other than host files arrive, this is where identity is asked of their
 * host.
 */

/** A file's identity: its real path (links and `..` resolved), or the resolved path when the host has no such file (memory stores, a file not created yet). */
export async function fileIdentity(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return resolve(path);
  }
}

/** Whether two paths name one file (see fileIdentity). */
export async function sameFile(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([fileIdentity(a), fileIdentity(b)]);
  return x === y;
}

/** When the file was last modified, or undefined when the host has no such file (memory stores). */
export async function modifiedTime(path: string): Promise<Date | undefined> {
  try {
    return (await stat(path)).mtime;
  } catch {
    return undefined;
  }
}
