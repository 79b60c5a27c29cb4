import type { Format, Image, OpenContext, ProbeInput, CreateContext } from '../types.js';
import { hasFileSignature } from './file-identifier.js';
import { MAX_SIZE } from './layout.js';
import { openVhdx } from './open.js';
import { createVhdx, CREATE_OPTIONS } from './create.js';
import { measureVhdx } from './measure.js';
import { sequentialVhdx } from './sequential.js';

/** VHDX (Microsoft, VHDX Format Specification v1.00 / MS-VHDX): fixed, dynamic and differencing. */
export const vhdxFormat: Format = {
  name: 'vhdx',
  aliases: ['avhdx'],
  description: 'Hyper-V VHDX (fixed, dynamic, differencing; 512 and 4096-byte sectors; journaled metadata)',
  maxSize: MAX_SIZE,
  probe(input: ProbeInput): number {
    return hasFileSignature(input.head) ? 100 : 0;
  },
  open(ctx: OpenContext): Promise<Image> {
    return openVhdx(ctx);
  },
  create(ctx: CreateContext): Promise<void> {
    return createVhdx(ctx);
  },
  createOptions: CREATE_OPTIONS,
  measure: measureVhdx,
  sequential: sequentialVhdx,
};
