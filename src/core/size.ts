import { BlockError } from './errors.js';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/**
 * Parse a size the way qemu-img does: a number with an optional binary suffix
 * (k, M, G, T, P, E; an optional trailing "iB"/"B"). Plain numbers are bytes.
 */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtpeb]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new BlockError('invalid-argument', `invalid ${what} '${text}' (expected a number with an optional k/M/G/T suffix)`);
  const value = Number(m[1]) * UNITS[m[2].toLowerCase()];
  if (!Number.isSafeInteger(value)) {
    throw new BlockError('invalid-argument', `${what} '${text}' is not a whole number of bytes or is too large`);
  }
  return value;
}

/** 1073741824 -> "1 GiB"; exact when possible, else one decimal. */
export function formatSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return Number.isInteger(v) ? `${v} ${units[i]}` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
