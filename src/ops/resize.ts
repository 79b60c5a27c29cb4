import { BlockError, isBlockError } from '../core/errors.js';
import { openLocation } from '../io/hosts.js';
import type { StoreOpener } from '../io/store.js';
import { openBacking, openChain, type ChainOpenOptions } from '../chain/open.js';
import { findFormat } from '../formats/registry.js';
import { modifiedTime } from '../io/identity.js';
import { dataBelow, zeroRanges } from './resize-chain.js';
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
 * named layer is opened read-write. When it grows over a parent, the
 * parent's chain is opened (read-only) to learn its size — a VHD child may
 * take no size but its parent's, which is how it follows a parent that grew
 * — and what it shows in the grown range, which the child then zeroes
 * (a VHDX child smaller than its parent would otherwise show the parent's
 * bytes there).
 *
 * vdisk cannot see an image's children (nothing in a parent names them):
 * growing a VHD parent alone leaves its children unopenable until they grow
 * too (resizeChain from each child, `vdisk resize --chain`); a VHDX parent's
 * grow leaves its children valid (they keep their size).
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
    const parent = top.backing && newSize > oldSize ? await parentView(top, req.path, req.openOptions, openStore) : undefined;
    if (top.backing?.sameSize && newSize !== oldSize) {
      const parentSize = parent?.size ?? (await backingSize(top, req.path, req.openOptions, openStore));
      if (newSize !== parentSize) {
        throw new BlockError(
          'mismatch',
          `a differencing ${top.format} image must have its parent's size (${parentSize} bytes), not ${newSize}: ` +
            `grow the whole chain with \`vdisk resize --chain ${req.path} ${newSize}\` (vdisk cannot see a parent's other children: they must grow too)`,
          ctx,
        );
      }
    }
    if (newSize !== oldSize) {
      await top.resize(newSize, { shrink: req.shrink, parent: parent ? { size: parent.size, mtime: parent.mtime } : undefined });
      await top.flush();
      // A child grown over a larger parent would show the parent's bytes in its new area; a grown disk reads zeros there.
      // A layer that has its parent's size (VHD) follows its parent instead: it shows what the parent shows.
      if (parent && !top.backing?.sameSize) await zeroRanges(top, parent.exposed(oldSize, newSize));
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

/**
 * The layer's parent as a grow needs it: its size, its modification time
 * (a VHD child records it) and what its chain shows as data in the range
 * the layer is about to gain. The parent's chain is opened read-only and
 * leniently (a VHD parent that grew alone is the usual reason to be here).
 */
async function parentView(
  child: Image,
  childPath: string,
  options: ChainOpenOptions | undefined,
  openStore: StoreOpener,
): Promise<{ size: number; mtime: Date; exposed: (from: number, to: number) => Array<{ offset: number; length: number }> } | undefined> {
  let found: { image: Image; path: string };
  try {
    found = await openBacking(childPath, child.backing!, { ...options, writableBacking: false, openStore });
  } catch (e) {
    if (isBlockError(e, 'not-found') && e.context.path === childPath) {
      throw new BlockError('not-found', `${e.message}: growing a differencing image needs its parent (its size, and what the grown area must not show)`, e.context, { cause: e });
    }
    throw e;
  }
  const format = found.image.format;
  await found.image.close();
  // The parent's own backings: a format the child's backing took from backingFormats is used up (chain/open.ts levels).
  const backingFormats = child.backing!.format ? options?.backingFormats : options?.backingFormats?.slice(1);
  const chain = await openChain(found.path, { ...options, backingFormats, layerOnly: false, format, readOnly: true, openStore, allowSizeMismatch: true });
  try {
    const mtime = (await modifiedTime(found.path)) ?? new Date();
    const data = await dataBelow([child, ...chain.layers], 0, child.size, Math.max(child.size, chain.size));
    const exposed = (a: number, b: number) =>
      data.filter((r) => r.offset < b && r.offset + r.length > a).map((r) => ({ offset: Math.max(a, r.offset), length: Math.min(b, r.offset + r.length) - Math.max(a, r.offset) }));
    return { size: chain.size, mtime, exposed };
  } finally {
    await chain.close();
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
