// Bundles the CLI into one file, dist/vdisk.mjs, which bin/vdisk.js loads.
//
// Why: Node resolves, reads and compiles every ES module separately. The CLI
// spread over ~60 modules plus commander took ~110 ms to reach its first
// line of work here, against ~50 ms for `node -e 0`; as one file it takes
// ~70 ms. On a convert of 1 GiB that finishes in 0.2-0.3 s this is a large
// share of the whole (BENCHMARKS.md). The library (`dist/src`) is not
// bundled: importers get the plain modules tsc writes.
//
// Left outside the bundle, loaded at run time from node_modules:
// - fs-ext: a native addon (optional), loaded by io/file-store.ts with
//   createRequire, which esbuild leaves alone;
// - cli-progress: loaded the same way, only when a progress bar is shown.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

await build({
  entryPoints: [join(root, 'src/cli/run.ts')],
  outfile: join(root, 'dist/vdisk.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: true,
  external: ['fs-ext', 'cli-progress'],
  // commander is CommonJS and calls require() for Node built-ins; an ES
  // module has no require, so give the bundle one.
  banner: { js: "import { createRequire as __vdiskRequire } from 'node:module'; const require = __vdiskRequire(import.meta.url);" },
  logLevel: 'warning',
});
