import { BlockError, isBlockError } from '../../core/errors.js';
import { checkRange } from '../../core/u64.js';
import { checkContained } from '../../io/contain.js';
import { sameFile } from '../../io/identity.js';
import type { Store } from '../../io/store.js';
import { readExact } from '../../io/store.js';
import type { OpenContext } from '../types.js';
import { Bitmap } from './bitmap.js';
import { HEADER_SIZE, SECTOR, bitmapBytes, decodeHeader } from './header.js';
import { AddCowImage } from './image.js';
import { resolveName } from './paths.js';
import { AddCowState, MAX_SIZE } from './state.js';

/**
 * The image file is opened as raw, always: its bytes are the disk, never
 * probed. Its name is the add-cow author's: it must stay inside the add-cow
 * file's folder (or an allowed one) — opened read-write by `io` or `resize`,
 * a name like `/home/me/thesis.odt` would otherwise be overwritten and
 * truncated. Read-write only when the add-cow file itself is.
 */
async function openImageFile(ctx: OpenContext, name: string): Promise<Store> {
  const path = resolveName(name, ctx.path);
  await checkContained(path, ctx.path, 'add-cow image file', name, ctx.options.allowPaths);
  if (await sameFile(path, ctx.path)) {
    throw new BlockError('corrupt', 'add-cow image file names the add-cow file itself', { path: ctx.path });
  }
  try {
    return await ctx.openStore(path, { readOnly: ctx.readOnly });
  } catch (e) {
    // context.path is the image file, not the add-cow file: chain/ must not take this for a missing backing file.
    if (isBlockError(e, 'not-found')) {
      throw new BlockError('not-found', `add-cow image file '${name}' not found`, { path, image: ctx.path }, { cause: e });
    }
    throw e;
  }
}

/** Header, then the whole bitmap (bounds first), then the image file, which must hold the virtual size. */
export async function openAddCow(ctx: OpenContext): Promise<AddCowImage> {
  const fileSize = await ctx.store.size();
  const head = await readExact(ctx.store, 0, new Uint8Array(Math.min(fileSize, HEADER_SIZE)), 'add-cow header');
  const header = decodeHeader(head, ctx.path, MAX_SIZE);
  const bmLen = bitmapBytes(header.size);
  // Bounds first: the bitmap buffer is sized by an on-disk field.
  checkRange(HEADER_SIZE, bmLen, fileSize, 'add-cow bitmap', ctx.path);
  const onDisk = await readExact(ctx.store, HEADER_SIZE, new Uint8Array(bmLen), 'add-cow bitmap');
  const sectors = header.size / SECTOR;
  const stray = Bitmap.hasStrayTail(onDisk, sectors);
  const bitmap = new Bitmap(sectors, onDisk);
  const imageStore = await openImageFile(ctx, header.imageFile);
  try {
    const imageSize = await imageStore.size();
    if (imageSize < header.size) {
      throw new BlockError(
        'corrupt',
        `add-cow image file is ${imageSize} bytes, smaller than the virtual size ${header.size}`,
        { path: ctx.path, imageFile: imageStore.path },
      );
    }
    return new AddCowImage(new AddCowState(ctx.store, imageStore, header, bitmap, imageStore.path, ctx.readOnly, stray));
  } catch (e) {
    await imageStore.close().catch(() => {});
    throw e;
  }
}
