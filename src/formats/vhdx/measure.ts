import { blocksTouched } from '../measure-helpers.js';
import type { MeasureInput, MeasureResult } from '../types.js';
import { batGeometry, batRegionLength } from './bat.js';
import { blockSizeOption, logSizeOption, METADATA_REGION_LENGTH } from './create.js';
import { HEADER_SECTION_SIZE } from './layout.js';

/**
 * File size of a VHDX holding `allocated` (qemu-img measure). Mirrors
 * createVhdx's layout, every piece 1 MiB aligned (VHDX 1.00, 2 "File Layout"):
 *
 *   header section (1 MiB) | log (log_size) | metadata (1 MiB) | BAT region
 *   (entries incl. sector-bitmap entries, rounded up to 1 MiB) | blocks
 *
 * A base disk (what convert makes without -B) has no sector bitmap blocks;
 * every touched payload block costs a whole block (the last one too).
 */
export function measureVhdx(input: MeasureInput): MeasureResult {
  const o = input.options;
  const blockSize = blockSizeOption(o, false);
  const logSize = logSizeOption(o);
  const lss = o.logical_sector_size ? Number(o.logical_sector_size) : 512;
  const g = batGeometry(input.size, blockSize, lss, false);
  const dataStart = HEADER_SECTION_SIZE + logSize + METADATA_REGION_LENGTH + batRegionLength(g);
  const full = dataStart + g.dataBlocks * blockSize;
  if (o.subformat === 'fixed') return { required: full, fullyAllocated: full };
  return { required: dataStart + blocksTouched(input.allocated, blockSize) * blockSize, fullyAllocated: full };
}
