import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/*
 * Small local file-system needs of the CLI that are not images (the
 * project keeps file-system access in src/io/): a scratch folder for the
 * demo, and the package's own package.json for --version.
 */

/** A new empty folder under the system's temporary folder; `path(name)` names a file in it, `remove()` deletes it and all it holds. */
export async function makeScratchDir(prefix: string): Promise<{ dir: string; path: (name: string) => string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, path: (name) => join(dir, name), remove: () => rm(dir, { recursive: true, force: true }) };
}

interface PackageJson {
  name?: string;
  version?: string;
}

/**
 * The first package.json `accept` takes in the folder of the module at
 * `moduleUrl` or the few above it (the CLI runs both as dist/src/cli/*.js
 * and bundled as dist/vdisk.cjs, at different depths below the package root).
 */
export function findPackageJson(moduleUrl: string, accept: (pkg: PackageJson) => boolean): PackageJson | undefined {
  let dir = dirname(fileURLToPath(moduleUrl));
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as PackageJson;
      if (accept(pkg)) return pkg;
    } catch {
      // not here: keep walking up
    }
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return undefined;
}
