import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readSync, writeFileSync, mkdirSync, fstatSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { DiskReader } from '../../src/guestfs/index.js';
import { run } from './oracle.js';
import { rng, randomBytes } from './random.js';

/**
 * File-system oracles for the guestfs tests: e2fsprogs (mkfs.ext4, debugfs,
 * dumpe2fs), ntfs-3g's tools (mkntfs, ntfscp, ntfscluster, ntfstruncate) and
 * the partitioners parted (MBR) and sgdisk (GPT). A missing tool skips locally
 * and fails under CI=true (Debian packages e2fsprogs, ntfs-3g, parted, gdisk).
 */
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
const SBIN = ['/usr/sbin', '/sbin', '/usr/bin'];
const TOOLS = ['mkfs.ext4', 'debugfs', 'dumpe2fs', 'mkntfs', 'ntfscp', 'ntfscluster', 'ntfstruncate', 'ntfsls', 'ntfsinfo', 'ntfsfix', 'parted', 'sgdisk'] as const;
type Tool = (typeof TOOLS)[number];

function env(): Record<string, string> {
  return { PATH: `${process.env.PATH ?? ''}:${SBIN.join(':')}` };
}

export function requireFsTools(t: TestContext, ...names: Tool[]): boolean {
  const missing = names.filter((n) => spawnSync('sh', ['-c', `command -v ${n}`], { env: { ...process.env, ...env() }, stdio: 'ignore' }).status !== 0);
  if (missing.length === 0) return true;
  if (IN_CI) throw new Error(`${missing.join(', ')} required in CI but not installed (see .ci/run)`);
  t.skip(`${missing.join(', ')} not installed`);
  return false;
}

/** Run a file-system tool (sbin on PATH). */
export function fsTool(cmd: Tool | 'truncate', args: string[], allowFail = false): string {
  const r = run(cmd, args, { env: env(), allowFail });
  return r.stdout + r.stderr;
}

/** A reader over a host file (the raw disk). */
export function fileDisk(path: string): { read: DiskReader; size: number; close: () => void } {
  const fd = openSync(path, 'r');
  return {
    size: fstatSync(fd).size,
    read: async (offset, into) => {
      const n = readSync(fd, into, 0, into.length, offset);
      if (n !== into.length) throw new Error(`short read at ${offset}`);
    },
    close: () => closeSync(fd),
  };
}

/** A reader over bytes in memory. */
export function memoryDisk(bytes: Uint8Array): DiskReader {
  return async (offset, into) => {
    if (offset + into.length > bytes.length) throw new Error(`read past the end at ${offset}`);
    into.set(bytes.subarray(offset, offset + into.length));
  };
}

/** Write `files` (name -> size) of seeded random data into a new folder. */
export function sourceTree(dir: string, files: Record<string, number>, seed = 1): string {
  const src = join(dir, 'src');
  mkdirSync(src, { recursive: true });
  const r = rng(seed);
  for (const [name, size] of Object.entries(files)) writeFileSync(join(src, name), randomBytes(r, size));
  return src;
}

/** Block size and the free blocks of an ext file system as dumpe2fs lists them: sorted [start, end) pairs. */
export function dumpe2fsFree(image: string): { blockSize: number; free: [number, number][]; freeBlocks: number } {
  const out = fsTool('dumpe2fs', [image]);
  const blockSize = Number(/^Block size:\s+(\d+)/m.exec(out)?.[1]);
  const freeBlocks = Number(/^Free blocks:\s+(\d+)/m.exec(out)?.[1]);
  // With bigalloc, dumpe2fs names each free cluster by its first block.
  const ratio = Number(/^Cluster size:\s+(\d+)/m.exec(out)?.[1] ?? blockSize) / blockSize;
  const free: [number, number][] = [];
  for (const m of out.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const part of m[1].split(',').map((s) => s.trim()).filter(Boolean)) {
      const [a, b] = part.split('-').map(Number);
      free.push([a, (b ?? a) + ratio]);
    }
  }
  free.sort((x, y) => x[0] - y[0]);
  if (!blockSize || Number.isNaN(freeBlocks)) throw new Error(`dumpe2fs output not understood: ${out.slice(0, 200)}`);
  return { blockSize, free, freeBlocks };
}

/** Blocks of a file, as debugfs lists them. */
export function fileBlocks(image: string, path: string): number[] {
  const out = fsTool('debugfs', ['-R', `blocks ${path}`, image]);
  return out.split(/\s+/).filter((s) => /^\d+$/.test(s)).map(Number);
}

/** Bytes of `ranges` (sorted byte ranges) that lie outside `allowed` (sorted [start, end) pairs in bytes). */
export function bytesOutside(ranges: { offset: number; length: number }[], allowed: [number, number][]): number {
  let outside = 0;
  let k = 0;
  for (const r of ranges) {
    let cur = r.offset;
    const end = r.offset + r.length;
    while (k < allowed.length && allowed[k][1] <= cur) k++;
    let j = k;
    while (cur < end) {
      if (j >= allowed.length || allowed[j][0] >= end) {
        outside += end - cur;
        break;
      }
      if (allowed[j][0] > cur) outside += allowed[j][0] - cur;
      cur = Math.max(cur, allowed[j][1]);
      j++;
    }
  }
  return outside;
}

/** Total bytes of ranges. */
export function totalBytes(ranges: { offset: number; length: number }[]): number {
  return ranges.reduce((a, r) => a + r.length, 0);
}

/** Copy `src` (a file) into `dest` at byte offset `at` (dest must exist). */
export function placeAt(src: string, dest: string, at: number): void {
  run('dd', [`if=${src}`, `of=${dest}`, 'bs=1M', `seek=${at}`, 'oflag=seek_bytes', 'conv=notrunc,sparse', 'status=none']);
}
