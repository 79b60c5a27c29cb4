import { BlockError } from '../../core/errors.js';
import type { CreateContext, Format, OpenContext } from '../types.js';
import { RawImage } from './image.js';

/**
 * Raw: the file is the disk, byte for byte. It has no header, so it probes
 * lowest and is never guessed for a backing file whose format is recorded.
 *
 * Honestly sized (docs/adding-a-format.md, "A role the format does not
 * have is absent"): no on-disk structure, no state beyond the store, nothing
 * to check or rewrite, so open and create are a few lines here and the
 * folder is this file and image.ts.
 */
const MAX_SIZE = Number.MAX_SAFE_INTEGER - (Number.MAX_SAFE_INTEGER % 512);

async function openRaw(ctx: OpenContext): Promise<RawImage> {
  return new RawImage(ctx.store, await ctx.store.size(), ctx.readOnly);
}

async function createRaw(ctx: CreateContext): Promise<void> {
  if (ctx.backing) throw new BlockError('unsupported', 'raw images cannot have a backing file', { path: ctx.path });
  const store = await ctx.openStore(ctx.path, { create: true });
  try {
    await store.truncate(ctx.size); // sparse: the host allocates nothing
    await store.flush();
  } finally {
    await store.close();
  }
}

export const rawFormat: Format = {
  name: 'raw',
  aliases: [],
  description: 'raw disk image (the file is the disk)',
  maxSize: MAX_SIZE,
  probe: () => 1,
  open: openRaw,
  create: createRaw,
  createOptions: [],
  // The file is the disk: its length is the virtual size whatever it holds
  // (holes are the host's business, not the image's).
  measure: ({ size }) => ({ required: size, fullyAllocated: size }),
  // Streamed, the file is the disk too: every byte in order, zeros included (a pipe has no holes).
  sequential: async ({ size }) => ({ sectorSize: 512, length: () => size, write: (_map, out) => out.disk(0, size) }),
};
