import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { isZeroGuid } from '../../core/guid.js';
import { u64ToNumber } from '../../core/u64.js';
import { checksumWithHole, guidText, HEADER_OFFSETS, HEADER_SECTION_SIZE, MiB, sealChecksum, sig } from './layout.js';

/**
 * Header (VHDX spec 2.2.2): two copies, at 64 KiB and 128 KiB, each 4 KiB
 * with a CRC-32C over the whole 4 KiB (checksum field as zero). The valid
 * copy with the higher SequenceNumber is current; the other is the target of
 * the next update (2.2.2.1), so a torn header write always leaves one intact.
 */
export const Header = defineStruct('VHDX header', 'le', 4096, [
  { name: 'signature', type: 'u32' },
  { name: 'checksum', type: 'u32' },
  { name: 'sequenceNumber', type: 'u64' },
  { name: 'fileWriteGuid', type: 'bytes', size: 16 },
  { name: 'dataWriteGuid', type: 'bytes', size: 16 },
  { name: 'logGuid', type: 'bytes', size: 16 },
  { name: 'logVersion', type: 'u16' },
  { name: 'version', type: 'u16' },
  { name: 'logLength', type: 'u32' },
  { name: 'logOffset', type: 'u64' },
]);
export type HeaderValue = ReturnType<typeof Header.decode>;

const HEADER_SIGNATURE = sig('head');

interface HeaderSlot {
  /** 0 or 1: which of the two copies. */
  slot: number;
  value: HeaderValue;
  raw: Uint8Array;
}

interface HeaderChoice {
  current: HeaderSlot;
  /** Problems with the other copy, for check/info. */
  problems: string[];
  checksumIgnored: boolean;
}

/** Why one header copy is unusable, or null when it is valid. */
function headerProblem(raw: Uint8Array, ignoreChecksums: boolean): { problem: string | null; kind: 'corrupt' | 'checksum' | 'unsupported' } {
  const h = Header.decode(raw);
  if (h.signature !== HEADER_SIGNATURE) return { problem: 'bad signature', kind: 'corrupt' };
  if (!ignoreChecksums && h.checksum !== checksumWithHole(raw)) return { problem: 'bad checksum', kind: 'checksum' };
  // 2.2.2: Version must be 1; a different version is a format we do not know.
  if (h.version !== 1) return { problem: `unsupported version ${h.version}`, kind: 'unsupported' };
  return { problem: null, kind: 'corrupt' };
}

/**
 * Pick the current header (2.2.2.1): the valid one with the larger sequence
 * number. Equal sequence numbers are legal only when both copies are
 * identical (Disk2VHD writes exactly that).
 */
export function chooseHeader(raws: Uint8Array[], ignoreChecksums: boolean, path?: string): HeaderChoice {
  const valid: HeaderSlot[] = [];
  const problems: string[] = [];
  let worst: 'corrupt' | 'checksum' | 'unsupported' = 'corrupt';
  raws.forEach((raw, slot) => {
    const p = headerProblem(raw, false);
    if (p.problem === null) valid.push({ slot, value: Header.decode(raw), raw });
    else if (ignoreChecksums && p.kind === 'checksum') {
      valid.push({ slot, value: Header.decode(raw), raw });
      problems.push(`header ${slot + 1}: checksum ignored`);
    } else {
      problems.push(`header ${slot + 1}: ${p.problem}`);
      if (p.kind === 'unsupported' || (p.kind === 'checksum' && worst === 'corrupt')) worst = p.kind;
    }
  });
  if (valid.length === 0) {
    throw new BlockError(worst, `no valid VHDX header (${problems.join('; ')})`, { path, offset: HEADER_OFFSETS[0] });
  }
  let current = valid[0];
  if (valid.length === 2) {
    const [a, b] = valid;
    if (a.value.sequenceNumber === b.value.sequenceNumber) {
      if (!a.raw.every((x, i) => x === b.raw[i])) {
        throw new BlockError('corrupt', 'both VHDX headers carry the same sequence number but differ', { path, offset: HEADER_OFFSETS[1] });
      }
    } else if (b.value.sequenceNumber > a.value.sequenceNumber) current = b;
  }
  validateHeader(current.value, path, HEADER_OFFSETS[current.slot]);
  return { current, problems, checksumIgnored: problems.some((p) => p.includes('ignored')) };
}

/** Log location fields (2.2.2): 1 MiB multiples, log after the header section. */
function validateHeader(h: HeaderValue, path: string | undefined, offset: number): void {
  if (h.logVersion !== 0) throw new BlockError('unsupported', `unsupported VHDX log version ${h.logVersion}`, { path, offset });
  const logOffset = u64ToNumber(h.logOffset, 'log offset', { path, offset });
  if (h.logLength % MiB !== 0 || logOffset % MiB !== 0) {
    throw new BlockError('corrupt', `log offset ${logOffset} / length ${h.logLength} are not multiples of 1 MiB`, { path, offset });
  }
  if (h.logLength > 0 && logOffset < HEADER_SECTION_SIZE) {
    throw new BlockError('corrupt', `log at ${logOffset} lies inside the header section`, { path, offset });
  }
  if (!isZeroGuid(h.logGuid) && h.logLength === 0) {
    throw new BlockError('corrupt', 'header names a log (non-zero LogGuid) but the log is empty', { path, offset });
  }
}

export function encodeHeader(value: HeaderValue): Uint8Array {
  const raw = Header.encode({ ...value, signature: HEADER_SIGNATURE, checksum: 0 });
  sealChecksum(raw);
  return raw;
}

export function describeHeader(h: HeaderValue): Record<string, unknown> {
  return {
    sequenceNumber: Number(h.sequenceNumber),
    fileWriteGuid: guidText(h.fileWriteGuid),
    dataWriteGuid: guidText(h.dataWriteGuid),
    logGuid: guidText(h.logGuid),
  };
}
