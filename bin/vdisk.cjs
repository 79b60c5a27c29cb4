#!/usr/bin/env node
'use strict';
// Launcher: runs the one-file CLI bundle, dist/vdisk.cjs (scripts/bundle.mjs
// says why one file), compiled with a V8 code cache kept beside it. Start-up
// of a command, measured with `perf stat -r 20 node bin/vdisk.cjs --version`:
// ES module bundle 41 ms, CommonJS bundle 34 ms, with the code cache 28 ms
// (`node -e 0`: 19 ms). The cache is written by the build and again by any
// run that finds it missing or stale (V8 checks it against the source and
// its own version); a read-only install simply runs without it.
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const { createRequire, wrap } = require('node:module');

const file = path.join(__dirname, '..', 'dist', 'vdisk.cjs');
const cacheFile = `${file}.v8-cache`;
const source = fs.readFileSync(file, 'utf8');
let cachedData;
try {
  cachedData = fs.readFileSync(cacheFile);
} catch {
  // no cache yet
}
const script = new vm.Script(wrap(source), { filename: file, cachedData });
if (cachedData === undefined || script.cachedDataRejected) {
  process.once('exit', () => {
    // After the run, so the cache also holds the functions the command compiled.
    const tmp = `${cacheFile}.${process.pid}.tmp`;
    try {
      fs.writeFileSync(tmp, script.createCachedData());
      fs.renameSync(tmp, cacheFile);
    } catch {
      fs.rmSync(tmp, { force: true });
    }
  });
}
const mod = { exports: {} };
script.runInThisContext()(mod.exports, createRequire(file), mod, file, path.dirname(file));
