import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { decodeUtf16, encodeUtf16 } from '../../core/utf16.js';
import type { BackingRef } from '../types.js';
import { GUIDS, guidBytes, guidText } from './layout.js';

/**
 * Parent locator (VHDX spec 2.6.2.6): a 20-byte header (locator type GUID,
 * key/value count) followed by 12-byte entries pointing at UTF-16LE keys and
 * values elsewhere in the same item. The VHDX locator type (2.6.2.6.3) knows
 * parent_linkage, parent_linkage2, relative_path, volume_path and
 * absolute_win32_path.
 */
export const ParentLocatorHeader = defineStruct('VHDX parent locator header', 'le', 20, [
  { name: 'locatorType', type: 'bytes', size: 16 },
  { name: 'reserved', type: 'u16' },
  { name: 'keyValueCount', type: 'u16' },
]);

const ParentLocatorEntry = defineStruct('VHDX parent locator entry', 'le', 12, [
  { name: 'keyOffset', type: 'u32' },
  { name: 'valueOffset', type: 'u32' },
  { name: 'keyLength', type: 'u16' },
  { name: 'valueLength', type: 'u16' },
]);

export type ParentLocator = Map<string, string>;

export function decodeParentLocator(item: Uint8Array, path?: string, itemOffset = 0): ParentLocator {
  const ctx = { path, offset: itemOffset };
  if (item.length < ParentLocatorHeader.SIZE) throw new BlockError('corrupt', 'parent locator is truncated', ctx);
  const h = ParentLocatorHeader.decode(item);
  if (guidText(h.locatorType) !== GUIDS.vhdxParentLocatorType) {
    throw new BlockError('unsupported', `unknown parent locator type ${guidText(h.locatorType)}`, ctx);
  }
  const entriesEnd = ParentLocatorHeader.SIZE + h.keyValueCount * ParentLocatorEntry.SIZE;
  if (entriesEnd > item.length) {
    throw new BlockError('corrupt', `parent locator claims ${h.keyValueCount} entries, more than its ${item.length} bytes hold`, ctx);
  }
  const out: ParentLocator = new Map();
  const text = (offset: number, length: number, what: string): string => {
    // 2.6.2.6.2: keys and values lie inside the item, after the entries, in whole UTF-16 units.
    if (length === 0 || length % 2 !== 0 || offset < entriesEnd || offset + length > item.length) {
      throw new BlockError('corrupt', `parent locator ${what} (offset ${offset}, length ${length}) is malformed`, ctx);
    }
    return decodeUtf16(item.subarray(offset, offset + length), 'le', false);
  };
  for (let i = 0; i < h.keyValueCount; i++) {
    const e = ParentLocatorEntry.decode(item, ParentLocatorHeader.SIZE + i * ParentLocatorEntry.SIZE);
    const key = text(e.keyOffset, e.keyLength, 'key');
    const value = text(e.valueOffset, e.valueLength, `value of ${key}`);
    if (out.has(key)) throw new BlockError('corrupt', `parent locator key ${key} appears twice`, ctx);
    out.set(key, value);
  }
  return out;
}

export function encodeParentLocator(entries: ParentLocator): Uint8Array {
  const list = [...entries].map(([k, v]) => [encodeUtf16(k, 'le'), encodeUtf16(v, 'le')] as const);
  for (const [k, v] of list) {
    if (k.length > 0xffff || v.length > 0xffff) throw new BlockError('invalid-argument', 'parent locator key or value is longer than 32767 characters');
  }
  let pos = ParentLocatorHeader.SIZE + list.length * ParentLocatorEntry.SIZE;
  const total = list.reduce((n, [k, v]) => n + k.length + v.length, pos);
  const out = new Uint8Array(total);
  ParentLocatorHeader.encode({ locatorType: guidBytes(GUIDS.vhdxParentLocatorType), reserved: 0, keyValueCount: list.length }, out);
  list.forEach(([k, v], i) => {
    ParentLocatorEntry.encode({ keyOffset: pos, valueOffset: pos + k.length, keyLength: k.length, valueLength: v.length }, out, ParentLocatorHeader.SIZE + i * ParentLocatorEntry.SIZE);
    out.set(k, pos);
    out.set(v, pos + k.length);
    pos += k.length + v.length;
  });
  return out;
}

/** "{AbC...}" -> "abc..." : the form `identity` uses (DataWriteGuid text, no braces, lower case). */
function normalizeLinkage(s: string): string {
  return s.trim().replace(/^\{|\}$/g, '').toLowerCase();
}

/**
 * 2.6.2.6.3: parent_linkage is the parent's DataWriteGuid, parent_linkage2
 * "a GUID that may be used as an alternative" (vdisk's commit names the
 * DataWriteGuid the parent is about to take in parent_linkage and its
 * current one there, formats/vhdx/create.ts locatorFor); the paths are tried
 * relative first, then volume, then absolute (chain/ resolves them). The
 * specification ties no size to the parent's.
 */
export function backingFromLocator(loc: ParentLocator, path?: string): BackingRef {
  const linkage = loc.get('parent_linkage');
  if (!linkage) throw new BlockError('corrupt', 'parent locator has no parent_linkage', { path });
  const candidates = ['relative_path', 'volume_path', 'absolute_win32_path'].map((k) => loc.get(k)).filter((v): v is string => !!v);
  if (candidates.length === 0) throw new BlockError('corrupt', 'parent locator names no parent path', { path });
  const linkage2 = loc.get('parent_linkage2');
  return {
    recorded: candidates[0],
    candidates,
    format: 'vhdx',
    expectedId: normalizeLinkage(linkage),
    ...(linkage2 ? { alternateId: normalizeLinkage(linkage2) } : {}),
    // No sameSize: a differencing VHDX may be larger or smaller than its parent (Hyper-V's ResizeVirtualDisk resizes
    // differencing VHDX both ways); past the parent's end the child reads zeros, and it shows only its own size (chain/).
  };
}
