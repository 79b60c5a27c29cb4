import { baseName } from '../../io/hosts.js';
import { BlockError, isBlockError } from '../../core/errors.js';
import { sameFile } from '../../io/identity.js';
import type { Store } from '../../io/store.js';
import type { CreateContext, CreateOption } from '../types.js';
import { HEADER_SIZE, SECTOR, bitmapBytes, encodeHeader } from './header.js';
import { nameToStore, resolveName } from './paths.js';
import { MAX_SIZE } from './state.js';

export const CREATE_OPTIONS: readonly CreateOption[] = [
  {
    name: 'image_file',
    type: 'string',
    description: 'raw file receiving written sectors, relative to the add-cow file (default <image>.raw); created sparse if missing',
    default: '<image>.raw',
  },
];

/**
 * An existing image file must be raw: refuse files another vdisk format
 * claims. The caller's probe asks the registry (which imports this format,
 * so this module cannot import it).
 */
async function checkExistingImageFile(store: Store, size: number, probe: CreateContext['probe']): Promise<void> {
  const fileSize = await store.size();
  if (fileSize < size) {
    throw new BlockError('invalid-argument', `image file is ${fileSize} bytes, smaller than the virtual size ${size}`, { path: store.path });
  }
  const fmt = await probe(store);
  if (fmt !== 'raw') {
    throw new BlockError('invalid-argument', `image file is a ${fmt} image; add-cow needs a raw image file`, { path: store.path });
  }
}

/**
 * Header + an all-clear bitmap, over an existing raw image file (checked) or
 * a new sparse one of the virtual size.
 */
export async function createAddCow(ctx: CreateContext): Promise<void> {
  const size = ctx.size;
  if (!Number.isSafeInteger(size) || size < 0 || size % SECTOR !== 0) {
    throw new BlockError('invalid-argument', `add-cow size ${size} is not a multiple of ${SECTOR}`, { path: ctx.path });
  }
  if (size > MAX_SIZE) throw new BlockError('out-of-range', `add-cow size ${size} exceeds ${MAX_SIZE} bytes`, { path: ctx.path });
  const imageName = ctx.options.image_file ?? `${baseName(ctx.path)}.raw`;
  if (!imageName) throw new BlockError('invalid-argument', 'image_file must not be empty', { path: ctx.path });
  const imagePath = resolveName(imageName, ctx.path);
  if (await sameFile(imagePath, ctx.path)) {
    throw new BlockError('invalid-argument', 'image_file cannot be the add-cow file itself', { path: ctx.path });
  }
  if (ctx.backing && (await sameFile(ctx.backing.absolutePath, imagePath))) {
    throw new BlockError('invalid-argument', 'image_file cannot be the backing file (writes would change the backing)', { path: ctx.path });
  }
  // Everything that can fail on input is checked before a byte is written.
  const header = encodeHeader({
    backingFile: ctx.backing ? nameToStore(ctx.path, ctx.backing.absolutePath) : '',
    imageFile: nameToStore(ctx.path, imagePath),
    size,
  });
  let exists = true;
  try {
    const existing = await ctx.openStore(imagePath, { readOnly: true });
    try {
      await checkExistingImageFile(existing, size, ctx.probe);
    } finally {
      await existing.close();
    }
  } catch (e) {
    if (!isBlockError(e, 'not-found')) throw e;
    exists = false;
  }
  const store = await ctx.openStore(ctx.path, { create: true });
  try {
    if (!exists) {
      const img = await ctx.openStore(imagePath, { create: true });
      try {
        await img.truncate(size); // sparse
        await img.flush();
      } finally {
        await img.close();
      }
    }
    await store.write(0, header);
    await store.truncate(HEADER_SIZE + bitmapBytes(size)); // an all-clear bitmap
    await store.flush();
  } finally {
    await store.close();
  }
}
