import { createWriteStream } from 'node:fs';
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { FileStore, convert, createImage, openChain } from '../src/index.js';
import { PEERS_DIR } from './peers.js';

/**
 * One measured child process per run (so each has its own peak RSS):
 *
 *   node dist/bench/worker.js read '{"path":..,"count":..,"bs":..,"step":..,"depth":..}'
 *       reads through vdisk's library API, with the same offsets qemu-img
 *       bench uses (offset_i = i * step mod size), `depth` requests in flight
 *   node dist/bench/worker.js vhdlib-to-raw|vhdlib-from-raw|vhdlib-flatten '{"src":..,"dst":..}'
 *       the same jobs done by Xen Orchestra's vhd-lib (the peer)
 *   node dist/bench/worker.js vhdlib-merge '{"parent":..,"child":..}'
 *   node dist/bench/worker.js convert '{"src":..,"srcFormat":..,"dst":..,"dstFormat":..}'
 *       vdisk's convert() without the CLI (start-up cost shown apart)
 *   node dist/bench/worker.js addcow-write '{...}'
 *
 * Prints `BENCH {"seconds":..}` for the timed part (for reads, opening is
 * excluded, as qemu-img bench excludes it).
 */

interface ReadJob {
  path: string;
  format?: string;
  count: number;
  bs: number;
  step: number;
  depth: number;
}

async function readJob(j: ReadJob): Promise<void> {
  // backingFormats: the add-cow input is over a raw file, which is never taken for raw by probing (docs/security.md).
  const chain = await openChain(j.path, { readOnly: true, format: j.format, backingFormats: ['raw'] });
  try {
    const size = chain.size;
    let next = 0;
    const t0 = process.hrtime.bigint();
    const lane = async () => {
      const buf = new Uint8Array(j.bs);
      for (let i = next++; i < j.count; i = next++) {
        const off = (i * j.step) % size;
        await chain.read(off, off + j.bs <= size ? buf : buf.subarray(0, size - off));
      }
    };
    await Promise.all(Array.from({ length: j.depth }, lane));
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(`BENCH ${JSON.stringify({ seconds, layers: chain.layers.length })}`);
  } finally {
    await chain.close();
  }
}

// ---- vhd-lib (CommonJS, untyped): loaded from bench/.peers only -------------

/* eslint-disable @typescript-eslint/no-explicit-any */
function vhdLib(): any {
  return createRequire(join(PEERS_DIR, 'package.json'))('vhd-lib');
}

/**
 * The "remote handler" vhd-lib 0.7.2 reads through (in Xen Orchestra it is
 * @xen-orchestra/fs): paths are relative to a root, here `/`, so absolute
 * paths are passed without their leading slash and the parent names vhd-lib
 * resolves relative to a child still land in the right folder.
 */
interface Fd {
  path: string;
  fh: FileHandle;
}
const handler = {
  async openFile(path: string, flags: string): Promise<Fd> {
    const abs = '/' + path.replace(/^\/+/, '');
    return { path: abs, fh: await open(abs, flags) };
  },
  async closeFile(fd: Fd): Promise<void> {
    await fd.fh.close();
  },
  async read(fd: Fd, buffer: Buffer, position: number): Promise<{ bytesRead: number; buffer: Buffer }> {
    const { bytesRead } = await fd.fh.read(buffer, 0, buffer.length, position);
    return { bytesRead, buffer };
  },
  async write(fd: Fd, buffer: Buffer, position: number): Promise<void> {
    await fd.fh.write(buffer, 0, buffer.length, position);
  },
  async getSize(fd: Fd): Promise<number> {
    return (await fd.fh.stat()).size;
  },
};
const rel = (p: string) => p.replace(/^\/+/, '');

/** Write a stream to a file, made durable when the other tools of the case sync too. */
async function toFile(stream: Readable, dst: string, sync: boolean): Promise<void> {
  await pipeline(stream, createWriteStream(dst));
  if (!sync) return;
  const fh = await open(dst, 'r+');
  await fh.datasync();
  await fh.close();
}

interface CopyJob {
  src: string;
  dst: string;
  sync: boolean;
}

async function vhdlibToRaw(j: CopyJob): Promise<void> {
  const t0 = process.hrtime.bigint();
  await toFile(await vhdLib().createContentStream(handler, rel(j.src)), j.dst, j.sync);
  console.log(`BENCH ${JSON.stringify({ seconds: Number(process.hrtime.bigint() - t0) / 1e9 })}`);
}

async function vhdlibFlatten(j: CopyJob): Promise<void> {
  const t0 = process.hrtime.bigint();
  await toFile(await vhdLib().createSyntheticStream(handler, rel(j.src)), j.dst, j.sync);
  console.log(`BENCH ${JSON.stringify({ seconds: Number(process.hrtime.bigint() - t0) / 1e9 })}`);
}

