import { blocksTouched } from '../measure-helpers.js';
import type { MeasureInput, MeasureResult } from '../types.js';
import { batBytes } from './bat.js';
import { blockSizeOption, planVhd } from './create.js';
import { DYNAMIC_HEADER_SIZE } from './dynamic-header.js';
import { FOOTER_SIZE } from './footer.js';
import { bitmapBytes } from './sector-bitmap.js';

/**
 * File size of a VHD holding `allocated` (qemu-img measure; qemu-img itself
 * cannot measure vpc). Mirrors createVhd's layout:
 *
 *   fixed:    data (the disk, byte for byte) | footer
 *   dynamic:  footer copy | dynamic header | BAT (4 bytes a block, sector
 *             padded) | blocks, each sector bitmap (sector padded) + block
 *             data, in allocation order | footer
 *
 * Each touched block costs a whole block, the last one too: blocks are
 * allocated at full size even when the disk ends inside one.
 */
export function measureVhd(input: MeasureInput): MeasureResult {
  const o = input.options;
  const { size, diskType } = planVhd(input.size, o);
  if (diskType === 'fixed') return { required: size + FOOTER_SIZE, fullyAllocated: size + FOOTER_SIZE };
  const blockSize = blockSizeOption(o);
  const entries = Math.ceil(size / blockSize);
  const meta = FOOTER_SIZE + DYNAMIC_HEADER_SIZE + batBytes(entries) + FOOTER_SIZE;
  const span = bitmapBytes(blockSize) + blockSize;
  return { required: meta + blocksTouched(input.allocated, blockSize) * span, fullyAllocated: meta + entries * span };
}
