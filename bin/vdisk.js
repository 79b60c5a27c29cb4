#!/usr/bin/env node
// Thin launcher so `npx vdisk` works from the checkout and from an install.
import { main } from '../dist/src/cli/main.js';
main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
