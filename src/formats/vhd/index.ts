import type { Format, ProbeInput } from '../types.js';
import { CREATE_OPTIONS, createVhd } from './create.js';
import { FOOTER_SIZE, hasFooterCookie } from './footer.js';
import { measureVhd } from './measure.js';
import { openVhd } from './open.js';
import { sequentialVhd } from './sequential.js';
import { MAX_FIXED_SIZE } from './state.js';

/**
 * VHD (Virtual PC / Hyper-V; qemu-img calls it "vpc"): fixed, dynamic and
 * differencing disks, per the 2006 "Virtual Hard Disk Image Format Specification".
 */
export const vhdFormat: Format = {
  name: 'vhd',
  aliases: ['vpc'],
  description: 'Virtual PC / Hyper-V VHD (fixed, dynamic, differencing)',
  // Fixed disks; dynamic and differencing ones stop at 2040 GiB (create.ts, maintenance.ts).
  maxSize: MAX_FIXED_SIZE,
  probe(input: ProbeInput): number {
    // The footer at the end is what every VHD has (a fixed disk has nothing else).
    if (input.size >= FOOTER_SIZE && input.tail.length >= FOOTER_SIZE && hasFooterCookie(input.tail, input.tail.length - FOOTER_SIZE)) return 100;
    // A dynamic disk whose end footer is damaged still has its copy at offset 0.
    if (hasFooterCookie(input.head, 0)) return 90;
    return 0;
  },
  open: openVhd,
  create: createVhd,
  createOptions: CREATE_OPTIONS,
  measure: measureVhd,
  sequential: sequentialVhd,
};
