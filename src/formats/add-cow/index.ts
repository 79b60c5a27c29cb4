import type { Format } from '../types.js';
import { CREATE_OPTIONS, createAddCow } from './create.js';
import { hasMagic } from './header.js';
import { measureAddCow } from './measure.js';
import { openAddCow } from './open.js';
import { MAX_SIZE } from './state.js';

/** add-cow (docs/formats/add-cow.md): a COW bitmap over a raw image file, from QEMU's add-cow v4 patch. */
export const addCowFormat: Format = {
  name: 'add-cow',
  aliases: ['addcow'],
  description: 'add-cow: copy-on-write bitmap over a raw image file (QEMU add-cow v4 patch)',
  maxSize: MAX_SIZE,
  // Magic alone decides, even on a short file or a wrong version: open then fails clearly instead of the file passing as raw.
  probe: ({ head }) => (hasMagic(head) ? 100 : 0),
  open: openAddCow,
  create: createAddCow,
  measure: measureAddCow,
  createOptions: CREATE_OPTIONS,
};
