import { sameFile } from '../../io/identity.js';
import type { CheckProblem, CheckResult } from '../types.js';
import { clearTailOnDisk } from './maintenance.js';
import { resolveName } from './paths.js';
import type { AddCowState } from './state.js';

/**
 * Check an add-cow layer: the bitmap's extent in the file, the image file's
 * length, bits set past the last sector (repaired with repair=all), and a
 * backing file that is the image file itself.
 */
export async function checkAddCow(state: AddCowState, options: { repair?: 'leaks' | 'all' }): Promise<CheckResult> {
  return state.meta.run(async () => {
    const problems: CheckProblem[] = [];
    const fileSize = await state.store.size();
    if (fileSize < state.bitmapEnd) {
      problems.push({ severity: 'corruption', message: `bitmap is truncated: the file ends at ${fileSize}, the bitmap at ${state.bitmapEnd}`, offset: fileSize });
    } else if (fileSize > state.bitmapEnd) {
      problems.push({ severity: 'info', message: `${fileSize - state.bitmapEnd} bytes after the bitmap are ignored`, offset: state.bitmapEnd });
    }
    const imageSize = await state.imageStore.size();
    if (imageSize < state.size) {
      problems.push({ severity: 'corruption', message: `image file ${state.imagePath} is ${imageSize} bytes, smaller than the virtual size ${state.size}` });
    }
    if (state.strayTailBits) {
      const p: CheckProblem = { severity: 'warning', message: 'bits are set past the last sector in the last bitmap byte', offset: state.bitmapEnd - 1 };
      if (options.repair === 'all' && !state.readOnly) {
        await clearTailOnDisk(state);
        await state.store.flush();
        state.strayTailBits = false;
        p.repaired = true;
      }
      problems.push(p);
    }
    if (state.backing && (await sameFile(resolveName(state.header.backingFile, state.path), state.imagePath))) {
      problems.push({ severity: 'corruption', message: 'the backing file is the image file itself' });
    }
    const allocated = state.bitmap.countSet();
    return {
      problems,
      details: { 'allocated-sectors': allocated, 'total-sectors': state.bitmap.sectors, 'image-file': state.imagePath },
    };
  });
}
