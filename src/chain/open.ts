import { BlockError, isBlockError } from '../core/errors.js';
import { checkContained } from '../io/contain.js';
import { hostFor, openLocation } from '../io/hosts.js';
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
  /**
   * Read-only opens: take no lock that keeps writers out, and open even when
   * a writer holds the image (qemu-img's -U/--force-share; reading a live
   * image is the caller's risk). Refused with a writable open.
   */
  forceShare?: boolean;
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
  /**
   * Open a chain in which a layer that must have its parent's size (VHD)
   * does not: how `resize --chain` finds a chain it grew only partly before
   * a crash (ops/resize.ts). Reads past a shorter parent's end read zeros.
   */
  allowSizeMismatch?: boolean;
  /**
   * Formats of the backing files whose format the image naming them does not
   * record (add-cow records none), `--backing-as` (repeatable): the first
   * such backing down the chain takes the first entry, the next the next.
   * An entry is used as given, never second-guessed by a probe. A backing
   * past the list is probed for the formats with a signature, and refused
   * when only raw would match: a backing is never taken for raw by probing
   * (docs/security.md).
   */
  backingFormats?: readonly string[];
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
export function openLayer(path: string, options: LayerOpenOptions = {}): Promise<Image> {
  return openLayerAt(path, options);
}

/**
 * openLayer; `recordedBy` set when the layer is a backing file named by
 * that image without a format: a probe that finds only raw is then refused.
 */
async function openLayerAt(path: string, options: LayerOpenOptions, recordedBy?: { image: string; name: string }): Promise<Image> {
  const readOnly = options.readOnly ?? false;
  if (options.forceShare && !readOnly) {
    throw new BlockError('invalid-argument', 'force-share (-U) can only be used with read-only images', { path });
  }
  // Every file of the layer (add-cow's image file too) is opened with the layer's sharing.
  const given = options.openStore ?? openLocation;
  const openStore: StoreOpener = options.forceShare ? (p, o) => given(p, { ...o, forceShare: true }) : given;
  const format = options.format ? findFormat(options.format, options.formats) : undefined;
  const store = await openStore(path, { readOnly });
  try {
    const fmt = format ?? (await probeStore(store, options.formats));
    if (!format && recordedBy && fmt.name === 'raw') {
      // CVE-2008-2004: a guest writes a format header into its raw disk; if
      // the backing is probed, the next open reads it as that format and
      // follows its backing name to any host file. Raw is only ever what
      // the user said (docs/security.md).
      throw new BlockError(
        'invalid-argument',
        `backing file '${recordedBy.name}' has no recorded format and is not one vdisk recognises; a backing file is never taken for raw by probing: if it is a raw disk, say so with --backing-as raw (library: backingFormats: ['raw'])`,
        { path: recordedBy.image, backing: path },
      );
    }
    return await fmt.open({ store, path, readOnly, openStore, options: { ignoreChecksums: options.ignoreChecksums, allowPaths: options.allowPaths } });
  } catch (e) {
    await store.close().catch(() => {});
    if (isBlockError(e)) throw e.withContext({ path });
    throw e;
  }
}

/**
 * Turn a recorded parent name into a location on the child's host: `\`
 * separators become `/`, relative names are taken from the child's folder
 * (VHD spec 2006, "Parent Locator": W2ru is relative to the child; VHDX
 * 2.6.2.6.3 relative_path) — a local folder, a bucket prefix, a URL folder.
 */
