import { createCipheriv, createHash } from 'node:crypto';
import { mkdir, open, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { rng } from '../test/helpers/random.js';
import { createImage, openChain } from '../src/index.js';
import { runOk } from './measure.js';
import { formatAvailable } from './peers.js';

/**
 * Deterministic inputs, rebuilt for every bench run (the chain is written by
 * vdisk itself, so it must follow the current code):
 *
 *   in.raw     SIZE bytes, sparse; exactly half of its GRANULE-sized blocks
 *              hold seeded random data, the rest are holes
 *   in.vhd     qemu-img convert -O vpc (dynamic, force_size) of in.raw
 *   in.vhdx    qemu-img convert -O vhdx (dynamic, qemu's default block size) of in.raw
 *   big.raw    BIG_SIZE bytes, sparse, a few MiB of data
 *   huge.vhdx  qemu-img create -f vhdx, 64 TiB, empty
 *   chain-NN.vhd  differencing children written by vdisk on top of in.vhd:
 *              chain[d-1] is the top of a chain of depth d (chain[0] = in.vhd)
 */
export interface Scale {
  size: number;
  granule: number;
  bigSize: number;
  hugeSize: number;
  chainDepth: number;
  /** Full granules and 64 KiB pieces each child layer writes. */
  layerGranules: number;
  layerPieces: number;
}

export const FULL_SCALE: Scale = {
  size: 1 << 30,
  granule: 2 << 20,
  bigSize: 64 * 2 ** 30,
  hugeSize: 64 * 2 ** 40,
  chainDepth: 20,
  layerGranules: 8,
  layerPieces: 32,
};

export const SMOKE_SCALE: Scale = {
  size: 16 << 20,
  granule: 2 << 20,
  bigSize: 4 * 2 ** 30,
  hugeSize: 64 * 2 ** 40,
  chainDepth: 5,
  layerGranules: 1,
  layerPieces: 4,
};

/**
 * `--large`: the 4 GiB set beside the 1 GiB one (the same shape: half of
 * the 2 MiB blocks random data, the rest holes), in its own folder:
 *
 *   large/in.raw, in.vhd, in.vhdx   as above, 4 GiB
 *   large/chain-02..05.vhd          a depth-5 VHD chain over large/in.vhd
 *   large/commit/parent.vhd         = in.vhd (4 GiB, 2 GiB of data)
 *   large/commit/child.vhd          its differencing child holding 1 GiB of
 *                                   data (512 whole 2 MiB blocks)
 *   large/dense-1g.raw              1 GiB of data and no holes: the cp
 *                                   reference for the commit
 */
export interface LargeInputs {
  dir: string;
  size: number;
  dataBytes: number;
  raw: string;
  vhd: string;
  vhdx: string;
  chain5?: string;
  commitDir?: string;
  commitChildBytes: number;
  dense: string;
  missing: Record<string, string>;
}

const LARGE_SIZE = 4 * 2 ** 30;

export async function buildLargeInputs(root: string, log: (s: string) => void): Promise<LargeInputs> {
  const dir = join(root, 'large');
  await mkdir(dir, { recursive: true });
  const missing: Record<string, string> = {};
  const granule = 2 << 20;
  const n = LARGE_SIZE / granule;
  const raw = join(dir, 'in.raw');
  const dataBytes = await writeSparse(raw, LARGE_SIZE, pick(n, n / 2, SEED + 7).map((g) => ({ offset: g * granule, length: granule })), SEED + 7);
  const vhd = join(dir, 'in.vhd');
  await runOk(['qemu-img', 'convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', raw, vhd]);
  const vhdx = join(dir, 'in.vhdx');
  await runOk(['qemu-img', 'convert', '-f', 'raw', '-O', 'vhdx', '-o', 'subformat=dynamic', raw, vhdx]);
  log(`  large/in.raw, in.vhd, in.vhdx: ${LARGE_SIZE} bytes, ${dataBytes} of data`);
  const dense = join(dir, 'dense-1g.raw');
  await writeSparse(dense, 2 ** 30, [{ offset: 0, length: 2 ** 30 }], SEED + 8);
  let chain5: string | undefined;
  let commitDir: string | undefined;
  const commitChildBytes = 2 ** 30;
  const why = formatAvailable('vhd', true);
  if (why) missing.chain = missing.commit = why;
  else {
    const chain: string[] = [];
    await buildChain(dir, vhd, { size: LARGE_SIZE, granule, chainDepth: 5, layerGranules: 8, layerPieces: 32 }, chain);
    chain5 = chain[4];
    log('  large/chain-02..05.vhd: differencing children written by vdisk');
    commitDir = join(dir, 'commit');
    await mkdir(commitDir, { recursive: true });
    await runOk(['cp', '--sparse=always', '-p', vhd, join(commitDir, 'parent.vhd')]);
    const child = join(commitDir, 'child.vhd');
    await createImage({ path: child, format: 'vhd', backing: { path: 'parent.vhd', format: 'vhd' } });
    const c = await openChain(child, { readOnly: false });
    try {
      const bytes = seededBytes(SEED + 9);
      for (const g of pick(n, commitChildBytes / granule, SEED + 10)) await c.write(g * granule, bytes(granule));
      await c.flush();
    } finally {
      await c.close();
    }
    log('  large/commit/child.vhd: 1 GiB of data over large/commit/parent.vhd');
  }
  return { dir, size: LARGE_SIZE, dataBytes, raw, vhd, vhdx, chain5, commitDir, commitChildBytes, dense, missing };
}

export interface Inputs {
  dir: string;
  scale: Scale;
  /** Bytes of data (non-hole) in in.raw. */
  dataBytes: number;
  raw: string;
  vhd?: string;
  vhdx?: string;
  bigRaw: string;
  hugeVhdx?: string;
  /** chain[d-1] = top of the depth-d chain; empty when vdisk cannot write VHD yet. */
  chain: string[];
  /** ac.add-cow over in.raw with half of its granules written (image file: ac.add-cow.raw). */
  addCow?: string;
  /** Why some inputs are missing. */
  missing: Record<string, string>;
}

const SEED = 0x5eed;

/** A seeded byte stream: AES-128-CTR keystream (fast, and the same bytes on every machine). */
function seededBytes(seed: number): (n: number) => Buffer {
  const key = createHash('sha256').update(`vdisk-bench-${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return (n) => cipher.update(Buffer.alloc(n));
}

/** Pick `count` distinct indexes out of [0, n) with a seeded shuffle, sorted. */
function pick(n: number, count: number, seed: number): number[] {
  const r = rng(seed);
  const idx = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, count).sort((a, b) => a - b);
}

async function writeSparse(path: string, size: number, chunks: { offset: number; length: number }[], seed: number): Promise<number> {
  const bytes = seededBytes(seed);
  const fh = await open(path, 'w');
  let total = 0;
  try {
    await fh.truncate(size);
    for (const c of chunks) {
      for (let o = 0; o < c.length; o += 8 << 20) {
        const buf = bytes(Math.min(8 << 20, c.length - o));
        await fh.write(buf, 0, buf.length, c.offset + o);
        total += buf.length;
      }
    }
  } finally {
    await fh.close();
  }
  return total;
}

export async function buildInputs(dir: string, scale: Scale, log: (s: string) => void): Promise<Inputs> {
  const missing: Record<string, string> = {};
  const nGranules = scale.size / scale.granule;
  const raw = join(dir, 'in.raw');
  const dataBytes = await writeSparse(
    raw,
    scale.size,
    pick(nGranules, nGranules / 2, SEED).map((g) => ({ offset: g * scale.granule, length: scale.granule })),
    SEED,
  );
  log(`  in.raw: ${scale.size} bytes, ${dataBytes} of data`);

  const vhd = join(dir, 'in.vhd');
  await runOk(['qemu-img', 'convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', raw, vhd]);
  const vhdx = join(dir, 'in.vhdx');
  await runOk(['qemu-img', 'convert', '-f', 'raw', '-O', 'vhdx', '-o', 'subformat=dynamic', raw, vhdx]);
  log('  in.vhd, in.vhdx: made by qemu-img convert');

  const bigRaw = join(dir, 'big.raw');
  const bigChunks = pick(scale.bigSize / scale.granule, 8, SEED + 1).map((g) => ({ offset: g * scale.granule, length: 1 << 20 }));
  await writeSparse(bigRaw, scale.bigSize, bigChunks, SEED + 1);
  const hugeVhdx = join(dir, 'huge.vhdx');
  await runOk(['qemu-img', 'create', '-q', '-f', 'vhdx', hugeVhdx, String(scale.hugeSize)]);
  log(`  big.raw: ${scale.bigSize} bytes sparse; huge.vhdx: ${scale.hugeSize} bytes, empty`);

  const chain: string[] = [];
  const why = formatAvailable('vhd', true);
  if (why) missing.chain = why;
  else {
    try {
      await buildChain(dir, vhd, scale, chain);
      log(`  chain-02..${String(scale.chainDepth).padStart(2, '0')}.vhd: differencing children written by vdisk`);
    } catch (e) {
      missing.chain = `vdisk could not build the differencing chain: ${(e as Error).message}`;
      chain.length = 0;
    }
  }
  let addCow: string | undefined;
  const whyAddCow = formatAvailable('add-cow', true);
  if (whyAddCow) missing.addCow = whyAddCow;
  else {
    try {
      addCow = await buildAddCow(dir, raw, scale);
      log('  ac.add-cow: half of its granules written by vdisk, over in.raw');
    } catch (e) {
      missing.addCow = `vdisk could not build the add-cow input: ${(e as Error).message}`;
    }
  }
  return { dir, scale, dataBytes, raw, vhd, vhdx, bigRaw, hugeVhdx, chain, addCow, missing };
}

/**
 * Each child gets some whole granules and some 64 KiB pieces (partial VHD
 * blocks: sector bitmaps with runs), at seeded places, through vdisk's
 * library (qemu-img cannot create VHD children).
 */
async function buildChain(dir: string, base: string, scale: Pick<Scale, 'size' | 'granule' | 'chainDepth' | 'layerGranules' | 'layerPieces'>, chain: string[]): Promise<void> {
  chain.push(base);
  const nGranules = scale.size / scale.granule;
  for (let d = 2; d <= scale.chainDepth; d++) {
    const path = join(dir, `chain-${String(d).padStart(2, '0')}.vhd`);
    await rm(path, { force: true });
    // A relative parent name, as Hyper-V and XO record it (vhd-lib follows only those).
    await createImage({ path, format: 'vhd', backing: { path: basename(chain[chain.length - 1]), format: 'vhd' } });
    const c = await openChain(path, { readOnly: false });
    try {
      const bytes = seededBytes(SEED + 100 + d);
      for (const g of pick(nGranules, scale.layerGranules, SEED + 200 + d)) await c.write(g * scale.granule, bytes(scale.granule));
      const pieceSlots = scale.size / (64 << 10);
      for (const p of pick(pieceSlots, scale.layerPieces, SEED + 300 + d)) await c.write(p * (64 << 10), bytes(64 << 10));
      await c.flush();
    } finally {
      await c.close();
    }
    chain.push(path);
  }
}

/** A half-written add-cow disk: the bitmap has runs of set and clear granules. */
async function buildAddCow(dir: string, backing: string, scale: Scale): Promise<string> {
  const path = join(dir, 'ac.add-cow');
  await rm(path, { force: true });
  await rm(`${path}.raw`, { force: true });
  await createImage({ path, format: 'add-cow', backing: { path: backing, format: 'raw' } });
  // A raw backing is never taken for raw by probing; it may lie in another folder (docs/security.md).
  const c = await openChain(path, { readOnly: false, backingFormats: ['raw'], allowPaths: [dirname(backing)] });
  try {
    const bytes = seededBytes(SEED + 400);
    const n = scale.size / scale.granule;
    for (const g of pick(n, n / 2, SEED + 401)) await c.write(g * scale.granule, bytes(scale.granule));
    await c.flush();
  } finally {
    await c.close();
  }
  return path;
}
