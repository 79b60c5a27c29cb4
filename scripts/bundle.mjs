// Bundles the CLI into one CommonJS file, dist/vdisk.cjs, which bin/vdisk.cjs
// loads (with a V8 code cache: see there).
//
// Why: Node resolves, reads and compiles every ES module separately.
// `vdisk info` on a small image took ~79 ms from the ES modules tsc writes
// (~60 of them plus commander), ~38 ms from this bundle and its code cache,
// against ~19 ms for `node -e 0` (perf stat -r 10, this machine, without
// NODE_EXTRA_CA_CERTS). On a convert of 1 GiB that finishes in 0.2-0.3 s
// the difference is a large share of the whole (BENCHMARKS.md). CommonJS
// rather than an ES module:
// Node's CommonJS loader is lighter (~7 ms less here) and lets the launcher
// hand V8 a code cache. The library (`dist/src`) is not bundled: importers
// get the plain ES modules tsc writes.
//
// Left outside the bundle, loaded at run time from node_modules:
// - cli-progress: loaded the same way, only when a progress bar is shown;
// - @azure/storage-blob: imported dynamically (io/azure-location.ts), only
//   when a location is an Azure page blob.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

// commander requires node:child_process when it loads (and with it net,
// stream and more: ~3.5 ms of every start-up) but uses it only to run
// executable subcommands, which vdisk has none of. The bundle gets a stand-in
// that loads the real module on first use.
const lazyChildProcess = {
  name: 'lazy-child-process',
  setup(b) {
    b.onResolve({ filter: /^(node:)?child_process$/ }, (args) => (args.namespace === 'lazy' ? undefined : { path: 'child_process', namespace: 'lazy' }));
    b.onLoad({ filter: /.*/, namespace: 'lazy' }, () => ({
      contents: "let real; module.exports = new Proxy({}, { get: (_, key) => (real ??= require('node:child_process'))[key] });",
      loader: 'js',
    }));
  },
};

const outfile = join(root, 'dist/vdisk.cjs');
await build({
  entryPoints: [join(root, 'src/cli/run.ts')],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  sourcemap: true,
  external: ['cli-progress', '@azure/storage-blob'],
  // The sources are ES modules and find files next to them through
  // import.meta.url, which CommonJS lacks: give the bundle its own URL.
  define: { 'import.meta.url': '__vdiskBundleUrl' },
  banner: { js: "const __vdiskBundleUrl = require('node:url').pathToFileURL(__filename).href;" },
  logLevel: 'warning',
  plugins: [lazyChildProcess],
});

// A fresh code cache for the new bundle (bin/vdisk.cjs writes it on exit,
// with every function the run compiled). The demo runs create, io, info,
// map, convert and compare over VHDX, VHD, add-cow and raw, so the cache
// holds most of what a command runs, not only the argument parser: a
// convert then reaches its first read ~1.5 ms sooner than with a cache made
// by `--help` (431 KB of cache against 158 KB; loading it costs ~0.4 ms more).
// VDISK_CODE_CACHE_OUT tells the launcher to write it here (it never writes
// beside the bundle on its own: see bin/vdisk.cjs); the package ships it.
const cacheFile = `${outfile}.v8-cache`;
const env = { ...process.env, VDISK_CODE_CACHE_OUT: cacheFile };
rmSync(cacheFile, { force: true });
try {
  execFileSync(process.execPath, [join(root, 'bin/vdisk.cjs'), 'demo'], { stdio: 'ignore', env });
} catch {
  // No temporary folder to run the demo in: a cache of the parser is still worth having.
  rmSync(cacheFile, { force: true });
  execFileSync(process.execPath, [join(root, 'bin/vdisk.cjs'), '--help'], { stdio: 'ignore', env });
}
