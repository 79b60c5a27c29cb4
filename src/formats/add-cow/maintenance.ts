import { BlockError } from '../../core/errors.js';
import { readOnlyError } from '../../core/request.js';
import { sameFile } from '../../io/identity.js';
import { readExact } from '../../io/store.js';
import type { BackingTarget } from '../types.js';
import { BACKING_FIELD_OFFSET, SECTOR, SIZE_FIELD_OFFSET, encodeBackingField, encodeSizeField } from './header.js';
import { nameToStore } from './paths.js';
import { MAX_SIZE, backingRefOf, type AddCowState } from './state.js';

/**
 * Whole-image metadata rewrites of an add-cow layer: resize and set-backing
 * (rebase -u), and the bitmap-tail repair check uses. Each runs under the
 * state's lock and keeps the file valid after a crash at any step.
 */

export async function resizeAddCow(state: AddCowState, newSize: number, options: { shrink?: boolean }): Promise<void> {
  await state.meta.run(async () => {
    if (state.readOnly) throw readOnlyError({ path: state.path, operation: 'resize' });
    if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize % SECTOR !== 0) {
      throw new BlockError('invalid-argument', `new size ${newSize} is not a multiple of ${SECTOR}`, { path: state.path });
    }
    if (newSize > MAX_SIZE) throw new BlockError('out-of-range', `new size ${newSize} exceeds the add-cow limit of ${MAX_SIZE} bytes`, { path: state.path });
    if (newSize === state.size) return;
    if (newSize < state.size && !options.shrink) {
      throw new BlockError('invalid-argument', 'shrinking needs --shrink (data past the new end is lost)', { path: state.path });
    }
    // Persist pending bits in the old layout first, so the steps below start from a clean state.
    await state.flushLocked();
    if (newSize > state.size) await grow(state, newSize);
    else await shrink(state, newSize);
  });
}

/**
 * Grow: image file first (durable), then the bitmap's new zero bytes, then
 * the size field. A crash before the size field leaves the old, valid image
 * with a longer image file and bitmap tail, both ignored.
 */
async function grow(state: AddCowState, newSize: number): Promise<void> {
  if ((await state.imageStore.size()) < newSize) {
    await state.imageStore.truncate(newSize);
    await state.imageStore.flush();
  }
  await clearTailOnDisk(state);
  // Bytes past the bitmap may be left from an interrupted shrink, with bits still set:
  // cut them off first, so the new part of the bitmap is all clear.
  await state.store.truncate(state.bitmapEnd);
  state.bitmap.resize(newSize / SECTOR);
  await state.store.truncate(state.bitmapEnd);
  await state.store.flush();
  await writeSize(state, newSize);
}

/**
 * Shrink: the size field is written and made durable first, so a crash never
 * leaves a header claiming more than the files hold, nor bits cleared under
 * the old size. Then the bits sharing the new last byte are cleared and the
 * files cut.
 */
async function shrink(state: AddCowState, newSize: number): Promise<void> {
  await writeSize(state, newSize);
  state.bitmap.resize(newSize / SECTOR);
  await clearTailOnDisk(state);
  await state.store.truncate(state.bitmapEnd);
  await state.imageStore.truncate(newSize);
  await state.imageStore.flush();
  await state.store.flush();
}

async function writeSize(state: AddCowState, newSize: number): Promise<void> {
  await state.store.write(SIZE_FIELD_OFFSET, encodeSizeField(newSize));
  await state.store.flush();
  state.header = { ...state.header, size: newSize };
  state.data.size = newSize;
}

/**
 * Rewrite the last bitmap byte on disk with the bits past the last sector
 * cleared. Read from disk, not memory: memory may hold bits whose data is
 * not durable yet. (Also check's repair of stray tail bits.)
 */
export async function clearTailOnDisk(state: AddCowState): Promise<void> {
  const sectors = state.bitmap.sectors;
  if (sectors % 8 === 0) return;
  const at = state.bitmapEnd - 1;
  const b = await readExact(state.store, at, new Uint8Array(1), 'add-cow bitmap');
  const masked = b[0] & ((1 << sectors % 8) - 1);
  if (masked !== b[0]) await state.store.write(at, new Uint8Array([masked]));
}

/** Rewrite the backing name field only (rebase -u); `parent` null removes the backing. */
export async function setBackingAddCow(state: AddCowState, parent: BackingTarget | null): Promise<void> {
  await state.meta.run(async () => {
    if (state.readOnly) throw readOnlyError({ path: state.path, operation: 'set backing' });
    if (parent && (await sameFile(parent.absolutePath, state.imagePath))) {
      throw new BlockError('invalid-argument', 'the backing file cannot be the image file', { path: state.path });
    }
    const name = parent ? nameToStore(state.path, parent.absolutePath) : '';
    await state.store.write(BACKING_FIELD_OFFSET, encodeBackingField(name));
    await state.store.flush();
    state.header = { ...state.header, backingFile: name };
    state.backing = backingRefOf(name);
  });
}
