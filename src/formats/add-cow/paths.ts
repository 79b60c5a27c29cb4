import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { NAME_FIELD } from './header.js';

/**
 * File names in an add-cow header are relative to the folder of the add-cow
 * file unless absolute (docs/formats/add-cow.md, "Names"). `\` separators are
 * accepted, as for every other recorded name in vdisk.
 */
export function resolveName(name: string, addCowPath: string): string {
  const n = name.replace(/\\/g, '/');
  if (isAbsolute(n) || /^[A-Za-z]:\//.test(n)) return n;
  return resolve(dirname(resolve(addCowPath)), n);
}

/** The name to record for `target`: relative to the add-cow file's folder when that fits, else absolute. */
export function nameToStore(addCowPath: string, target: string): string {
  const abs = resolve(target);
  const rel = relative(dirname(resolve(addCowPath)), abs);
  if (rel && !isAbsolute(rel) && new TextEncoder().encode(rel).length < NAME_FIELD) return rel;
  return abs;
}
