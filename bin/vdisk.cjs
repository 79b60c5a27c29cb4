#!/usr/bin/env node
'use strict';
// Launcher: runs the one-file CLI bundle, dist/vdisk.cjs (scripts/bundle.mjs
// says why one file), compiled with a V8 code cache. Start-up of a command,
// measured with `perf stat -r 20 node bin/vdisk.cjs --version`: ES module
// bundle 41 ms, CommonJS bundle 34 ms, with the code cache 28 ms
// (`node -e 0`: 19 ms).
//
// Where the cache lives: the build makes one beside the bundle
// (dist/vdisk.cjs.v8-cache, shipped in the package) by running the demo
// with VDISK_CODE_CACHE_OUT naming that file. V8 takes a cache only from
// the same source and the same V8 (it checks both); when the shipped one is
// missing or refused (another Node version), the cache is kept in the
// user's cache folder ($XDG_CACHE_HOME/vdisk, else ~/.cache/vdisk), one
// file per Node version, written after the first run that lacked it. The
// package's own folder (node_modules/vdisk) is never written to: it may be
// read-only, shared, or checked against its tarball's contents.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const vm = require('node:vm');
const { createRequire, wrap } = require('node:module');

const root = path.join(__dirname, '..');
const file = path.join(root, 'dist', 'vdisk.cjs');
if (!fs.existsSync(file) && fs.existsSync(path.join(root, 'src', 'cli', 'run.ts'))) {
  // A clone that has not been built yet (`npm ci` runs no build: an install
  // script would make every installer of the package approve it, npm 11).
  process.stderr.write('vdisk: first run in a clone: building (npm run build)...\n');
  require('node:child_process').execFileSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['run', '--silent', 'build'], {
    cwd: root,
    stdio: ['ignore', process.stderr, process.stderr],
  });
}
const source = fs.readFileSync(file, 'utf8');

const read = (f) => {
  try {
    return fs.readFileSync(f);
  } catch {
    return undefined; // no cache there (yet)
  }
};
const compile = (cachedData) => new vm.Script(wrap(source), { filename: file, cachedData });

const out = process.env.VDISK_CODE_CACHE_OUT;
let script;
let writeTo;
if (out) {
  script = compile(undefined);
  writeTo = out;
} else {
  script = compile(read(`${file}.v8-cache`));
  if (script.cachedDataRejected !== false) {
    const home = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
    const mine = path.join(home, 'vdisk', `cli-${process.version}-${process.arch}-${source.length}.v8-cache`);
    const cached = read(mine);
    script = compile(cached);
    if (cached === undefined || script.cachedDataRejected) writeTo = mine;
  }
}
if (writeTo) {
  process.once('exit', () => {
    // After the run, so the cache also holds the functions the command compiled.
    const tmp = `${writeTo}.${process.pid}.tmp`;
    try {
      fs.mkdirSync(path.dirname(writeTo), { recursive: true });
      fs.writeFileSync(tmp, script.createCachedData());
      fs.renameSync(tmp, writeTo);
    } catch {
      fs.rmSync(tmp, { force: true });
    }
  });
}
const mod = { exports: {} };
script.runInThisContext()(mod.exports, createRequire(file), mod, file, path.dirname(file));
