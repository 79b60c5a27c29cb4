import { absoluteLocation, hostFor, relativeName, resolveFrom } from '../../io/hosts.js';
import { NAME_FIELD } from './header.js';

/**
 * File names in an add-cow header are relative to the folder of the add-cow
 * file unless absolute (docs/formats/add-cow.md, "Names"). `\` separators are
 * accepted, as for every other recorded name in vdisk.
 */
export function resolveName(name: string, addCowPath: string): string {
  const n = name.replace(/\\/g, '/');
  if (/^[A-Za-z]:\//.test(n)) return n;
  return resolveFrom(addCowPath, n);
}

/** The name to record for `target`: relative to the add-cow file's folder when that fits, else absolute. */
export function nameToStore(addCowPath: string, target: string): string {
  const rel = relativeName(addCowPath, target);
  if (rel && !hostFor(addCowPath).paths.isAbsolute(rel) && new TextEncoder().encode(rel).length < NAME_FIELD) return rel;
  return absoluteLocation(target);
}