/**
 * raw → dynamic VHD with vhd-lib's createReadableSparseStream: it wants the
 * list of 2 MiB blocks holding data up front (XO gets it from the source's
 * own map), so the raw file's holes are asked of the file system
 * (SEEK_DATA/SEEK_HOLE, the same source vdisk uses), then each block is read.
 */
async function vhdlibFromRaw(j: CopyJob): Promise<void> {
  const t0 = process.hrtime.bigint();
  const BLOCK = 2 << 20;
  const store = await FileStore.open(j.src, { readOnly: true });
  const size = await store.size();
  const ranges = (await store.allocation(0, size)) ?? [{ offset: 0, length: size, data: true }];
  const blocks = new Set<number>();
  for (const r of ranges) if (r.data) for (let b = Math.floor(r.offset / BLOCK); b * BLOCK < r.offset + r.length; b++) blocks.add(b);
  const list = [...blocks].sort((a, b) => a - b);
  async function* fragments() {
    for (const b of list) {
      const data = Buffer.alloc(Math.min(BLOCK, size - b * BLOCK));
      await store.read(b * BLOCK, data);
      yield { logicalAddressBytes: b * BLOCK, data: data.length === BLOCK ? data : Buffer.concat([data, Buffer.alloc(BLOCK - data.length)]) };
    }
  }
  const stream = await vhdLib().createReadableSparseStream(size, BLOCK, list.map((b) => b * BLOCK), fragments());
  await toFile(stream, j.dst, j.sync);
  await store.close();
  console.log(`BENCH ${JSON.stringify({ seconds: Number(process.hrtime.bigint() - t0) / 1e9 })}`);
}

/** vhd-lib's merge of a differencing VHD into its parent (what Xen Orchestra runs to coalesce a chain). */
async function vhdlibMerge(j: { parent: string; child: string }): Promise<void> {
  const t0 = process.hrtime.bigint();
  await vhdLib().mergeVhd(handler, rel(j.parent), handler, rel(j.child));
  console.log(`BENCH ${JSON.stringify({ seconds: Number(process.hrtime.bigint() - t0) / 1e9 })}`);
}

/**
 * add-cow sequential writes: a fresh add-cow over `backing`, `total` bytes
 * written in `bs` requests from offset 0, flushed every `flushEvery` bytes
 * (and at the end). Timed from the first write to the last flush.
 */
async function addCowWrite(j: { dir: string; backing: string; total: number; bs: number; flushEvery: number }): Promise<void> {
  await rm(j.dir, { recursive: true, force: true });
  await mkdir(j.dir, { recursive: true });
  const path = join(j.dir, 'w.add-cow');
  await createImage({ path, format: 'add-cow', backing: { path: j.backing, format: 'raw' } });
  // The backing lies in another folder and is raw: both need saying (docs/security.md).
  const chain = await openChain(path, { readOnly: false, backingFormats: ['raw'], allowPaths: [dirname(j.backing)] });
  try {
    const data = new Uint8Array(j.bs).fill(0xa5);
    const t0 = process.hrtime.bigint();
    for (let off = 0; off < j.total; off += j.bs) {
      await chain.write(off, data);
      if ((off + j.bs) % j.flushEvery === 0) await chain.flush();
    }
    await chain.flush();
    console.log(`BENCH ${JSON.stringify({ seconds: Number(process.hrtime.bigint() - t0) / 1e9 })}`);
  } finally {
    await chain.close();
    await rm(j.dir, { recursive: true, force: true });
  }
}

/** The library's convert(), as the CLI calls it, timed from open to the final flush. */
async function convertJob(j: { src: string; srcFormat: string; dst: string; dstFormat: string; options: Record<string, string>; cache: string }): Promise<void> {
  const t0 = process.hrtime.bigint();
  // `cache` reaches convert() only once it knows the option (older builds always synced).
  const req = { source: j.src, sourceOptions: { format: j.srcFormat }, target: j.dst, targetFormat: j.dstFormat, options: j.options, cache: j.cache } as unknown as Parameters<typeof convert>[0];
  await convert(req);
  console.log(`BENCH ${JSON.stringify({ seconds: Number(process.hrtime.bigint() - t0) / 1e9 })}`);
}

const OPS: Record<string, (j: any) => Promise<void>> = {
  read: readJob,
  convert: convertJob,
  'vhdlib-to-raw': vhdlibToRaw,
  'vhdlib-from-raw': vhdlibFromRaw,
  'vhdlib-flatten': vhdlibFlatten,
  'vhdlib-merge': vhdlibMerge,
  'addcow-write': addCowWrite,
};

const [op, json] = process.argv.slice(2);
const fn = OPS[op];
if (!fn) {
  console.error(`worker: unknown op '${op}' (known: ${Object.keys(OPS).join(', ')})`);
  process.exit(2);
}
fn(JSON.parse(json ?? '{}')).catch((e) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : e);
  process.exit(1);
});
