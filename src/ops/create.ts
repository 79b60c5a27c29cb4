import { stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { BlockError } from '../core/errors.js';
import { parseOptions } from './options.js';

export { parseOptions };
import { openFileStore } from '../io/file-store.js';
import type { Store, StoreOpener } from '../io/store.js';
import { openChain, openLayer, probeStore, type ChainOpenOptions } from '../chain/open.js';
import { findFormat } from '../formats/registry.js';
import type { BackingTarget, Format } from '../formats/types.js';

export interface CreateRequest {
  path: string;
  format: string;
  /** Virtual size in bytes; defaults to the backing file's size. */
  size?: number;
  /** `-o key=value` options. `backing_file` and `backing_fmt` are accepted as -b / -F. */
  options?: Record<string, string>;
  backing?: { path: string; format?: string };
  openStore?: StoreOpener;
  /** Accept a backing chain whose parent ids do not match. */
  ignoreParentId?: boolean;
  /** How the chain under the backing file is opened: its recorded names and unrecorded formats (docs/security.md). */
  backingOpenOptions?: BackingChainOptions;
}

/** The open options that concern names and formats recorded in the chain under a backing file named by the user. */
type BackingChainOptions = Pick<ChainOpenOptions, 'allowPaths' | 'backingFormats'>;

export interface CreateResult {
  path: string;
  format: string;
  /** The size the image really has (a format may round the request, e.g. VHD CHS geometry). */
  size: number;
  requestedSize: number;
}

/**
 * Where a backing path given on the command line points: like qemu-img, a
 * relative backing name is relative to the new image's folder.
 */
export function backingAbsolute(childPath: string, backingPath: string): string {
  return isAbsolute(backingPath) ? backingPath : resolve(dirname(resolve(childPath)), backingPath);
}

/** Open a backing file (and its chain, to prove it opens) and describe it for a child. */
export async function describeBacking(
  childPath: string,
  backing: { path: string; format?: string },
  openStore: StoreOpener,
  ignoreParentId = false,
  /** The formats to choose from (default: the registry; tests and embedders may add their own). */
  formats?: readonly Format[],
  chainOptions: BackingChainOptions = {},
): Promise<{ target: BackingTarget; close: () => Promise<void> }> {
  const absolutePath = backingAbsolute(childPath, backing.path);
  const chain = await openChain(absolutePath, { ...chainOptions, format: backing.format, readOnly: true, openStore, ignoreParentId, formats });
  const top = chain.top;
  let mtime = new Date();
  try {
    mtime = (await stat(absolutePath)).mtime;
  } catch {
    /* memory stores have no mtime */
  }
  return {
    target: { path: backing.path, absolutePath, format: top.format, size: top.size, identity: top.identity, image: top, mtime },
    close: () => chain.close(),
  };
}

/**
 * Folders the names a user gives at create lead into beyond the image's own
 * (`-o image_file=` of add-cow, relative to the image): reopening the new
 * image must not refuse the user's own names (docs/security.md).
 */
export function ownFolders(imagePath: string, options: Record<string, string> | undefined): string[] {
  const imageFile = options?.image_file;
  return imageFile ? [dirname(resolve(dirname(resolve(imagePath)), imageFile.replace(/\\/g, '/')))] : [];
}

export async function createImage(req: CreateRequest): Promise<CreateResult> {
  const format = findFormat(req.format);
  if (!format.create) throw new BlockError('unsupported', `format ${format.name} cannot be created`, { path: req.path });
  const openStore = req.openStore ?? openFileStore;
  const options = { ...(req.options ?? {}) };
  let backing = req.backing;
  if (options.backing_file !== undefined) {
    if (backing) throw new BlockError('invalid-argument', 'backing file given twice (-b and -o backing_file)');
    backing = { path: options.backing_file, format: options.backing_fmt };
  } else if (options.backing_fmt !== undefined && backing) {
    backing = { ...backing, format: backing.format ?? options.backing_fmt };
  }
  delete options.backing_file;
  delete options.backing_fmt;
  checkCreateOptions(format, options);

  let described: Awaited<ReturnType<typeof describeBacking>> | undefined;
  try {
    if (backing) {
      described = await describeBacking(req.path, backing, openStore, req.ignoreParentId, undefined, req.backingOpenOptions);
    }
    const size = req.size ?? described?.target.size;
    if (size === undefined) throw new BlockError('invalid-argument', 'image size is required (no backing file to take it from)');
    validateSize(size, format.maxSize, format.name);
    // The registry is asked for the format: a format that must recognise a file at create cannot import it (types.ts, CreateContext.probe).
    const probe = async (store: Store) => (await probeStore(store)).name;
    await format.create({ path: req.path, size, options, backing: described?.target, openStore, probe });
  } finally {
    await described?.close();
  }
  // Report the size the image really got.
  // Every name in the new image is the user's own (an add-cow image_file may lie in another folder).
  const img = await openLayer(req.path, { format: format.name, readOnly: true, openStore, allowPaths: ownFolders(req.path, options) });
  try {
    return { path: req.path, format: format.name, size: img.size, requestedSize: req.size ?? img.size };
  } finally {
    await img.close();
  }
}

/** Every `-o` key must be one of the format's createOptions, with a valid value (create, measure). */
export function checkCreateOptions(format: Format, options: Record<string, string>): void {
  for (const key of Object.keys(options)) {
    const spec = format.createOptions.find((o) => o.name === key);
    if (!spec) {
      const known = format.createOptions.map((o) => o.name).join(', ') || 'none';
      throw new BlockError('invalid-argument', `format ${format.name} has no option '${key}' (options: ${known})`);
    }
    if (spec.type === 'enum' && spec.values && !spec.values.includes(options[key])) {
      throw new BlockError('invalid-argument', `option ${key} must be one of ${spec.values.join(', ')} (got '${options[key]}')`);
    }
    if (spec.type === 'bool' && !['on', 'off', 'true', 'false', 'yes', 'no'].includes(options[key])) {
      throw new BlockError('invalid-argument', `option ${key} must be on or off (got '${options[key]}')`);
    }
  }
}

export function validateSize(size: number, max: number, formatName: string): void {
  if (!Number.isSafeInteger(size) || size < 0) throw new BlockError('invalid-argument', `invalid image size ${size}`);
  if (size % 512 !== 0) throw new BlockError('invalid-argument', `image size ${size} is not a multiple of 512 bytes (one sector)`);
  if (size > max) {
    throw new BlockError('out-of-range', `image size ${size} is larger than the ${formatName} format allows (${max} bytes)`);
  }
}
