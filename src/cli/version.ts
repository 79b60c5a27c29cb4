import { findPackageJson } from '../io/local-misc.js';

/**
 * vdisk's version from its package.json, found by walking up from this
 * module: the CLI runs both as dist/src/cli/*.js and bundled as
 * dist/vdisk.cjs, at different depths below the package root.
 */
export function packageVersion(): string {
  return findPackageJson(import.meta.url, (pkg) => pkg.name === 'vdisk' && Boolean(pkg.version))?.version ?? 'unknown';
}