export function resolveParentName(name: string, childPath: string): string {
  let n = name.replace(/\\/g, '/');
  if (n.startsWith('./')) n = n.slice(2);
  const paths = hostFor(childPath).paths;
  if (paths.isAbsolute(n) || /^[A-Za-z]:\//.test(n)) return n;
  return paths.resolve(paths.dirname(childPath), n);
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
    let unrecorded = 0; // backings met so far whose format their child does not record
    while (!options.layerOnly && child.backing) {
      const ref = child.backing;
      if (layers.length >= depthLimit) {
        throw new BlockError('too-deep', `backing chain is deeper than the limit of ${depthLimit} layers`, { path: childPath });
      }
      const { image, path: parentPath } = await openParent(childPath, ref, options, seen, ref.format ? undefined : unrecorded++);
      layers.push(image);
      checkParent(child, childPath, ref, image, options, path);
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
  level: number | undefined,
): Promise<{ image: Image; path: string }> {
  const opened = await openBacking(childPath, ref, options, level);
  const key = await fileIdentity(opened.path);
  if (seen.has(key)) {
    await opened.image.close();
    throw new BlockError('loop', `backing chain loops back to ${opened.path}`, { path: childPath });
  }
  seen.add(key);
  return opened;
}

/**
 * Open the backing file `ref` names, alone (not its own backing): the first
 * candidate name that exists, kept inside the child's folder or an allowed
 * one, opened with the recorded format, else the `backingFormats` entry for
 * the `level`-th unrecorded backing (0: the first down the chain), else a
 * probe that must find more than raw. Read-only unless `writableBacking`.
 */
export async function openBacking(
  childPath: string,
  ref: BackingRef,
  options: ChainOpenOptions,
  level = 0,
): Promise<{ image: Image; path: string }> {
  const given = options.backingFormats ?? [];
  const format = ref.format ?? given[level];
  const tried: string[] = [];
  let refused: BlockError | undefined;
  for (const name of ref.candidates) {
    if (!name) continue;
    const candidate = resolveParentName(name, childPath);
    if (tried.includes(candidate)) continue;
    tried.push(candidate);
    // A Windows drive path (VHD W2ku, VHDX absolute_win32_path) names no file on this host.
    if (process.platform !== 'win32' && /^[A-Za-z]:\//.test(candidate)) continue;
    try {
      await checkContained(candidate, childPath, 'backing file', name, options.allowPaths);
      const image = await openLayerAt(
        candidate,
        { ...options, format, readOnly: options.writableBacking ? options.readOnly : true },
        format ? undefined : { image: childPath, name },
      );
      return { image, path: candidate };
    } catch (e) {
      if (isBlockError(e, 'not-found') && e.context.path === candidate) continue;
      // A refused name does not stop the search: another recorded name (VHD keeps several) may be fine.
      if (isBlockError(e, 'invalid-argument') && e.context.path === childPath && e.context.name === name) {
        refused ??= e;
        continue;
      }
      throw e;
    }
  }
  if (refused) throw refused;
  throw new BlockError(
    'not-found',
    `backing file '${ref.recorded}' not found (tried: ${tried.join(', ') || 'no usable name recorded'})`,
    { path: childPath, tried },
  );
}

function checkParent(child: Image, childPath: string, ref: BackingRef, parent: Image, options: ChainOpenOptions, topPath: string): void {
  if (ref.expectedId && parent.identity && ref.expectedId !== parent.identity && ref.alternateId !== parent.identity && !options.ignoreParentId) {
    throw new BlockError(
      'mismatch',
      `parent ${parent.path} is not the one this image was made from (expected id ${ref.expectedId}, parent has ${parent.identity}; --ignore-parent-id overrides)`,
      { path: childPath },
    );
  }
  if (ref.sameSize && parent.size !== child.size && !options.allowSizeMismatch) {
    throw new BlockError('mismatch', sizeMismatchMessage(child, parent, topPath), { path: childPath, parentSize: parent.size, childSize: child.size });
  }
}

/**
 * Why a child (VHD) and its parent of different sizes are refused, and the
 * way out: the VHD specification (2006, "Hard Disk Footer": a differencing
 * disk's Current Size is its parent's) and Windows tie them; a parent that
 * grew alone leaves its children behind until they grow too.
 */
function sizeMismatchMessage(child: Image, parent: Image, topPath: string): string {
  const grew = parent.size > child.size;
  return (
    `parent ${parent.path} is ${parent.size} bytes but the child is ${child.size}: a differencing ${child.format.toUpperCase()} must have its parent's size ` +
    `(the ${child.format.toUpperCase()} specification and Windows tie them)` +
    (grew
      ? `; the parent was grown without its children: grow the whole chain to the parent's size with \`vdisk resize --chain ${topPath} ${parent.size}\``
      : `; grow the chain to one size with \`vdisk resize --chain ${topPath} SIZE\` (SIZE at least ${Math.max(parent.size, child.size)})`)
  );
}
