import { statLocation } from '../io/hosts.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
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

async function describe(layer: Image, parentPath: string | undefined): Promise<ImageInfo> {
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
    if (parentPath) out['full-backing-filename'] = parentPath;
    if (layer.backing.format) out['backing-filename-format'] = layer.backing.format;
  }
  if (Object.keys(fi.specific).length) out['format-specific'] = { type: layer.format, data: fi.specific };
  return out;
}

/**
 * Describe an image. Without `backingChain` only the named layer is opened
 * (so `info` works on a child whose parent is missing); with it, every layer.
 */
export async function imageInfo(path: string, options: ChainOpenOptions & { backingChain?: boolean } = {}): Promise<ImageInfo[]> {
  const chain = await openChain(path, { ...options, readOnly: true, layerOnly: !options.backingChain });
  try {
    const out: ImageInfo[] = [];
    for (let i = 0; i < chain.layers.length; i++) out.push(await describe(chain.layers[i], chain.layers[i + 1]?.path));
    return out;
  } finally {
    await chain.close();
  }
}
