import { BlockError } from '../../core/errors.js';
import type { BackingTarget } from '../types.js';
import type { VhdxImage } from './image.js';

export async function resizeVhdx(image: VhdxImage, newSize: number, options: { shrink?: boolean }): Promise<void> {
  void options;
  throw new BlockError('unsupported', `resize to ${newSize} not implemented yet`, { path: image.path });
}

export async function setBackingVhdx(image: VhdxImage, parent: BackingTarget | null): Promise<void> {
  void parent;
  throw new BlockError('unsupported', 'set backing not implemented yet', { path: image.path });
}
