import { join } from 'node:path';
import { pyvhdiDigest, qemuDigest, qemuImg, qemuIo } from './oracle.js';
import { vdisk } from './cli.js';

const MiB = 1 << 20;

function ok(r: { status: number; stderr: string }, what: string): void {
  if (r.status !== 0) throw new Error(`${what}: ${r.stderr}`);
}

/**
 * A chain (base + 2 children) with data at each level, names relative, all
 * in `dir`: the base made by qemu-img and written by qemu-io, the children
 * by vdisk (qemu-img makes no VHD/VHDX differencing disks). Judge it with
 * libvhdi (pyvhdiDigest), which reads such chains.
 */
export function makeChain(dir: string, format: 'vhdx' | 'vhd'): { top: string; files: string[] } {
  const qfmt = format === 'vhd' ? 'vpc' : format;
  const names = [`base.${format}`, `mid.${format}`, `top.${format}`];
  const files = names.map((n) => join(dir, n));
  qemuImg('create', '-f', qfmt, files[0], '24M');
  qemuIo(qfmt, files[0], 'write -P 0x11 0 3M', 'write -P 0x12 9M 1M', 'write -P 0x13 20M 2M');
  ok(vdisk('create', '-f', format, '-b', names[0], '-F', format, files[1]), 'create mid');
  ok(vdisk('io', '-c', 'write -P 0x21 1M 2M', '-c', 'write -P 0x22 12M 512k', '-c', 'write -z 20M 1M', files[1]), 'write mid');
  ok(vdisk('create', '-f', format, '-b', names[1], '-F', format, files[2]), 'create top');
  ok(vdisk('io', '-c', 'write -P 0x31 2M 1M', '-c', 'write -P 0x32 13M 3M', '-c', 'write -P 0x33 23M 4k', files[2]), 'write top');
  return { top: files[2], files };
}

/** One image of every format vdisk reads, with the same disk content; returns file name → format. */
export function makeEveryFormat(dir: string): { name: string; format: string }[] {
  const raw = join(dir, 'src.raw');
  qemuImg('create', '-f', 'raw', raw, '20M');
  qemuIo('raw', raw, 'write -P 0x41 0 1M', 'write -P 0x42 5M 3M', 'write -P 0x43 19M 1M');
  const out = [{ name: 'src.raw', format: 'raw' }];
  for (const [name, fmt, opts] of [
    ['dyn.vhd', 'vhd', []],
    ['fixed.vhd', 'vhd', ['-o', 'subformat=fixed']],
    ['dyn.vhdx', 'vhdx', []],
    ['cow.add-cow', 'add-cow', []],
  ] as const) {
    const r = vdisk('convert', '-O', fmt, ...opts, raw, join(dir, name));
    if (r.status !== 0) throw new Error(`vdisk convert to ${name}: ${r.stderr}`);
    out.push({ name, format: fmt });
  }
  return out;
}

/** libvhdi's digest of a local chain, top first. */
export function chainDigest(files: string[]): string {
  return pyvhdiDigest([...files].reverse()).digest;
}

/** qemu-img's digest of a local disk (vhd is 'vpc' to qemu-img). */
export async function localDigest(path: string, format: string): Promise<string> {
  return (await qemuDigest(path, format === 'vhd' ? 'vpc' : format)).digest;
}

export { MiB };
