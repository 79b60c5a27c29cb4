#!/usr/bin/env node
// Thin launcher so `npx vdisk` works from the checkout and from an install.
// It loads the one-file CLI bundle that `npm run build` writes
// (scripts/bundle.mjs says why); the library lives in dist/src.
import '../dist/vdisk.mjs';
