import { basename } from 'node:path';
import { BlockError, isBlockError } from '../../core/errors.js';
import { checkRange } from '../../core/u64.js';
import type { Store } from '../../io/store.js';
import { readExact } from '../../io/store.js';
import type { CreateContext, Format, Image, OpenContext } from '../types.js';
import { Bitmap } from './bitmap.js';
import { HEADER_SIZE, SECTOR, bitmapBytes, decodeHeader, encodeHeader, hasMagic } from './header.js';
import { AddCowImage } from './image.js';
import { sameFile } from '../../io/identity.js';
import { nameToStore, resolveName } from './paths.js';
import { measureAddCow } from './measure.js';

/**
 * add-cow (docs/formats/add-cow.md): copy-on-write for a raw image file, from
 * the add-cow v4 patch (QEMU, 2011, never merged). The whole bitmap is kept in
 * memory, one byte per 4 KiB of disk, so the size is capped at 2 TiB
 * (a 512 MiB bitmap).
 */
const MAX_SIZE = 2 ** 41;

/** The image file is opened as raw, always: its bytes are the disk, never probed. */
async function openImageFile(ctx: OpenContext, name: string): Promise<Store> {
  const path = resolveName(name, ctx.path);
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

async function open(ctx: OpenContext): Promise<Image> {
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
    return new AddCowImage(ctx.store, imageStore, header, bitmap, imageStore.path, ctx.readOnly, MAX_SIZE, stray);
  } catch (e) {
    await imageStore.close().catch(() => {});
    throw e;
  }
}

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

async function create(ctx: CreateContext): Promise<void> {
  const size = ctx.size;
  if (!Number.isSafeInteger(size) || size < 0 || size % SECTOR !== 0) {
    throw new BlockError('invalid-argument', `add-cow size ${size} is not a multiple of ${SECTOR}`, { path: ctx.path });
  }
  if (size > MAX_SIZE) throw new BlockError('out-of-range', `add-cow size ${size} exceeds ${MAX_SIZE} bytes`, { path: ctx.path });
  const imageName = ctx.options.image_file ?? `${basename(ctx.path)}.raw`;
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

export const addCowFormat: Format = {
  name: 'add-cow',
  aliases: ['addcow'],
  description: 'add-cow: copy-on-write bitmap over a raw image file (QEMU add-cow v4 patch)',
  maxSize: MAX_SIZE,
  // Magic alone decides, even on a short file or a wrong version: open then fails clearly instead of the file passing as raw.
  probe: ({ head }) => (hasMagic(head) ? 100 : 0),
  open,
  create,
  measure: measureAddCow,
  createOptions: [
    {
      name: 'image_file',
      type: 'string',
      description: 'raw file receiving written sectors, relative to the add-cow file (default <image>.raw); created sparse if missing',
    },
  ],
};
