import { BlockError } from '../core/errors.js';
import { openFileStore } from '../io/file-store.js';
import { modifiedTime } from '../io/identity.js';
import type { StoreOpener } from '../io/store.js';
import { Chain } from '../chain/chain.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import { findFormat } from '../formats/registry.js';
import type { Image } from '../formats/types.js';

export interface ChainResizeRequest {
  /** The top of the chain; every layer under it grows too. */
  path: string;
  /**
   * The new size in bytes. Absolute only (no `+1G`): re-running the same
   * request after an interruption must finish the job, not grow it again.
   */
  size: number;
  openOptions?: ChainOpenOptions;
  openStore?: StoreOpener;
  /** Called after each layer that grew (or was already at the size), base first. */
  onLayer?: (layer: ChainResizeLayer) => void;
}

export interface ChainResizeLayer {
  path: string;
  format: string;
  oldSize: number;
  newSize: number;
}

export interface ChainResizeResult {
  path: string;
  newSize: number;
  /** Every layer, top first (as Chain.layers), with the size it had when this run opened it. */
  layers: ChainResizeLayer[];
}

/**
 * Grow every layer of a backing chain to `size`, from the base up
 * (`vdisk resize --chain`).
 *
 * Base first, so that at every moment each child is at most its parent's
 * size, and a child grows only over a parent that already reads zeros there.
 * Each layer's grow is its format's own crash-safe resize (VHD: new BAT at
 * the end, then one footer write; VHDX: one journaled transaction) followed
 * by a flush before the next layer starts.
 *
 * Restartable: the chain is opened with `allowSizeMismatch`, because after
 * an interruption a VHD child may sit on a parent that already grew (the
 * ordinary open refuses that chain, and says to run this). Layers already at
 * `size` are skipped; so re-running the same command finishes the job.
 *
 * What stays valid: VHD children record their parent's UUID, which a resize
 * does not change, and its modification time (Parent Time Stamp), which it
 * does — a VHD child takes its grown parent's new time as it grows (before
 * its size changes, formats/vhd/maintenance.ts). A VHDX grow keeps the
 * DataWriteGuid (no byte a child reads changes, formats/vhdx/image.ts), so
 * every parent_linkage stays valid.
 *
 * Shrinking is refused: it would cut data from every layer, and a layer
 * already larger than `size` is not this command's to shrink.
 */
export async function resizeChain(req: ChainResizeRequest): Promise<ChainResizeResult> {
  const openStore = req.openStore ?? req.openOptions?.openStore ?? openFileStore;
  const newSize = req.size;
  const ctx = { path: req.path };
  if (!Number.isSafeInteger(newSize) || newSize <= 0) throw new BlockError('invalid-argument', `invalid new size ${newSize}`, ctx);
  if (req.openOptions?.layerOnly) throw new BlockError('invalid-argument', 'resize --chain grows the whole chain: --layer-only does not apply', ctx);
  const chain = await openChain(req.path, {
    ...req.openOptions,
    openStore,
    readOnly: false,
    writableBacking: true,
    allowSizeMismatch: true,
  });
  try {
    const layers = chain.layers;
    // Every check before the first write: a refusal leaves the chain as it was.
    for (const layer of layers) checkLayer(layer, newSize, req.openOptions);
    const report: ChainResizeLayer[] = [];
    for (let i = layers.length - 1; i >= 0; i--) {
      const layer = layers[i];
      const oldSize = layer.size;
      if (oldSize !== newSize) {
        const parent = layers[i + 1];
        // What the parent chain shows in the new area: a layer's grown part reads zeros, not what lies under it.
        // A layer that has its parent's size (VHD) follows the parent instead, which grew to zeros there.
        const exposed = parent && !layer.backing?.sameSize ? await dataBelow(layers, i, oldSize, newSize) : [];
        const mtime = parent ? ((await modifiedTime(parent.path)) ?? new Date()) : undefined;
        await layer.resize!(newSize, { parent: parent && mtime ? { size: parent.size, mtime } : undefined });
        await layer.flush();
        await zeroRanges(layer, exposed);
      }
      const entry = { path: layer.path, format: layer.format, oldSize, newSize: layer.size };
      report.unshift(entry);
      req.onLayer?.(entry);
    }
    const result = { path: req.path, newSize, layers: report };
    await chain.close();
    return result;
  } catch (e) {
    await chain.close().catch(() => {});
    throw e;
  }
}

function checkLayer(layer: Image, newSize: number, options: ChainOpenOptions | undefined): void {
  const ctx = { path: layer.path };
  if (!layer.resize) throw new BlockError('unsupported', `format ${layer.format} cannot be resized, so its chain cannot grow`, ctx);
  if (layer.size > newSize) {
    throw new BlockError(
      'invalid-argument',
      `${layer.path} is already ${layer.size} bytes, more than ${newSize}: resize --chain only grows a chain (shrinking every layer would cut their data; shrink a single VHDX layer with resize --shrink, or convert the chain to one image first)`,
      ctx,
    );
  }
  const unit = layer.logicalSectorSize === 1 ? 1 : Math.max(512, layer.logicalSectorSize);
  if (newSize % unit !== 0) throw new BlockError('invalid-argument', `new size ${newSize} is not a multiple of the ${unit}-byte sector of ${layer.path}`, ctx);
  const max = findFormat(layer.format, options?.formats).maxSize;
  if (newSize > max) throw new BlockError('out-of-range', `new size ${newSize} is larger than the ${layer.format} format allows (${max} bytes)`, ctx);
}

/**
 * The parts of [from, to) that layers[i+1..] show as data: where layer i,
 * grown from `from` to `to`, would show its parent's bytes instead of the
 * zeros a grown disk reads. Empty when the parent was no larger than `from`
 * (a chain grown from the base up: the parent's grown part reads zeros).
 */
export async function dataBelow(layers: readonly Image[], i: number, from: number, to: number): Promise<Array<{ offset: number; length: number }>> {
  const below = layers.slice(i + 1);
  if (below.length === 0) return [];
  const end = Math.min(to, below[0].size);
  if (end <= from) return [];
  const extents = await new Chain(below as Image[], true).blockStatus(from, end - from);
  const unit = layers[i].logicalSectorSize;
  const out: Array<{ offset: number; length: number }> = [];
  for (const e of extents) {
    if (e.kind !== 'data') continue;
    // Rounded out to the child's sectors (a 4 KiB-sector child over a 512-byte one), kept inside [from, to).
    const a = Math.max(from, Math.floor(e.offset / unit) * unit);
    const b = Math.min(to, Math.ceil((e.offset + e.length) / unit) * unit);
    const last = out[out.length - 1];
    if (last && last.offset + last.length >= a) last.length = Math.max(last.length, b - last.offset);
    else if (b > a) out.push({ offset: a, length: b - a });
  }
  return out;
}

/** Make the ranges read as zeros in the layer itself (never its parent's bytes), durably. */
export async function zeroRanges(layer: Image, ranges: ReadonlyArray<{ offset: number; length: number }>): Promise<void> {
  if (ranges.length === 0) return;
  // mayUnmap: whole blocks may become zero blocks (VHDX PAYLOAD_BLOCK_ZERO) rather than written zeros; never the parent's bytes.
  for (const r of ranges) await layer.writeZeroes(r.offset, r.length, { mayUnmap: true });
  await layer.flush();
}
