// Entry point of the CLI bundle (scripts/bundle.mjs → dist/vdisk.cjs, run by bin/vdisk.cjs).
import { main } from './main.js';

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
  // Every command has finished its work (serve returns once its server has
  // closed). Leaving now skips Node's teardown of the heap and the thread
  // pool, ~1-1.5 ms of a 0.18 s convert; 'exit' handlers still run. Output
  // still queued (stdout to a pipe is asynchronous on some platforms) gets
  // the natural exit instead, so nothing printed is lost.
  if (process.stdout.writableLength === 0 && process.stderr.writableLength === 0) process.exit(code);
});
