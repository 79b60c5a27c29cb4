import { BlockError } from '../../core/errors.js';
import type { AddCowState } from './state.js';

/*
 * add-cow's part of vdisk compact (ops/compact-holes.ts decides what goes):
 * holes punched in the image file, the bitmap left exactly as it is. Every
 * range punched reads as zeros afterwards, so with its bit still set a
 * sector that held zeros reads zeros as before, and a sector whose bit is
 * clear is never read from the image file at all (docs/formats/add-cow.md).
 * Nothing in the add-cow file changes; a crash at any moment leaves each
 * range punched or not, both reading the same. (Clearing bits instead
 * would hand the sectors to the backing file: content would change
 * wherever it does not read zeros, and the bitmap write would need the
 * write-order rules of state.ts.)
 */

export function punchRefusalAddCow(state: AddCowState): string | undefined {
  if (state.imageStore.punchHole) return undefined;
  return 'the image file\'s store cannot punch holes (vdisk punches them through its native addon, on Linux local files only): no space can be given back here';
}

export async function hostAllocatedAddCow(state: AddCowState): Promise<number | undefined> {
  const store = state.imageStore;
  const size = await store.size();
  const ranges = await store.allocation?.(0, size);
  if (!ranges) return undefined;
  return ranges.reduce((n, r) => n + (r.data ? r.length : 0), 0);
}

export async function punchHolesAddCow(state: AddCowState, ranges: readonly { offset: number; length: number }[]): Promise<void> {
  const punch = state.imageStore.punchHole;
  if (!punch) throw new BlockError('unsupported', punchRefusalAddCow(state)!, { path: state.path, imageFile: state.imagePath });
  // Under the layer's lock: no flush or resize runs between the caller's reads and the punches.
  await state.meta.run(async () => {
    for (const r of ranges) {
      // Only within the disk: bytes past the virtual size are the image file's own business (resize grows into them).
      if (r.offset < 0 || r.length <= 0 || r.offset + r.length > state.header.size) {
        throw new BlockError('invalid-argument', `hole ${r.offset}+${r.length} lies outside the disk (${state.header.size} bytes)`, { path: state.path });
      }
      await punch.call(state.imageStore, r.offset, r.length);
    }
  });
}
