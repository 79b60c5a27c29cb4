import type { CheckResult } from '../types.js';
import type { VhdxImage } from './image.js';

export async function checkVhdx(image: VhdxImage, options: { repair?: 'leaks' | 'all' }): Promise<CheckResult> {
  void options;
  void image;
  return { problems: [] };
}
