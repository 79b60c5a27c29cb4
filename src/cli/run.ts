// Entry point of the CLI bundle (scripts/bundle.mjs → dist/vdisk.mjs).
import { main } from './main.js';

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
