import { BlockError } from '../core/errors.js';
import { parseOptions } from './options.js';

export { parseOptions };
import { folderOf, hostFor, openLocation, resolveFrom } from '../io/hosts.js';
import { modifiedTime, sameFile } from '../io/identity.js';
import { Staging, type FileHost } from '../io/staging.js';
import type { Store, StoreOpener } from '../io/store.js';
import { openChain, openLayer, probeStore, type ChainOpenOptions } from '../chain/open.js';
import { findFormat } from '../formats/registry.js';
import type { BackingTarget, CreateOption, Format } from '../formats/types.js';

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
  /** Replace an existing file at `path` (atomically, when the new image is complete). Without it an existing file is refused. */
  overwrite?: boolean;
  /** Abort the create: the new files are removed and the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * How files are named and removed (io/staging.ts): the image is written
   * under a temporary name and renamed into place when complete. Default:
   * the host's file system when `openStore` is not given. With a custom
   * `openStore` and no `host`, files are created under their final names
   * (nothing can rename them) and `overwrite` is refused.
   */
  host?: FileHost;
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
  /** Said when `-o azure=on` rounded the size up to a whole MiB: from what to what (never silently). */
  note?: string;
}

/** The note for a size `-o azure=on` rounded up (create, convert, upload). */
export function azureRoundingNote(options: Record<string, string> | undefined, from: number, to: number): string | undefined {
  if (from === to || !['on', 'true', 'yes'].includes(options?.azure ?? '')) return undefined;
  return `note: size rounded up from ${from} to ${to} bytes (Azure takes a whole number of MiB)`;
}

/**
 * Where a backing path given on the command line points: like qemu-img, a
 * relative backing name is relative to the new image's folder.
 */
export function backingAbsolute(childPath: string, backingPath: string): string {
  return resolveFrom(childPath, backingPath);
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
): Promise<{ target: BackingTarget; layers: readonly string[]; close: () => Promise<void> }> {
  const absolutePath = backingAbsolute(childPath, backing.path);
  const chain = await openChain(absolutePath, { ...chainOptions, format: backing.format, readOnly: true, openStore, ignoreParentId, formats });
  const top = chain.top;
  const mtime = (await modifiedTime(absolutePath)) ?? new Date(); // memory stores have none
  return {
    target: { path: backing.path, absolutePath, format: top.format, size: top.size, identity: top.identity, image: top, mtime },
    layers: chain.layers.map((l) => l.path),
    close: () => chain.close(),
  };
}

/**
 * The staging of a new image at `path` (see io/staging.ts), or undefined
 * when the caller's stores have no host to rename on.
 */
export function stagingFor(
  path: string,
  req: { openStore?: StoreOpener; host?: FileHost; overwrite?: boolean },
  openStore: StoreOpener,
  durable: boolean,
): Staging | undefined {
  const host = req.host ?? (req.openStore ? undefined : hostFor(path).files);
  if (!host) {
    if (req.overwrite) throw new BlockError('invalid-argument', 'overwrite needs a host that can rename files (give `host` with `openStore`)', { path });
    return undefined;
  }
  return new Staging(path, { openStore, host, overwrite: req.overwrite, durable });
}

/**
 * Folders the names a user gives at create lead into beyond the image's own
 * (`-o image_file=` of add-cow, relative to the image): reopening the new
 * image must not refuse the user's own names (docs/security.md).
 */
export function ownFolders(imagePath: string, options: Record<string, string> | undefined): string[] {
  const imageFile = options?.image_file;
  return imageFile ? [folderOf(resolveFrom(imagePath, imageFile.replace(/\\/g, '/')))] : [];
}

/**
 * Create an image. The files are made under temporary names in the image's
 * folder and renamed into place only when complete and flushed; on any
 * error or abort they are removed (issue 16).
 */
export async function createImage(req: CreateRequest): Promise<CreateResult> {
  req.signal?.throwIfAborted();
  const openStore = req.openStore ?? openLocation;
  // The formats flush what they create; the folder is synced after the rename.
  const staging = stagingFor(req.path, req, openStore, true);
  if (!staging) return createWith(req, openStore);
  try {
    const r = await createWith(req, staging.opener);
    req.signal?.throwIfAborted();
    await staging.commit();
    return r;
  } catch (e) {
    const err = staging.rename(e);
    await staging.discard();
    throw err;
  }
}

/** Create the image through `openStore` (a staging's opener, when staged). */
export async function createWith(req: CreateRequest, openStore: StoreOpener): Promise<CreateResult> {
  const format = findFormat(req.format);
  if (!format.create) throw new BlockError('unsupported', `format ${format.name} cannot be created`, { path: req.path });
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
      // Replacing a file of the new image's own backing chain would leave an
      // image that is its own ancestor, and the data it was to read gone.
      if (req.overwrite) {
        for (const layer of described.layers) {
          if (await sameFile(layer, req.path)) {
            throw new BlockError('invalid-argument', `--overwrite would replace ${layer}, which is in the new image's backing chain`, { path: req.path });
          }
        }
      }
    }
    const size = req.size ?? described?.target.size;
    if (size === undefined) throw new BlockError('invalid-argument', 'image size is required (no backing file to take it from)');
    validateSize(size, format.maxSize, format.name);
    // The registry is asked for the format: a format that must recognise a file at create cannot import it (types.ts, CreateContext.probe).
    const probe = async (store: Store) => (await probeStore(store)).name;
    req.signal?.throwIfAborted();
    await format.create({ path: req.path, size, options, backing: described?.target, openStore, probe });
  } finally {
    await described?.close();
  }
  // Report the size the image really got.
  // Every name in the new image is the user's own (an add-cow image_file may lie in another folder).
  const img = await openLayer(req.path, { format: format.name, readOnly: true, openStore, allowPaths: ownFolders(req.path, options) });
  try {
    const requestedSize = req.size ?? img.size;
    return { path: req.path, format: format.name, size: img.size, requestedSize, note: azureRoundingNote(options, requestedSize, img.size) };
  } finally {
    await img.close();
  }
}

/** Every `-o` key must be one of the format's createOptions, with a valid value (create, measure). */
export function checkCreateOptions(format: Format, options: Record<string, string>): void {
  checkOptionValues(`format ${format.name}`, format.createOptions, options);
}

/** Every key one of `specs`, with a valid value (`what` names the owner in messages: "format vhd", "amend"). */
export function checkOptionValues(what: string, specs: readonly CreateOption[], options: Record<string, string>): void {
  for (const key of Object.keys(options)) {
    const spec = specs.find((o) => o.name === key);
    if (!spec) {
      const known = specs.map((o) => o.name).join(', ') || 'none';
      throw new BlockError('invalid-argument', `${what} has no option '${key}' (options: ${known})`);
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
