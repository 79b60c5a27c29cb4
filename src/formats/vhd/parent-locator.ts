import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { u64ToNumber, checkRange } from '../../core/u64.js';
import { decodeUtf16, encodeUtf16 } from '../../core/utf16.js';
import type { Store } from '../../io/store.js';
import { readExact } from '../../io/store.js';

/**
 * One parent locator entry (VHD spec 2006, "Dynamic Disk Header Format",
 * Parent Locator Entries): 24 bytes, eight of them at offset 576 of the
 * dynamic header. Each points at platform-specific data elsewhere in the file
 * that names the parent.
 */
export const ParentLocatorEntry = defineStruct('VHD parent locator entry', 'be', 24, [
  { name: 'platformCode', type: 'u32' },
  /** Space reserved for the data; sectors per the spec, bytes as Windows writes it. */
  { name: 'dataSpace', type: 'u32' },
  { name: 'dataLength', type: 'u32' },
  { name: 'reserved', type: 'u32' },
  { name: 'dataOffset', type: 'u64' },
]);

export const LOCATOR_COUNT = 8;

export const PlatformCode = {
  none: 0,
  Wi2r: 0x57693272, // deprecated: relative Windows path, ASCII
  Wi2k: 0x5769326b, // deprecated: absolute Windows path, ASCII
  W2ru: 0x57327275, // relative Windows path, UTF-16LE
  W2ku: 0x57326b75, // absolute Windows path, UTF-16LE
  Mac: 0x4d616320, // Mac OS alias blob (not readable here)
  MacX: 0x4d616358, // file:// URL, UTF-8
} as const;

/** Longest locator data accepted: a Windows path of 32767 UTF-16 units. Bounds any allocation from a forged length. */
const MAX_LOCATOR_BYTES = 65536;

export interface ParentLocator {
  index: number;
  platformCode: number;
  /** Four-character name of the platform code ("W2ru"). */
  platform: string;
  dataSpace: number;
  dataLength: number;
  dataOffset: number;
  /** The decoded path (undefined for platforms without a text path). */
  path?: string;
}

function platformName(code: number): string {
  const b = [code >>> 24, (code >>> 16) & 0xff, (code >>> 8) & 0xff, code & 0xff];
  return b.every((c) => c >= 0x20 && c < 0x7f) ? String.fromCharCode(...b) : `0x${code.toString(16).padStart(8, '0')}`;
}

/** Decode the eight entries from the 192-byte locator table; bounds-checks every used one against the file. */
export function decodeLocatorEntries(table: Uint8Array, fileSize: number, path?: string): ParentLocator[] {
  const out: ParentLocator[] = [];
  for (let i = 0; i < LOCATOR_COUNT; i++) {
    const e = ParentLocatorEntry.decode(table, i * ParentLocatorEntry.SIZE);
    if (e.platformCode === PlatformCode.none) continue;
    const dataOffset = u64ToNumber(e.dataOffset, `parent locator ${i} data offset`, { path });
    if (e.dataLength > MAX_LOCATOR_BYTES) {
      throw new BlockError('corrupt', `parent locator ${i} claims ${e.dataLength} bytes of data (at most ${MAX_LOCATOR_BYTES})`, { path, offset: dataOffset });
    }
    checkRange(dataOffset, e.dataLength, fileSize, `parent locator ${i} data`, path);
    out.push({ index: i, platformCode: e.platformCode, platform: platformName(e.platformCode), dataSpace: e.dataSpace, dataLength: e.dataLength, dataOffset });
  }
  return out;
}

export function encodeLocatorEntry(l: { platformCode: number; dataSpace: number; dataLength: number; dataOffset: number }, into: Uint8Array, index: number): void {
  ParentLocatorEntry.encode(
    { platformCode: l.platformCode, dataSpace: l.dataSpace, dataLength: l.dataLength, reserved: 0, dataOffset: BigInt(l.dataOffset) },
    into,
    index * ParentLocatorEntry.SIZE,
  );
}

/** Turn locator data into a path (spec: W2ku/W2ru UTF-16LE; MacX a UTF-8 file URL; Wi2k/Wi2r ASCII). */
export function decodeLocatorData(platformCode: number, data: Uint8Array): string | undefined {
  switch (platformCode) {
    case PlatformCode.W2ku:
    case PlatformCode.W2ru:
      return decodeUtf16(data, 'le');
    case PlatformCode.Wi2k:
    case PlatformCode.Wi2r:
      return new TextDecoder('latin1').decode(data).replace(/\0.*$/s, '');
    case PlatformCode.MacX: {
      const url = new TextDecoder().decode(data).replace(/\0.*$/s, '');
      return macxToPath(url);
    }
    default:
      return undefined;
  }
}

/** "file://localhost/Users/a/b%20c.vhd" -> "/Users/a/b c.vhd". */
export function macxToPath(url: string): string {
  let p = url;
  if (p.startsWith('file://')) {
    p = p.slice('file://'.length);
    if (!p.startsWith('/')) p = p.slice(p.indexOf('/') === -1 ? p.length : p.indexOf('/')); // drop a host part
  }
  try {
    return decodeURIComponent(p);
  } catch {
    return p;
  }
}

export function encodeLocatorData(platformCode: number, path: string): Uint8Array {
  switch (platformCode) {
    case PlatformCode.W2ku:
    case PlatformCode.W2ru:
      return encodeUtf16(path, 'le');
    case PlatformCode.MacX:
      return new TextEncoder().encode('file://' + encodeURI(path));
    default:
      return new TextEncoder().encode(path);
  }
}

/** Decode the locator table and read each locator's path (entries already bounds-checked by decodeLocatorEntries). */
export async function readLocators(store: Store, table: Uint8Array, fileSize: number): Promise<ParentLocator[]> {
  const locators = decodeLocatorEntries(table, fileSize, store.path);
  for (const l of locators) {
    if (l.dataLength === 0) continue;
    const data = await readExact(store, l.dataOffset, new Uint8Array(l.dataLength), `parent locator ${l.index}`);
    l.path = decodeLocatorData(l.platformCode, data);
  }
  return locators;
}
