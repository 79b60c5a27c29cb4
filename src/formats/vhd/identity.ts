import { randomGuid, uuidToString } from '../../core/guid.js';
import type { IdentityChange } from '../types.js';
import { encodeFooter } from './footer.js';
import type { VhdState } from './state.js';

/*
 * A new Unique Id (VHD spec 2006, "Hard Disk Footer Format": the UUID that
 * "is used to associate a parent hard disk image with its differencing hard
 * disk images") — what Set-VHD -ResetDiskIdentifier does to a VHD. Only the
 * footer holds it, in two copies: the one at the end, which readers take,
 * is written and flushed first (one sector: the commit point), then the copy
 * at offset 0. A crash in between leaves the new id at the end and the old
 * in the copy, which open reports and `check -r all` rewrites.
 */
export async function resetIdentityVhd(state: VhdState): Promise<IdentityChange[]> {
  const old = uuidToString(state.footer.uniqueId);
  state.footer = { ...state.footer, uniqueId: randomGuid() };
  const bytes = encodeFooter(state.footer);
  await state.store.write(state.footerOffset, bytes);
  await state.store.flush();
  if (state.header) {
    // Dynamic and differencing disks keep a copy at 0 (a fixed disk's data starts there).
    await state.store.write(0, bytes);
    await state.store.flush();
  }
  return [{ field: 'uuid', old, new: uuidToString(state.footer.uniqueId) }];
}
