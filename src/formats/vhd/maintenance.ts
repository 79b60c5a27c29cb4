import { BlockError } from '../../core/errors.js';
import type { BackingTarget, ResizeOptions } from '../types.js';
import { ENTRIES_PER_SECTOR, UNALLOCATED, encodeBat, encodeBatSector } from './bat.js';
import { clearBatmap } from './batmap.js';
import { layoutLocators, parentRecord, vhdNow } from './create.js';
import { encodeDynamicHeader } from './dynamic-header.js';
import { flattenVhd } from './flatten.js';
import { FOOTER_SIZE, encodeFooter, geometryForSize, SECTOR } from './footer.js';
import { readLocators } from './parent-locator.js';
import { bitmapBytes } from './sector-bitmap.js';
import { MAX_FIXED_SIZE, MAX_SIZE, sizeLimitMessage, type VhdState } from './state.js';


/**
 * resize and setBacking. Each keeps the file valid at every step by
 * writing new structures where nothing points yet (the end of the file) and
 * switching to them with one sector write (the dynamic header or the footer).
 */

/** Rewrite both footer copies (end first; either one alone is a valid image). */
async function writeFooters(state: VhdState): Promise<void> {
  const bytes = encodeFooter(state.footer);
  await state.store.write(state.footerOffset, bytes);
  if (state.header) await state.store.write(0, bytes);
  await state.store.flush();
}

/**
 * Run `grow`, which writes past the footer at the end (state.footerOffset)
 * and may move it. If it fails (a full disk: ENOSPC, EFBIG), the file may
 * end in half-written structures with no footer after them — openable
 * through the copy at offset 0, but Hyper-V wants the footer at the end. So
 * the footer as it was goes back to the old end and the file is cut after
 * it (footer first, as in check's repair), nothing having pointed into what
 * is cut. Then the original error is reported, also when the restore fails
 * (the copy at offset 0 still opens the file, and check -r all puts the end
 * footer back).
 */
async function extending(state: VhdState, grow: () => Promise<void>): Promise<void> {
  const end = state.footerOffset;
  const footer = { ...state.footer };
  try {
    await grow();
  } catch (e) {
    try {
      state.footer = footer;
      state.footerOffset = end;
      const bytes = encodeFooter(footer);
      try {
        await state.store.write(end, bytes);
        await state.store.flush();
        await state.store.truncate(end + FOOTER_SIZE);
      } catch {
        // The footer's sector may be a hole that needs space the disk has not got: cut first, then write it.
        await state.store.truncate(end + FOOTER_SIZE);
        await state.store.write(end, bytes);
      }
      await state.store.flush();
    } catch {
      /* the original error is the one to report */
    }
    throw e;
  }
}

/**
 * Change the virtual size. A differencing disk has its parent's size (VHD
 * spec 2006, "Hard Disk Footer"), so it only follows a parent that has
 * already grown (`resize --chain`, ops/resize.ts): `parent` is that parent
 * as it now is. Growing it rewrote the parent, whose modification time the
 * child records ("Dynamic Disk Header", Parent Time Stamp), so the child's
 * header takes the new time first — a crash after it leaves the child at its
 * old size, which the next `resize --chain` grows — then the size changes as
 * for a dynamic disk: unallocated new blocks read the parent's new area,
 * zeros.
 */
