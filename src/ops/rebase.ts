import { BlockError } from '../core/errors.js';
import { openLocation } from '../io/hosts.js';
import { fileIdentity } from '../io/identity.js';
import type { StoreOpener } from '../io/store.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import type { Chain } from '../chain/chain.js';
import type { BackingTarget } from '../formats/types.js';
import { backingAbsolute, describeBacking } from './create.js';
import { chainPieces } from './walk.js';
import { granuleRuns, isZero, sameChecker } from './zero.js';

export interface RebaseRequest {
  path: string;
  /** The new backing file; null (or an empty path, `-b ""`) removes the backing. */
  backing: { path: string; format?: string } | null;
  /** `-u`: rewrite the reference only, copying nothing (the caller vouches the content matches). */
  unsafe?: boolean;
  openOptions?: ChainOpenOptions;
  openStore?: StoreOpener;
  onProgress?: (done: number, total: number) => void;
  /** Copy buffer size (default 4 MiB). */
  bufferSize?: number;
}

export interface RebaseResult {
  path: string;
  /** The backing now recorded (null: the image stands alone). */
  backing: string | null;
  /** Bytes copied into the image so its content stays the same. */
  copied: number;
}

/** Compare old and new backing in granules of this size: coarse enough for native compares, fine enough to copy little. */
const GRANULE = 64 * 1024;

/**
 * Give an image a new backing file (or none). In safe mode every range where
 * the image defers to its backing and the old and new backings differ is
 * first copied into the image, so the disk's content does not change; only
 * then is the reference rewritten (one metadata update by the format). A
 * crash before the rewrite leaves the old chain showing the same bytes (the
 * copied ranges hold exactly what the old backing showed); after it, the new.
 */
export async function rebaseImage(req: RebaseRequest): Promise<RebaseResult> {
  const openStore = req.openStore ?? req.openOptions?.openStore ?? openLocation;
  const bufferSize = req.bufferSize ?? 4 << 20;
  const wanted = req.backing && req.backing.path !== '' ? req.backing : null;
  // -u needs no old backing (it may be the very thing that went missing).
  const chain = await openChain(req.path, { ...req.openOptions, openStore, readOnly: false, layerOnly: Boolean(req.unsafe) });
  let newChain: Chain | undefined;
  let described: Awaited<ReturnType<typeof describeBacking>> | undefined;
  try {
    const top = chain.top;
    // -b "" on an image without a backing (already flattened, or never had one): nothing to do, as qemu-img. A rerun after an interrupted flatten ends here.
    if (!wanted && !top.backing) return { path: req.path, backing: null, copied: 0 };
    if (!top.setBacking) {
      throw new BlockError('unsupported', `format ${top.format} cannot change its backing file`, { path: req.path });
    }
    // Refused before anything is copied in (a copy followed by a refusal would leave the image grown for nothing).
    if (!wanted && top.flattenRefusal) throw new BlockError('unsupported', top.flattenRefusal, { path: req.path });
    let target: BackingTarget | null = null;
    if (wanted) {
      // The chain under the new backing: its names and unrecorded formats follow the same user options as the top's chain.
      const { ignoreParentId, formats, allowPaths, backingFormats } = req.openOptions ?? {};
      const chainOptions = { allowPaths, backingFormats };
      newChain = await openChain(backingAbsolute(req.path, wanted.path), { ...chainOptions, format: wanted.format, readOnly: true, openStore, ignoreParentId, formats });
      await refuseLoop(req.path, newChain);
      described = await describeBacking(req.path, wanted, openStore, ignoreParentId, formats, chainOptions);
      target = described.target;
      if (top.backing?.sameSize && target.size !== top.size) {
        throw new BlockError('mismatch', `the new backing file is ${target.size} bytes but this ${top.format} image is ${top.size}; its backing must have the same size`, {
          path: req.path,
        });
      }
    }
    let copied = 0;
    if (!req.unsafe) {
      copied = await copyDifferences(chain, newChain, bufferSize, req.onProgress);
      await top.flush();
    }
    await top.setBacking(target);
    await top.flush();
    return { path: req.path, backing: wanted ? wanted.path : null, copied };
  } finally {
    await described?.close();
    await newChain?.close();
    await chain.close();
  }
}

async function refuseLoop(childPath: string, newChain: Chain): Promise<void> {
  const key = fileIdentity;
  const self = await key(childPath);
  for (const l of newChain.layers) {
    if ((await key(l.path)) === self) throw new BlockError('loop', `the new backing chain contains this image itself (${l.path})`, { path: childPath });
  }
}

/**
 * Where the image defers to its backing, copy in what the old backing shows
 * wherever the new one (null: none) shows something else.
 */
async function copyDifferences(chain: Chain, newChain: Chain | undefined, bufferSize: number, onProgress?: (done: number, total: number) => void): Promise<number> {
  const oldBuf = new Uint8Array(bufferSize);
  const newBuf = new Uint8Array(bufferSize);
  let copied = 0;
  for await (const p of chainPieces(chain, bufferSize)) {
    if (p.depth > 0) copied += await copyPiece(chain, newChain, p, oldBuf.subarray(0, p.length), newBuf.subarray(0, p.length));
    onProgress?.(p.offset + p.length, chain.size);
  }
  return copied;
}

async function copyPiece(
  chain: Chain,
  newChain: Chain | undefined,
  p: { offset: number; length: number; kind: 'data' | 'zero' },
  old: Uint8Array,
  neu: Uint8Array,
): Promise<number> {
  const newZero = await knownZero(newChain, p.offset, p.length);
  if (p.kind === 'zero' && newZero) return 0;
  if (p.kind === 'zero') old.fill(0);
  else await chain.read(p.offset, old);
  if (newZero) neu.fill(0);
  else await readNew(newChain!, p.offset, neu);
  let copied = 0;
  const same = sameChecker(old, neu);
  for (const run of granuleRuns(old, p.offset, GRANULE, same)) {
    if (run.same) continue;
    const part = old.subarray(run.from, run.to);
    if (isZero(part)) await chain.writeZeroes(p.offset + run.from, part.length);
    else {
      await chain.write(p.offset + run.from, part);
      copied += part.length;
    }
  }
  return copied;
}

/** The new backing shows zeros over the whole range (no backing at all, past its end, or zero extents). */
async function knownZero(newChain: Chain | undefined, offset: number, length: number): Promise<boolean> {
  if (!newChain || offset >= newChain.size) return true;
  const n = Math.min(length, newChain.size - offset);
  return (await newChain.blockStatus(offset, n)).every((e) => e.kind === 'zero');
}

/** Read the new backing's view; a backing shorter than the image reads zeros past its end. */
async function readNew(newChain: Chain, offset: number, into: Uint8Array): Promise<void> {
  const inside = Math.max(0, Math.min(into.length, newChain.size - offset));
  if (inside > 0) await newChain.read(offset, into.subarray(0, inside));
  into.fill(0, inside);
}
