import { dirname, isAbsolute, resolve } from 'node:path';
import { BlockError, isBlockError } from '../core/errors.js';
import { openFileStore } from '../io/file-store.js';
import { fileIdentity } from '../io/identity.js';
import type { Store, StoreOpener } from '../io/store.js';
import { findFormat, probeFormat } from '../formats/registry.js';
import type { BackingRef, Format, Image, OpenOptions } from '../formats/types.js';
import { Chain } from './chain.js';

export const DEFAULT_DEPTH_LIMIT = 64;

export interface LayerOpenOptions extends OpenOptions {
  /** Format name; overrides probing (`-f`). */
  format?: string;
  readOnly?: boolean;
  openStore?: StoreOpener;
  /** The formats to choose from (default: the registry). Tests and embedders may add their own. */
  formats?: readonly Format[];
}

export interface ChainOpenOptions extends LayerOpenOptions {
  /** Open only the named image, not its backing chain. */
  layerOnly?: boolean;
  /** Most layers a chain may have, the top included (default 64). */
  depthLimit?: number;
  /** Accept a parent whose identity differs from what the child records. */
  ignoreParentId?: boolean;
  /** Open backing layers read-write too (commit needs it). Default: read-only. */
  writableBacking?: boolean;
}

/** Read the head and tail of a store and ask every format. */
export async function probeStore(store: Store, formats?: readonly Format[]): Promise<Format> {
  const size = await store.size();
  const head = new Uint8Array(Math.min(size, 64 * 1024));
  await store.read(0, head);
  const tail = new Uint8Array(Math.min(size, 512));
  await store.read(size - tail.length, tail);
  return probeFormat({ head, tail, size }, formats);
}

/** Open one layer, probing its format unless one is given. */
export async function openLayer(path: string, options: LayerOpenOptions = {}): Promise<Image> {
  const openStore = options.openStore ?? openFileStore;
  const readOnly = options.readOnly ?? false;
  const format = options.format ? findFormat(options.format, options.formats) : undefined;
  const store = await openStore(path, { readOnly });
  try {
    const fmt = format ?? (await probeStore(store, options.formats));
    return await fmt.open({ store, path, readOnly, openStore, options: { ignoreChecksums: options.ignoreChecksums } });
  } catch (e) {
    await store.close().catch(() => {});
    if (isBlockError(e)) throw e.withContext({ path });
    throw e;
  }
}

/**
 * Turn a recorded parent name into a host path: `\` separators become `/`,
 * relative names are taken from the child's folder (VHD spec 2006, "Parent
 * Locator": W2ru is relative to the child; VHDX 2.6.2.6.3 relative_path).
 */
export function resolveParentName(name: string, childPath: string): string {
  let n = name.replace(/\\/g, '/');
  if (n.startsWith('./')) n = n.slice(2);
  if (isAbsolute(n) || /^[A-Za-z]:\//.test(n)) return n;
  return resolve(dirname(childPath), n);
}

/**
 * Open an image and its backing chain. This is the only place that follows
 * backing references: parents are resolved relative to the child, opened with
 * the format the child records (never probed as raw when one is recorded),
 * checked for identity and size, and bounded in depth and against loops.
 */
export async function openChain(path: string, options: ChainOpenOptions = {}): Promise<Chain> {
  const depthLimit = options.depthLimit ?? DEFAULT_DEPTH_LIMIT;
  if (!Number.isInteger(depthLimit) || depthLimit < 1) {
    throw new BlockError('invalid-argument', `depth limit must be a positive whole number (got ${depthLimit})`);
  }
  const layers: Image[] = [];
  const seen = new Set<string>();
  try {
    const top = await openLayer(path, options);
    layers.push(top);
    // The loop check needs the top's real path only when there are parents
    // to follow: a single layer skips a round trip to the thread pool.
    if (!options.layerOnly && top.backing) seen.add(await fileIdentity(path));
    let child = top;
    let childPath = path;
    while (!options.layerOnly && child.backing) {
      const ref = child.backing;
      if (layers.length >= depthLimit) {
        throw new BlockError('too-deep', `backing chain is deeper than the limit of ${depthLimit} layers`, { path: childPath });
      }
      const { image, path: parentPath } = await openParent(childPath, ref, options, seen);
      layers.push(image);
      checkParent(child, childPath, ref, image, options);
      child = image;
      childPath = parentPath;
    }
    return new Chain(layers, options.readOnly ?? false);
  } catch (e) {
    for (const l of layers) await l.close().catch(() => {});
    throw e;
  }
}

async function openParent(
  childPath: string,
  ref: BackingRef,
  options: ChainOpenOptions,
  seen: Set<string>,
): Promise<{ image: Image; path: string }> {
  const tried: string[] = [];
  for (const name of ref.candidates) {
    if (!name) continue;
    const candidate = resolveParentName(name, childPath);
    if (tried.includes(candidate)) continue;
    tried.push(candidate);
    const key = await fileIdentity(candidate);
    try {
      const image = await openLayer(candidate, {
        ...options,
        format: ref.format,
        readOnly: options.writableBacking ? options.readOnly : true,
      });
      if (seen.has(key)) {
        await image.close();
        throw new BlockError('loop', `backing chain loops back to ${candidate}`, { path: childPath });
      }
      seen.add(key);
      return { image, path: candidate };
    } catch (e) {
      if (isBlockError(e, 'not-found') && e.context.path === candidate) continue;
      throw e;
    }
  }
  throw new BlockError(
    'not-found',
    `backing file '${ref.recorded}' not found (tried: ${tried.join(', ') || 'no usable name recorded'})`,
    { path: childPath, tried },
  );
}

function checkParent(child: Image, childPath: string, ref: BackingRef, parent: Image, options: ChainOpenOptions): void {
  if (ref.expectedId && parent.identity && ref.expectedId !== parent.identity && ref.alternateId !== parent.identity && !options.ignoreParentId) {
    throw new BlockError(
      'mismatch',
      `parent ${parent.path} is not the one this image was made from (expected id ${ref.expectedId}, parent has ${parent.identity}; --ignore-parent-id overrides)`,
      { path: childPath },
    );
  }
  if (ref.sameSize && parent.size !== child.size) {
    throw new BlockError('mismatch', `parent ${parent.path} is ${parent.size} bytes but the child is ${child.size}`, {
      path: childPath,
    });
  }
}
