import { BlockError, isBlockError } from '../core/errors.js';
import { openLocation } from '../io/hosts.js';
import type { StoreOpener } from '../io/store.js';
import { openBacking, openChain, type ChainOpenOptions } from '../chain/open.js';
import { findFormat } from '../formats/registry.js';
import type { Image } from '../formats/types.js';

export interface ResizeRequest {
  path: string;
  /** The new size in bytes, or a change relative to the current size (`+1G`, `-512M`). */
  size: number | { delta: number };
  /** Allow the disk to get smaller (data past the new end is lost). */
  shrink?: boolean;
  openOptions?: ChainOpenOptions;
  openStore?: StoreOpener;
}

export interface ResizeResult {
  path: string;
  format: string;
  oldSize: number;
  newSize: number;
}

/**
 * Change a disk's virtual size through the format's resize hook. Only the
 * named layer is opened read-write; its parent is opened (read-only) only to
 * learn its size, because a differencing layer may take no size but its
 * parent's (VHD, VHDX) — which is how a child follows a parent that grew.
 */
export async function resizeImage(req: ResizeRequest): Promise<ResizeResult> {
  const openStore = req.openStore ?? req.openOptions?.openStore ?? openLocation;
  const chain = await openChain(req.path, { ...req.openOptions, openStore, readOnly: false, layerOnly: true });
  try {
    const top = chain.top;
    const oldSize = top.size;
    const newSize = typeof req.size === 'number' ? req.size : oldSize + req.size.delta;
    const ctx = { path: req.path };
    if (!top.resize) {
      throw new BlockError('unsupported', `format ${top.format} cannot be resized`, ctx);
    }
    if (!Number.isSafeInteger(newSize) || newSize < 0) throw new BlockError('invalid-argument', `invalid new size ${newSize}`, ctx);
    const unit = top.logicalSectorSize === 1 ? 1 : Math.max(512, top.logicalSectorSize);
    if (newSize % unit !== 0) {
      throw new BlockError('invalid-argument', `new size ${newSize} is not a multiple of the ${unit}-byte sector`, ctx);
    }
    const max = findFormat(top.format, req.openOptions?.formats).maxSize;
    if (newSize > max) throw new BlockError('out-of-range', `new size ${newSize} is larger than the ${top.format} format allows (${max} bytes)`, ctx);
    if (newSize < oldSize && !req.shrink) {
      throw new BlockError('invalid-argument', `shrinking from ${oldSize} to ${newSize} bytes needs --shrink (data past the new end is lost)`, ctx);
    }
    if (top.backing?.sameSize) {
      const parentSize = await backingSize(top, req.path, req.openOptions, openStore);
      if (newSize !== parentSize) {
        throw new BlockError('mismatch', `a differencing ${top.format} image must have its parent's size (${parentSize} bytes), not ${newSize}`, ctx);
      }
    }
    if (newSize !== oldSize) {
      await top.resize(newSize, { shrink: req.shrink });
      await top.flush();
    }
    const result = { path: req.path, format: top.format, oldSize, newSize: top.size };
    await chain.close();
    return result;
  } catch (e) {
    // The failure is what the user needs to hear about, not a second one from closing after it (a full disk fails both).
    await chain.close().catch(() => {});
    throw e;
  }
}

/** Size of the layer's parent, opened alone (the chain's own size check would refuse a parent that has already grown). */
async function backingSize(child: Image, childPath: string, options: ChainOpenOptions | undefined, openStore: StoreOpener): Promise<number> {
  try {
    const { image } = await openBacking(childPath, child.backing!, { ...options, writableBacking: false, openStore });
    try {
      return image.size;
    } finally {
      await image.close();
    }
  } catch (e) {
    if (isBlockError(e, 'not-found') && e.context.path === childPath) {
      throw new BlockError('not-found', `${e.message}: a differencing image takes its parent's size`, e.context, { cause: e });
    }
    throw e;
  }
}
