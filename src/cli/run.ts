// Entry point of the CLI bundle (scripts/bundle.mjs → dist/vdisk.cjs, run by bin/vdisk.cjs).
import { main } from './main.js';

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
