// Builds vdisk's optional native addon (native/copy.c; src/io/native.ts says
// what it is for) with node-gyp. Run by `npm install` and `npm run build`.
//
// Optional by design: without a C compiler or Node's headers the build
// warns and vdisk runs its JavaScript paths, which give the same results.
// Set VDISK_NATIVE=required to make a failed build an error (CI does not
// need to: a test there checks that the addon loads).
//
// node-gyp is the copy npm ships (npm names it in npm_config_node_gyp for
// scripts). Node's headers are taken from beside the running node
// (<prefix>/include/node), so no download is needed; where they are not
// there, node-gyp falls back to its own ways (npm's nodedir setting, or a
// download).
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = join(root, 'native');
const output = join(dir, 'build/Release/vdisk_native.node');
const sources = ['addon.c', 'copy.c', 'read.c', 'lock.c', 'seek.c', 'punch.c', 'send.c', 'binding.gyp'].map((f) => join(dir, f));
const required = process.env.VDISK_NATIVE === 'required';

const mtime = (f) => statSync(f).mtimeMs;
if (existsSync(output) && sources.every((s) => mtime(s) <= mtime(output))) process.exit(0);

function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(dirname(process.execPath), '../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'),
  ];
  return candidates.find((c) => c && existsSync(c));
}

const gyp = nodeGyp();
const prefix = join(dirname(process.execPath), '..');
const args = ['rebuild', '--directory', dir];
if (existsSync(join(prefix, 'include/node/node_api.h'))) args.push(`--nodedir=${prefix}`);
try {
  if (!gyp) throw new Error('node-gyp not found (it comes with npm)');
  execFileSync(process.execPath, [gyp, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
} catch (e) {
  const detail = e.stderr?.toString().trim().split('\n').slice(-3).join('\n') || e.message;
  const msg = `vdisk: the native addon was not built; the JavaScript paths will be used.\n${detail}`;
  if (required) {
    console.error(msg);
    process.exit(1);
  }
  console.warn(msg);
}
