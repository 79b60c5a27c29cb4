import { BlockError, isBlockError } from '../core/errors.js';
import { openChain, openLayer, resolveParentName, type ChainOpenOptions } from '../chain/open.js';
import { FORMATS } from '../formats/registry.js';
import type { CreateOption, IdentityChange, Image } from '../formats/types.js';
import { fileExists, fileIdentity, folderSiblings } from '../io/identity.js';
import { checkOptionValues } from './create.js';

/*
 * `vdisk amend` (qemu-img's verb for changing an existing image's
 * options): today one option, reset-identity, which gives a disk new
 * identifiers as Hyper-V's `Set-VHD -ResetDiskIdentifier` does — so that a
 * copy can sit beside its original (Hyper-V and VirtualBox refuse two disks
 * with one id). The format does the writes, crash-safe by its own rules
 * (formats/vhd/identity.ts, formats/vhdx/identity.ts).
 *
 * A child records its parent's id (VHD parent UUID, VHDX parent_linkage):
 * after a reset it no longer opens over this image. vdisk cannot know every
 * child (any folder, any machine may hold one), so it looks where children
 * usually are — the image's own folder — and refuses when an image there
 * names this one as its parent, by id or by name, unless `force`. A child
 * elsewhere is not seen: that is the caller's to know.
 */

/** What amend can change, in the shape of creation options (-o help lists them). */
export const AMEND_OPTIONS: readonly CreateOption[] = [
  {
    name: 'reset-identity',
    type: 'bool',
    description: 'give the disk new identifiers (VHD: UUID; VHDX: DataWriteGuid and virtual disk id), as Set-VHD -ResetDiskIdentifier',
    default: 'off',
  },
];

export interface AmendRequest {
  path: string;
  /** `-o` options: `{ 'reset-identity': 'on' }`. */
  options: Record<string, string>;
  /** Reset even when images in the folder record this one as their parent (they then no longer open over it). */
  force?: boolean;
  /** How to open the image (format, ignoreChecksums...); it is opened alone, writable. */
  openOptions?: ChainOpenOptions;
}

export interface AmendResult {
  path: string;
  format: string;
  /** The identifiers that changed, old and new. */
  changes: IdentityChange[];
  /** Images in the image's folder that recorded it as their parent (non-empty only with force). */
  children: string[];
}

const on = (v: string | undefined) => v !== undefined && ['on', 'true', 'yes'].includes(v);

export async function amendImage(req: AmendRequest): Promise<AmendResult> {
  checkOptionValues('amend', AMEND_OPTIONS, req.options);
  if (!on(req.options['reset-identity'])) {
    throw new BlockError('invalid-argument', 'nothing to amend: say what to change (-o reset-identity=on)', { path: req.path });
  }
  const chain = await openChain(req.path, { ...req.openOptions, layerOnly: true, readOnly: false });
  try {
    const top = chain.top;
    if (!top.resetIdentity) throw new BlockError('unsupported', `a ${top.format} image has no identity to reset`, { path: req.path });
    // Images in memory stores (a custom opener) have no folder to look in.
    const children = req.openOptions?.openStore ? [] : await childrenInFolder(req.path, top);
    if (children.length && !req.force) {
      throw new BlockError(
        'invalid-argument',
        `${children.length === 1 ? '1 image in this folder records this one as its parent' : `${children.length} images in this folder record this one as their parent`} (${children.join(', ')}): with a new identity ${children.length === 1 ? 'it' : 'they'} would no longer open over it. --force resets it anyway (then \`vdisk rebase -u -b IMAGE CHILD\` records the new identity in a child that should stay)`,
        { path: req.path },
      );
    }
    const changes = await top.resetIdentity();
    await top.flush();
    return { path: req.path, format: top.format, changes, children };
  } finally {
    await chain.close();
  }
}

/** The images beside `path` whose recorded parent is this image: by id (VHD parent UUID, VHDX linkage) or by a name that leads here. */
async function childrenInFolder(path: string, image: Image): Promise<string[]> {
  const self = await fileIdentity(path);
  const id = image.identity;
  // Never taken for raw (anything is raw); opened read-only and sharing, so a running VM's disk is only read.
  const formats = FORMATS.filter((f) => f.name !== 'raw');
  const found: string[] = [];
  for (const other of await folderSiblings(path)) {
    let layer: Image;
    try {
      layer = await openLayer(other, { readOnly: true, forceShare: true, formats, ignoreChecksums: true });
    } catch (e) {
      if (isBlockError(e)) continue; // not an image vdisk reads
      throw e;
    }
    try {
      const ref = layer.backing;
      if (!ref) continue;
      // Its recorded name leads here: a child. Its recorded id is this image's while no recorded name leads to
      // any file: a child too (of this image under another name, perhaps). A copy's original keeps its children:
      // a child whose name leads to the original is the original's, whatever id it records.
      let here = false;
      let elsewhere = false;
      for (const c of ref.candidates) {
        if (!c) continue;
        const target = resolveParentName(c, other);
        if ((await fileIdentity(target)) === self) here = true;
        else if (await fileExists(target)) elsewhere = true;
      }
      const sameId = id !== undefined && (ref.expectedId === id || ref.alternateId === id);
      if (here || (sameId && !elsewhere)) found.push(other);
    } finally {
      await layer.close();
    }
  }
  return found.sort();
}
