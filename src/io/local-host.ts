import { realpath, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, relative, resolve, sep } from 'node:path';
import { openFileStore } from './file-store.js';
import type { Host } from './host.js';
import { fileHost } from './staging.js';

/** The real path of `p`, or null when the host has no such file (a missing file). */
async function real(p: string): Promise<string | null> {
  try {
    return await realpath(p);
  } catch {
    return null;
  }
}

function inside(path: string, root: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!isAbsolute(rel) && rel !== '..' && !rel.startsWith('..' + sep));
}

/** The local file system: every location that names no other host. */
export const localHost: Host = {
  name: 'local file',
  open: openFileStore,
  paths: {
    isAbsolute,
    absolute: (location) => resolve(location),
    dirname: (location) => dirname(resolve(location)),
    basename: (location) => basename(location),
    resolve: (folder, name) => resolve(folder, name),
    relative: (folder, target) => relative(folder, resolve(target)),
  },
  async identity(location) {
    // The real path: links and `..` resolved; the resolved path when there is no such file (yet).
    return (await real(location)) ?? resolve(location);
  },
  async stat(location) {
    try {
      const st = await stat(location);
      return { size: st.size, mtime: st.mtime, allocated: st.blocks * 512 };
    } catch {
      return undefined;
    }
  },
  files: fileHost,
  async contained(target, recorder, allowed) {
    // Links are followed before the check: a link inside the folder that leads out of it is refused like `../x`.
    const realTarget = await real(target);
    if (realTarget === null) return { inside: true, real: null };
    const folders = [dirname(resolve(recorder)), ...allowed.map((p) => resolve(p))];
    const roots = await Promise.all(folders.map(async (f) => (await real(f)) ?? f));
    return { inside: roots.some((r) => inside(realTarget, r)), real: realTarget };
  },
};
