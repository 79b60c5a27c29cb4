import { BlockError, isBlockError } from '../core/errors.js';
import { nativeAddon, NATIVE_MAX_RANGE } from '../io/native.js';
import { nativeStore } from '../io/store.js';
import { openLocation, relativeName, resolveFrom } from '../io/hosts.js';
import { fileIdentity } from '../io/identity.js';
import type { StoreOpener } from '../io/store.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import type { Chain } from '../chain/chain.js';
import type { Format, Image } from '../formats/types.js';
import { describeBacking } from './create.js';
import { chainPieces, writeLayer, zeroLayer } from './walk.js';
import { isZero } from './zero.js';
import { copyIntoBlocks, type HostCopy } from './convert.js';

export interface CommitRequest {
  /** The top image. */
  path: string;
  /** `-b`: the ancestor to commit into (default: the top's backing file). */
  base?: string;
  /** `-d`: leave the top image as it is (do not empty it). */
  keepTop?: boolean;
  openOptions?: ChainOpenOptions;
  openStore?: StoreOpener;
  onProgress?: (done: number, total: number) => void;
  /** Copy buffer size (default 4 MiB). */
  bufferSize?: number;
  /**
   * Cache mode of the images written, as qemu-img commit's `-t`:
   * 'writeback' (default) syncs wherever the order below needs it;
   * 'unsafe' never syncs (flushes are no-ops, as qemu's cache=unsafe), so a
   * crash or power loss before the kernel has written the files back can
   * leave the chain broken or its data lost. For a pair that can be made
   * again, or when the caller syncs the files itself.
   */
  cache?: 'unsafe' | 'writeback';
  /**
   * false: copy through JavaScript even where the native addon could write
   * the base's file itself (see copyDown). For comparisons and tests; the
   * disk is the same.
   */
  native?: boolean;
}

export interface CommitResult {
  top: string;
  base: string;
  /** Bytes of data copied into the base (zeroed ranges not counted). */
  copied: number;
  /** The top layer was emptied (its data now lives in the base). */
  emptied: boolean;
  /** The top now names the base as its backing (it skipped intermediate layers, or the base's identity changed). */
  relinked: boolean;
  /** Layers between the top and the base: their own view of the disk changed, so they are no longer valid disks. */
  invalidated: string[];
  /** What the user should know (why the top was not emptied...). */
  notes: string[];
}

/**
 * Write what the top image and the layers above BASE hold into BASE.
 *
 * Order, chosen so that a crash at any point leaves every file openable and
 * the disk's content unchanged:
 *   0. where writing changes BASE's identity (VHDX: its DataWriteGuid, 2.2.2)
 *      and the top names BASE directly, the top first records BASE's next
 *      identity beside the current one (VHDX: parent_linkage2, 2.6.2.6.3,
 *      "a GUID that may be used as an alternative to parent_linkage"),
 *      durably: whichever identity BASE has after a crash from here on, the
 *      top accepts it and the chain opens without --ignore-parent-id. After
 *      an error, the top is relinked to BASE's identity as it then is (BASE
 *      flushed first), as step 3 would: BASE holds only what the layers
 *      above it show, so the chain is the same disk;
 *   1. copy: BASE is written only where a layer above it answers, so the
 *      chain (which reads those layers there) shows the same bytes throughout;
 *   2. flush BASE: its new content is durable before the top changes at all;
 *   3. relink the top to BASE when needed (layers skipped, or BASE's identity
 *      changed with the writes, or step 0 left a second identity to drop):
 *      BASE now shows the whole disk by itself, so the chain top -> BASE is
 *      the same disk; one metadata update (VHDX: journaled), after which the
 *      top names only BASE's final identity;
 *   4. empty the top (trim): each discarded range exposes BASE, which holds
 *      the same bytes; then cut the space the released blocks leave at the
 *      end of the top's file (Compactable.compact with nothing to release).
 */
