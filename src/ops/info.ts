import { isBlockError } from '../core/errors.js';
import { openBacking, openChain, resolveParentName, type ChainOpenOptions } from '../chain/open.js';
import { statLocation } from '../io/hosts.js';
import type { Image } from '../formats/types.js';

/** One layer as `info --output=json` shows it; field names follow `qemu-img info --output=json`. */
export interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'cluster-size'?: number;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  /**
   * vdisk's own: why the backing file named by this layer cannot be opened
   * (not found, outside the allowed folders, an unrecorded raw format...),
   * when info looked for it and failed. Absent when it opened or was not looked for.
   */
  'backing-file-problem'?: string;
  'logical-sector-size': number;
  'format-specific'?: { type: string; data: Record<string, unknown> };
}

async function actualSize(path: string): Promise<number | undefined> {
  try {
    return (await statLocation(path))?.allocated;
  } catch {
    return undefined;
  }
}

async function describe(layer: Image, parentPath: string | undefined, problem?: string): Promise<ImageInfo> {
  const fi = layer.info();
  const out: ImageInfo = {
    filename: layer.path,
    format: layer.format,
    'virtual-size': layer.size,
    'logical-sector-size': layer.logicalSectorSize,
  };
  const actual = await actualSize(layer.path);
  if (actual !== undefined) out['actual-size'] = actual;
  if (fi.clusterSize !== undefined) out['cluster-size'] = fi.clusterSize;
  if (fi.dirty !== undefined) out['dirty-flag'] = fi.dirty;
  if (layer.backing) {
    out['backing-filename'] = layer.backing.recorded;
    // Where the parent was found; else (not looked for, or not found) where the recorded name leads, as qemu-img shows it.
    const full = parentPath ?? (layer.backing.recorded ? resolveParentName(layer.backing.recorded, layer.path) : undefined);
    if (full) out['full-backing-filename'] = full;
    if (layer.backing.format) out['backing-filename-format'] = layer.backing.format;
    if (problem) out['backing-file-problem'] = problem;
  }
  if (Object.keys(fi.specific).length) out['format-specific'] = { type: layer.format, data: fi.specific };
  return out;
}

/**
 * Describe an image. Without `backingChain` only the named layer is opened
 * (so `info` works on a child whose parent is missing); with it, every layer.
 */
export async function imageInfo(path: string, options: ChainOpenOptions & { backingChain?: boolean } = {}): Promise<ImageInfo[]> {
  const chain = await openChain(path, { ...options, readOnly: true, layerOnly: !options.backingChain || options.layerOnly });
  try {
    const out: ImageInfo[] = [];
    const top = chain.layers[0];
    if (chain.layers.length === 1 && top.backing && !options.layerOnly) {
      // Without --backing-chain the parent is looked for (and closed again)
      // so that full-backing-filename is where it really is, and a parent
      // that cannot be found is said — without failing the child's info.
      const found = await findParent(top, options);
      out.push(await describe(top, found.path, found.problem));
      return out;
    }
    for (let i = 0; i < chain.layers.length; i++) out.push(await describe(chain.layers[i], chain.layers[i + 1]?.path));
    return out;
  } finally {
    await chain.close();
  }
}

/** The backing file of `layer`, opened alone read-only and closed: its path, or why it cannot be opened. */
async function findParent(layer: Image, options: ChainOpenOptions): Promise<{ path?: string; problem?: string }> {
  try {
    const { image, path } = await openBacking(layer.path, layer.backing!, { ...options, readOnly: true, writableBacking: false });
    await image.close();
    return { path };
  } catch (e) {
    if (!isBlockError(e)) throw e;
    return { problem: e.message };
  }
}
