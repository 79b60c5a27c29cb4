import { writeZeroBytes } from '../../core/zeros.js';
import { readExact } from '../../io/store.js';
import { UNALLOCATED } from './bat.js';
import { encodeFooter, SECTOR } from './footer.js';
import { bitmapBytes, forEachRun } from './sector-bitmap.js';
import type { VhdState } from './state.js';

/*
 * A differencing VHD becomes a dynamic one in place (`rebase -b ""`). The two
 * types share one layout (VHD spec 2006, "Dynamic Disk Header": a
 * differencing disk is a dynamic disk with parent fields); they read
 * differently in two places only:
 *
 *   - an unallocated block: differencing reads the parent, dynamic zeros;
 *   - a clear sector-bitmap bit: differencing reads the parent; a dynamic
 *     disk's block is read whole (qemu, vdisk) or its clear bits as zeros
 *     (readers that honour the bitmap).
 *
 * The caller (ops/rebase.ts, safe mode) first copies into the child every
 * range where the parent shows anything but zeros. After that the parent
 * shows zeros wherever the child defers to it, so the steps below change
 * nothing the differencing disk shows, and the type switch at the end
 * changes nothing either:
 *
 *   1. in every allocated block, the data sectors whose bit is clear are
 *      zeroed (the differencing disk does not read them); flush;
 *   2. those blocks' bitmaps are set to all ones (each newly set bit covers
 *      a zeroed sector, where the parent shows zeros); flush;
 *   3. the footer at the end of the file gets disk type 3 (dynamic): one
 *      sector write, the commit point — the end footer is the one readers
 *      (Hyper-V, qemu, vdisk) take; flush;
 *   4. the footer copy at offset 0 follows; flush.
 *
 * A crash before 3 lands leaves a valid differencing disk showing the same
 * disk (running the rebase again finishes the job); after it, a dynamic
 * disk showing the same disk, whose copy at 0 may still say differencing
 * (`check -r all` rewrites it). The dynamic header keeps its parent fields:
 * a dynamic disk's readers ignore them, and rewriting the 1024-byte header
 * (two sectors under one checksum) is a write a crash could tear.
 */
export async function flattenVhd(state: VhdState): Promise<void> {
  const { store } = state;
  const h = state.header!;
  const bat = state.bat!;
  const size = bitmapBytes(h.blockSize);
  const sectors = h.blockSize / SECTOR;
  const full = new Uint8Array(size).fill(0xff);
  const partial: number[] = [];
  for (let b = 0; b < bat.length; b++) {
    if (bat[b] === UNALLOCATED) continue;
    const at = bat[b] * SECTOR;
    const bits = await readExact(store, at, new Uint8Array(size), `sector bitmap of block ${b}`);
    if (bits.every((x) => x === 0xff)) continue;
    const runs: Array<[number, number]> = [];
    forEachRun(bits, 0, sectors, (a, z, set) => {
      if (!set) runs.push([a, z]);
    });
    for (const [a, z] of runs) await writeZeroBytes((o, d) => store.write(o, d), at + size + a * SECTOR, (z - a) * SECTOR);
    partial.push(b);
  }
  await store.flush();
  for (const b of partial) await store.write(bat[b] * SECTOR, full);
  await store.flush();
  state.footer = { ...state.footer, diskType: 'dynamic' };
  const footer = encodeFooter(state.footer);
  await store.write(state.footerOffset, footer);
  await store.flush();
  await store.write(0, footer);
  await store.flush();
  state.locators = [];
}
