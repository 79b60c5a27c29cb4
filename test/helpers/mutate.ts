import { MemoryFs } from '../../src/io/memory-store.js';
import { openChain } from '../../src/chain/open.js';
import { createImage } from '../../src/ops/create.js';
import { DynamicHeader } from '../../src/formats/vhd/dynamic-header.js';
import { Footer, vhdChecksum } from '../../src/formats/vhd/footer.js';
import { sealChecksum } from '../../src/formats/vhdx/layout.js';

/*
 * What the fuzz tests (test/*-fuzz.test.ts) and the fuzzer (test/fuzz/run.ts)
 * share: recomputing checksums after a mutation, so that the mutation
 * reaches the code behind the checksum check, and a VHDX seed with a dirty log.
 */

const KiB = 1024;
const MiB = 1 << 20;

/** Recompute the checksums of a VHD's footer copy, end footer and dynamic header (where the file is long enough to have them). */
export function resealVhd(b: Uint8Array): void {
  for (const at of [0, b.length - 512]) {
    if (at < 0 || b.length < at + 512) continue;
    const f = b.subarray(at, at + 512);
    new DataView(f.buffer, f.byteOffset).setUint32(Footer.offsets.checksum, vhdChecksum(f, Footer.offsets.checksum));
  }
  if (b.length >= 1536) {
    const h = b.subarray(512, 1536);
    new DataView(h.buffer, h.byteOffset).setUint32(DynamicHeader.offsets.checksum, vhdChecksum(h, DynamicHeader.offsets.checksum));
  }
}

/** Recompute the CRC-32C of a VHDX's two headers (4 KiB at 64 and 128 KiB) and two region tables (64 KiB at 192 and 256 KiB) that the file holds. */
export function resealVhdx(b: Uint8Array): void {
  for (const o of [64 * KiB, 128 * KiB]) if (b.length >= o + 4 * KiB) sealChecksum(b.subarray(o, o + 4 * KiB));
  for (const o of [192 * KiB, 256 * KiB]) if (b.length >= o + 64 * KiB) sealChecksum(b.subarray(o, o + 64 * KiB));
}

/**
 * A differencing VHDX child of vdisk's own, with partial blocks (sector
 * bitmaps), captured before close: its log GUID is still set, so opening
 * it replays the log. `fs` holds the parent (/d/p.vhdx) and the child
 * (/d/c.vhdx) as they are after close.
 */
export async function dirtyDifferencingVhdx(): Promise<{ fs: MemoryFs; dirty: Uint8Array }> {
  const fs = new MemoryFs();
  const openStore = fs.opener();
  await createImage({ path: '/d/p.vhdx', format: 'vhdx', size: 8 * MiB, options: { block_size: '1M' }, openStore });
  await createImage({ path: '/d/c.vhdx', format: 'vhdx', backing: { path: '/d/p.vhdx' }, options: { block_size: '1M' }, openStore });
  const c = await openChain('/d/c.vhdx', { openStore });
  await c.write(MiB + 1024, new Uint8Array(2048).fill(3));
  const dirty = fs.files.get('/d/c.vhdx')!.bytes();
  await c.close();
  return { fs, dirty };
}
