import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { decodeUtf16, encodeUtf16 } from '../../core/utf16.js';

/**
 * File type identifier (VHDX spec 2.2.1): the first 64 KiB of the file.
 * An 8-byte signature "vhdxfile" and a UTF-16LE creator string of 512 bytes
 * (informational only: which program made the file).
 */
const FileIdentifier = defineStruct('VHDX file identifier', 'le', 64 * 1024, [
  { name: 'signature', type: 'bytes', size: 8 },
  { name: 'creator', type: 'bytes', size: 512 },
]);

const FILE_SIGNATURE = 'vhdxfile';

export function hasFileSignature(head: Uint8Array): boolean {
  if (head.length < 8) return false;
  for (let i = 0; i < 8; i++) if (head[i] !== FILE_SIGNATURE.charCodeAt(i)) return false;
  return true;
}

export function decodeFileIdentifier(buf: Uint8Array, path?: string): { creator: string } {
  if (!hasFileSignature(buf)) throw new BlockError('corrupt', 'not a VHDX file (no "vhdxfile" signature)', { path, offset: 0 });
  const f = FileIdentifier.decode(buf);
  return { creator: decodeUtf16(f.creator, 'le') };
}

export function encodeFileIdentifier(creator: string): Uint8Array {
  const sig = new TextEncoder().encode(FILE_SIGNATURE);
  return FileIdentifier.encode({ signature: sig, creator: encodeUtf16(creator.slice(0, 255), 'le') });
}