export async function resizeVhd(state: VhdState, newSize: number, options: ResizeOptions): Promise<void> {
  const { store } = state;
  const { path } = store;
  const shrink = options.shrink ?? false;
  const f = state.footer;
  if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize % SECTOR) throw new BlockError('invalid-argument', `new size ${newSize} is not a whole number of 512-byte sectors`, { path });
  if (f.diskType === 'fixed' ? newSize > MAX_FIXED_SIZE : newSize > MAX_SIZE) throw new BlockError('out-of-range', sizeLimitMessage(f.diskType), { path });
  if (newSize < f.currentSize && !shrink) throw new BlockError('invalid-argument', 'shrinking needs --shrink (data past the new end is lost)', { path });
  const old = f.currentSize;
  if (f.diskType === 'differencing') {
    const parent = options.parent;
    if (!parent || parent.size !== newSize) {
      throw new BlockError(
        'unsupported',
        `a differencing VHD has its parent's size${parent ? ` (${parent.size} bytes)` : ''} and cannot be resized on its own: grow the whole chain with \`vdisk resize --chain ${path} SIZE\``,
        { path },
      );
    }
    if (newSize < old) throw new BlockError('unsupported', 'a differencing VHD cannot shrink (vdisk grows chains only)', { path });
    const h = state.header!;
    const stamp = vhdNow(parent.mtime);
    if (newSize !== old && h.parentTimestamp !== stamp) {
      h.parentTimestamp = stamp;
      await store.write(state.headerOffset, encodeDynamicHeader(h));
      await store.flush();
    }
  }
  if (newSize === old) return;
  // Original size follows the current size, as Hyper-V's resize does: libvhdi
  // sizes a disk by the original size, so a stale one would show the old
  // size there (docs/formats/vhd.md, "Size rounding").
  const setSize = () => {
    f.currentSize = newSize;
    f.originalSize = newSize;
    Object.assign(f, geometryForSize(newSize));
  };

  if (f.diskType === 'fixed') {
    const write = async () => {
      setSize();
      // The new footer goes first; a crash afterwards leaves a valid image whose new sectors may show the old footer.
      await store.write(newSize, encodeFooter(f));
      if (newSize > old) await store.write(old, new Uint8Array(FOOTER_SIZE));
      else await store.truncate(newSize + FOOTER_SIZE);
      state.footerOffset = newSize;
      await store.flush();
    };
    await (newSize > old ? extending(state, write) : write());
    return;
  }

  const h = state.header!;
  const bs = h.blockSize;
  const newBlocks = Math.ceil(newSize / bs);
  let bat = state.bat!;
  if (newSize < old) {
    // Sectors past the new end must read as zeros if the disk grows again: clear the rest of the last block, drop the others.
    const lastKept = newBlocks - 1;
    if (newSize % bs && bat[lastKept] !== UNALLOCATED) {
      const from = newSize % bs;
      const span = Math.min(bs, old - lastKept * bs) - from;
      await store.write(bat[lastKept] * SECTOR + bitmapBytes(bs) + from, new Uint8Array(span));
    }
    let dropped = false;
    for (let i = newBlocks; i < bat.length; i++) if (bat[i] !== UNALLOCATED) dropped = true;
    if (dropped) {
      // The batmap may claim a dropped block full; a cleared batmap is true for any future content.
      if (state.batmap) await clearBatmap(store, state.batmap);
      const trimmed = new Uint32Array(bat.length).fill(UNALLOCATED);
      trimmed.set(bat.subarray(0, newBlocks));
      for (let s = Math.floor(newBlocks / ENTRIES_PER_SECTOR); s * ENTRIES_PER_SECTOR < bat.length; s++) await store.write(h.tableOffset + s * SECTOR, encodeBatSector(trimmed, s, h.maxTableEntries));
      await store.flush();
    }
    state.bat = bat.slice(0, newBlocks);
    setSize();
    await writeFooters(state);
    return;
  }

  if (newBlocks > h.maxTableEntries) {
    // The table is too small: write a larger one at the end of the file, then switch the header to it.
    const newMax = newBlocks;
    const at = state.footerOffset;
    const table = encodeBat(bat, newMax);
    await extending(state, async () => {
      await store.write(at, table);
      state.footerOffset = at + table.length;
      await store.write(state.footerOffset, encodeFooter(f));
      await store.flush();
    });
    h.tableOffset = at;
    h.maxTableEntries = newMax;
    // A batmap lives right after the table it belongs to; the moved table has none (it is optional).
    state.batmap = null;
    await store.write(state.headerOffset, encodeDynamicHeader(h));
    await store.flush();
  }
  const grown = new Uint32Array(newBlocks).fill(UNALLOCATED);
  grown.set(bat.subarray(0, Math.min(bat.length, newBlocks)));
  bat = grown;
  state.bat = bat;
  setSize();
  await writeFooters(state);
}

export async function setBackingVhd(state: VhdState, parent: BackingTarget | null): Promise<void> {
  const { store } = state;
  const { path } = store;
  if (state.footer.diskType !== 'differencing') throw new BlockError('unsupported', 'only a differencing VHD has a parent', { path });
  if (!parent) {
    // The caller has copied in what the parent shows (flatten.ts says why that is all it takes).
    await flattenVhd(state);
    return;
  }
  if (parent.size !== state.footer.currentSize) {
    throw new BlockError('mismatch', `the new parent is ${parent.size} bytes but this disk is ${state.footer.currentSize}`, { path });
  }
  const record = parentRecord(path, parent);
  // New locator data at the end of the file (nothing points there yet), footer after it; then one header write switches over.
  const at = state.footerOffset;
  const l = layoutLocators(record, at);
  await extending(state, async () => {
    for (const [off, data] of l.writes) await store.write(off, data);
    state.footerOffset = l.end;
    await store.write(state.footerOffset, encodeFooter(state.footer));
    await store.flush();
  });
  const h = state.header!;
  h.parentUniqueId = record.uuid;
  h.parentTimestamp = record.timestamp;
  h.parentUnicodeName = record.unicodeName;
  h.parentLocators = l.table;
  await store.write(state.headerOffset, encodeDynamicHeader(h));
  await store.flush();
  state.locators = await readLocators(store, h.parentLocators, await store.size());
}