export async function commitImage(req: CommitRequest): Promise<CommitResult> {
  const cache = req.cache ?? 'writeback';
  if (cache !== 'unsafe' && cache !== 'writeback') throw new BlockError('invalid-argument', `unknown cache mode '${cache}' (unsafe or writeback)`);
  const given = req.openStore ?? req.openOptions?.openStore ?? openLocation;
  const openStore: StoreOpener = cache === 'unsafe' ? (p, o) => given(p, o.readOnly ? o : { ...o, noSync: true }) : given;
  const bufferSize = req.bufferSize ?? 4 << 20;
  const chain = await openChain(req.path, { ...req.openOptions, openStore, readOnly: false, layerOnly: false, writableBacking: true });
  /** Set once step 0 has given the top a second identity for BASE. */
  let prelinked: { top: Image; base: Image } | undefined;
  try {
    const top = chain.top;
    if (chain.layers.length < 2) {
      throw new BlockError('invalid-argument', 'image has no backing file: there is nothing to commit into', { path: req.path });
    }
    const baseDepth = req.base === undefined ? 1 : await findBase(chain, req.path, req.base);
    const base = chain.layers[baseDepth];
    if (base.readOnly) {
      throw new BlockError('read-only', `the base ${base.path} cannot be written (${base.format} opened read-only)`, {
        path: req.path,
      });
    }
    const result: CommitResult = {
      top: top.path,
      base: base.path,
      copied: 0,
      emptied: false,
      relinked: false,
      invalidated: chain.layers.slice(1, baseDepth).map((l) => l.path),
      notes: [],
    };
    const next = base.nextIdentity?.();
    if (baseDepth === 1 && top.setBacking && next !== undefined && next !== base.identity && top.backing?.expectedId === base.identity) {
      await relink(top, base, openStore, req.openOptions?.formats, next);
      prelinked = { top, base };
    }
    if (base.size < top.size) await growBase(base, top.size);

    result.copied = await copyDown(chain, baseDepth, bufferSize, req.native !== false, req.onProgress);
    await base.flush();

    const needRelink = baseDepth > 1 || top.backing?.alternateId !== undefined || (top.backing?.expectedId !== undefined && base.identity !== undefined && top.backing.expectedId !== base.identity);
    if (needRelink) {
      if (top.setBacking) {
        await relink(top, base, openStore, req.openOptions?.formats);
        result.relinked = true;
      } else {
        result.notes.push(
          baseDepth > 1
            ? `the top (${top.format}) cannot be re-pointed to the base, so it keeps its data and its backing (as qemu-img: -b implies -d)`
            : `the top (${top.format}) cannot record the base's new identity; open it with --ignore-parent-id`,
        );
      }
    }
    if (!req.keepTop) {
      if (baseDepth > 1 && !result.relinked) {
        /* noted above: emptying would expose the intermediate layers */
      } else if (top.trim) {
        await top.trim(0, top.size);
        await top.flush();
        // The released blocks' space at the end of the file is cut off (a compaction with nothing more to release).
        if (top.compact) await top.compact([], { dryRun: false });
        result.emptied = true;
      } else {
        result.notes.push(`format ${top.format} cannot discard data: the top keeps its data (the base now holds the same bytes)`);
      }
    }
    await chain.close();
    return result;
  } catch (e) {
    if (prelinked) {
      // Step 0 done, the commit not: name BASE as it now is (see the order above). Best effort: the top accepts either identity meanwhile.
      const { top, base } = prelinked;
      await (async () => {
        await base.flush();
        await relink(top, base, openStore, req.openOptions?.formats);
      })().catch(() => {});
    }
    // The failure is what the user needs to hear about, not a second one from closing after it (a full disk fails both).
    await chain.close().catch(() => {});
    throw e;
  }
}

/** The depth of BASE in the chain: matched by real path, a relative name taken from the cwd or the top's folder. */
async function findBase(chain: Chain, topPath: string, base: string): Promise<number> {
  const key = fileIdentity;
  const wanted = new Set([await key(base), await key(resolveFrom(topPath, base))]);
  for (let d = 1; d < chain.layers.length; d++) if (wanted.has(await key(chain.layers[d].path))) return d;
  if (wanted.has(await key(topPath))) throw new BlockError('invalid-argument', 'the base must be below the top image, not the top itself', { path: topPath });
  throw new BlockError('not-found', `'${base}' is not in the backing chain of this image (${chain.layers.map((l) => l.path).join(' -> ')})`, {
    path: topPath,
  });
}

