import { blocksTouched } from '../measure-helpers.js';
import type { MeasureInput, MeasureResult } from '../types.js';
import { HEADER_SIZE, bitmapBytes } from './header.js';

/**
 * Space an add-cow image takes (docs/formats/add-cow.md): the add-cow file
 * (header + one bit a sector) plus the raw image file. The image file always
 * has the full virtual length but is created sparse, so it counts by the data
 * written into it: convert writes in 4 KiB granules (its -S default), which
 * is also the host's block, so each touched 4 KiB counts whole.
 */
const HOST_BLOCK = 4096;

export function measureAddCow(input: MeasureInput): MeasureResult {
  const meta = HEADER_SIZE + bitmapBytes(input.size);
  const data = Math.min(input.size, blocksTouched(input.allocated, HOST_BLOCK) * HOST_BLOCK);
  return { required: meta + data, fullyAllocated: meta + input.size };
}
