import { BlockError } from './errors.js';

/**
 * On-disk 64-bit fields are decoded as bigint and converted here, once, so a
 * forged value can never become a silently rounded JavaScript number.
 */
export function u64ToNumber(v: bigint, what: string, context: Record<string, unknown> = {}): number {
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new BlockError('corrupt', `${what} is out of range (${v})`, context);
  }
  return Number(v);
}

/** a * b, failing instead of losing precision. */
export function checkedMul(a: number, b: number, what = 'size'): number {
  const r = a * b;
  if (!Number.isSafeInteger(r) || r < 0) throw new BlockError('out-of-range', `${what} overflows (${a} * ${b})`);
  return r;
}

/**
 * Assert that [offset, offset+length) lies within [0, limit). Used before every
 * read of a structure located by an on-disk field.
 */
export function checkRange(offset: number, length: number, limit: number, what: string, path?: string): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > limit) {
    throw new BlockError('corrupt', `${what} lies outside the file (offset ${offset}, length ${length}, file size ${limit})`, { path, offset, length });
  }
}

export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export function alignDown(n: number, a: number): number {
  return Math.floor(n / a) * a;
}