async function growBase(base: Image, size: number): Promise<void> {
  if (!base.resize) {
    throw new BlockError('out-of-range', `the base is ${base.size} bytes, smaller than the top (${size}), and ${base.format} cannot be resized`, {
      path: base.path,
    });
  }
  // Content-preserving: past its old end the base read as zeros, and still does.
  await base.resize(size, {});
  await base.flush();
}

/** Bytes of layer data handed to the native copier at once (one fillBlocks batch: one BAT update, one VHDX log commit). */
const NATIVE_BATCH = 1 << 30;

/**
 * Copy every range a layer above `baseDepth` answers for into the base.
 * Returns bytes of data written.
 *
 * Where the base places its own blocks for a copier (Image.fillBlocks:
 * dynamic VHD, VHDX without a parent) and the native addon is built, data
 * that lies as-is in a layer's file goes file to file in batches
 * (copyIntoBlocks): into the base's allocated blocks in place, zeros
 * included (they replace older data), into new blocks with zero granules
 * skipped (a new block reads as zeros already); the base records the new
 * blocks once per batch. Everything else (zero ranges, data a layer cannot
 * hand over as a file range, unaligned pieces) goes through JavaScript, as
 * before. The written count then counts the bytes the copier wrote.
 */
async function copyDown(chain: Chain, baseDepth: number, bufferSize: number, native: boolean, onProgress?: (done: number, total: number) => void): Promise<number> {
  const base = chain.layers[baseDepth];
  const readBelow = (o: number, into: Uint8Array) => chain.readFrom(baseDepth, o, into);
  const buf = new Uint8Array(bufferSize);
  const addon = native && base.fillBlocks && bufferSize <= NATIVE_MAX_RANGE && nativeStore(base.hostStore) !== undefined && !base.readOnly ? nativeAddon() : null;
  const align = base.logicalSectorSize;
  let copied = 0;
  let batch: HostCopy[] = [];
  let batchBytes = 0;
  const flushBatch = async () => {
    if (!batch.length) return;
    copied += await copyIntoBlocks(addon!, base.fillBlocks!, batch, 4096, true);
    batch = [];
    batchBytes = 0;
  };
  for await (const p of chainPieces(chain, bufferSize)) {
    if (p.depth < baseDepth) {
      const store = addon && p.kind === 'data' && p.hostOffset !== undefined ? nativeStore(chain.layers[p.depth].hostStore) : undefined;
      if (store && p.offset % align === 0 && p.length % align === 0) {
        batch.push({ store, from: p.hostOffset!, offset: p.offset, length: p.length });
        batchBytes += p.length;
        if (batchBytes >= NATIVE_BATCH) await flushBatch();
      } else {
        const data = buf.subarray(0, p.length);
        if (p.kind === 'data') await chain.read(p.offset, data);
        if (p.kind === 'zero' || isZero(data)) await zeroLayer(base, p.offset, p.length, readBelow);
        else {
          await writeLayer(base, p.offset, data, readBelow);
          copied += p.length;
        }
      }
    }
    onProgress?.(p.offset + p.length, chain.size);
  }
  await flushBatch();
  return copied;
}

/**
 * Point the top at the base (rebase -u): the base alone now shows what the
 * layers between showed. With `nextIdentity` (step 0), the top records it as
 * the base's second accepted identity.
 */
async function relink(top: Image, base: Image, openStore: StoreOpener, formats?: readonly Format[], nextIdentity?: string): Promise<void> {
  const name = relativeName(top.path, base.path) || base.path;
  let described: Awaited<ReturnType<typeof describeBacking>>;
  try {
    // The base is open (and write-locked) here already: this second, read-only open shares it rather than refusing.
    const sharing: StoreOpener = (p, o) => openStore(p, { ...o, forceShare: true });
    described = await describeBacking(top.path, { path: name, format: base.format }, sharing, false, formats);
  } catch (e) {
    if (isBlockError(e)) throw e.withContext({ operation: 'commit: re-pointing the top at the base' });
    throw e;
  }
  try {
    await top.setBacking!(nextIdentity === undefined ? described.target : { ...described.target, nextIdentity });
    await top.flush();
  } finally {
    await described.close();
  }
}
