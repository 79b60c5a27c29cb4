import { defineStruct } from '../../codec/struct.js';
import { u64ToNumber } from '../../core/u64.js';
import { checksumWithHole, LOG_SECTOR, sealChecksum, sig } from './layout.js';

/**
 * Log entry (VHDX spec 2.3.1): a run of 4 KiB log sectors.
 *
 *   sector 0       entry header (64 bytes) + up to 126 descriptors (32 bytes)
 *   sectors 1..d-1 more descriptors, 128 per sector
 *   sectors d..    one data sector per data descriptor, in order
 *
 * The CRC-32C covers all EntryLength bytes with the checksum field as zero.
 * A data descriptor carries the first 8 and the last 4 bytes of the 4 KiB
 * target sector; its data sector carries the 4084 in between, framed by the
 * entry's sequence number split in two halves, so a torn write is detected.
 */
const LogEntryHeader = defineStruct('VHDX log entry header', 'le', 64, [
  { name: 'signature', type: 'u32' },
  { name: 'checksum', type: 'u32' },
  { name: 'entryLength', type: 'u32' },
  { name: 'tail', type: 'u32' },
  { name: 'sequenceNumber', type: 'u64' },
  { name: 'descriptorCount', type: 'u32' },
  { name: 'reserved', type: 'u32' },
  { name: 'logGuid', type: 'bytes', size: 16 },
  { name: 'flushedFileOffset', type: 'u64' },
  { name: 'lastFileOffset', type: 'u64' },
]);

/** 2.3.1.2 zero descriptor: ZeroLength bytes at FileOffset become zero. */
const ZeroDescriptor = defineStruct('VHDX log zero descriptor', 'le', 32, [
  { name: 'signature', type: 'u32' },
  { name: 'reserved', type: 'u32' },
  { name: 'zeroLength', type: 'u64' },
  { name: 'fileOffset', type: 'u64' },
  { name: 'sequenceNumber', type: 'u64' },
]);

/** 2.3.1.3 data descriptor: one 4 KiB sector at FileOffset. */
const DataDescriptor = defineStruct('VHDX log data descriptor', 'le', 32, [
  { name: 'signature', type: 'u32' },
  { name: 'trailingBytes', type: 'bytes', size: 4 },
  { name: 'leadingBytes', type: 'bytes', size: 8 },
  { name: 'fileOffset', type: 'u64' },
  { name: 'sequenceNumber', type: 'u64' },
]);

/** 2.3.1.4 data sector. */
const DataSector = defineStruct('VHDX log data sector', 'le', LOG_SECTOR, [
  { name: 'signature', type: 'u32' },
  { name: 'sequenceHigh', type: 'u32' },
  { name: 'data', type: 'bytes', size: 4084 },
  { name: 'sequenceLow', type: 'u32' },
]);

const ENTRY_SIGNATURE = sig('loge');
const ZERO_SIGNATURE = sig('zero');
const DESC_SIGNATURE = sig('desc');
const DATA_SIGNATURE = sig('data');
const DESCRIPTOR_SIZE = 32;

/** Log sectors taken by `n` descriptors (header included). */
export function descriptorSectors(n: number): number {
  return Math.ceil((LogEntryHeader.SIZE + n * DESCRIPTOR_SIZE) / LOG_SECTOR);
}

export type LogWrite = { kind: 'data'; offset: number; data: Uint8Array } | { kind: 'zero'; offset: number; length: number };

export interface ParsedEntry {
  sequenceNumber: bigint;
  /** Offset of the entry inside the log. */
  position: number;
  length: number;
  tail: number;
  flushedFileOffset: number;
  lastFileOffset: number;
  writes: LogWrite[];
}

/**
 * Validate and decode the entry starting at `position` of the circular log
 * `log` (already read into memory). Returns null for anything that is not a
 * complete, valid entry of this log: wrong signature, GUID or checksum, torn
 * data sectors, descriptor counts that do not fit — a replayer treats those
 * as the end of a sequence, never as a reason to crash.
 */
export function parseEntry(log: Uint8Array, position: number, logGuid: Uint8Array): ParsedEntry | null {
  const logLength = log.length;
  if (position % LOG_SECTOR !== 0 || position + LogEntryHeader.SIZE > logLength) return null;
  const h = LogEntryHeader.decode(log, position);
  if (h.signature !== ENTRY_SIGNATURE) return null;
  if (!h.logGuid.every((b, i) => b === logGuid[i])) return null;
  const len = h.entryLength;
  if (len === 0 || len % LOG_SECTOR !== 0 || len > logLength || h.tail % LOG_SECTOR !== 0 || h.tail >= logLength) return null;
  // The entry may wrap around the end of the circular log (2.3).
  const sectorAt = (k: number) => {
    const p = (position + k * LOG_SECTOR) % logLength;
    return log.subarray(p, p + LOG_SECTOR);
  };
  const sectors = len / LOG_SECTOR;
  // Bounded by the entry length, so a forged count cannot make us loop or allocate.
  if (h.descriptorCount > (len - LogEntryHeader.SIZE) / DESCRIPTOR_SIZE) return null;
  const dSectors = descriptorSectors(h.descriptorCount);
  if (dSectors > sectors) return null;
  const entry = position + len <= logLength ? log.subarray(position, position + len) : concatSectors(sectors, sectorAt);
  if (h.checksum !== checksumWithHole(entry)) return null;
  let flushed: number;
  let last: number;
  try {
    flushed = u64ToNumber(h.flushedFileOffset, 'flushed file offset');
    last = u64ToNumber(h.lastFileOffset, 'last file offset');
  } catch {
    return null;
  }
  const writes: LogWrite[] = [];
  let dataIndex = dSectors;
  for (let i = 0; i < h.descriptorCount; i++) {
    const at = LogEntryHeader.SIZE + i * DESCRIPTOR_SIZE;
    const sigv = new DataView(entry.buffer, entry.byteOffset + at, 4).getUint32(0, true);
    if (sigv === ZERO_SIGNATURE) {
      const z = ZeroDescriptor.decode(entry, at);
      if (z.sequenceNumber !== h.sequenceNumber) return null;
      const offset = Number(z.fileOffset);
      const length = Number(z.zeroLength);
      if (z.fileOffset > BigInt(Number.MAX_SAFE_INTEGER) || z.zeroLength > BigInt(Number.MAX_SAFE_INTEGER)) return null;
      if (offset % LOG_SECTOR !== 0 || length % LOG_SECTOR !== 0) return null;
      writes.push({ kind: 'zero', offset, length });
    } else if (sigv === DESC_SIGNATURE) {
      const d = DataDescriptor.decode(entry, at);
      if (d.sequenceNumber !== h.sequenceNumber) return null;
      if (dataIndex >= sectors || d.fileOffset > BigInt(Number.MAX_SAFE_INTEGER)) return null;
      const offset = Number(d.fileOffset);
      if (offset % LOG_SECTOR !== 0) return null;
      const ds = DataSector.decode(entry, dataIndex * LOG_SECTOR);
      dataIndex++;
      if (ds.signature !== DATA_SIGNATURE) return null;
      if (((BigInt(ds.sequenceHigh) << 32n) | BigInt(ds.sequenceLow)) !== h.sequenceNumber) return null;
      const data = new Uint8Array(LOG_SECTOR);
      data.set(d.leadingBytes, 0);
      data.set(ds.data, 8);
      data.set(d.trailingBytes, LOG_SECTOR - 4);
      writes.push({ kind: 'data', offset, data });
    } else return null;
  }
  return {
    sequenceNumber: h.sequenceNumber,
    position,
    length: len,
    tail: h.tail,
    flushedFileOffset: flushed,
    lastFileOffset: last,
    writes,
  };
}

function concatSectors(n: number, sectorAt: (k: number) => Uint8Array): Uint8Array {
  const out = new Uint8Array(n * LOG_SECTOR);
  for (let k = 0; k < n; k++) out.set(sectorAt(k), k * LOG_SECTOR);
  return out;
}

/**
 * Build one entry holding whole-sector updates. `sectors` are 4 KiB images of
 * the target sectors (offsets 4 KiB aligned); the entry's tail is itself
 * (the writer applies and flushes each entry before writing the next).
 */
export function buildEntry(opts: {
  sequenceNumber: bigint;
  logGuid: Uint8Array;
  position: number;
  tail: number;
  flushedFileOffset: number;
  lastFileOffset: number;
  sectors: { offset: number; data: Uint8Array }[];
}): Uint8Array {
  const n = opts.sectors.length;
  const dSectors = descriptorSectors(n);
  const out = new Uint8Array((dSectors + n) * LOG_SECTOR);
  LogEntryHeader.encode(
    {
      signature: ENTRY_SIGNATURE,
      checksum: 0,
      entryLength: out.length,
      tail: opts.tail,
      sequenceNumber: opts.sequenceNumber,
      descriptorCount: n,
      reserved: 0,
      logGuid: opts.logGuid,
      flushedFileOffset: BigInt(opts.flushedFileOffset),
      lastFileOffset: BigInt(opts.lastFileOffset),
    },
    out,
  );
  const seqHigh = Number(opts.sequenceNumber >> 32n);
  const seqLow = Number(opts.sequenceNumber & 0xffffffffn);
  opts.sectors.forEach((s, i) => {
    // The sector is split as the format defines it: bytes 0..7 and 4092..4095 go into the
    // descriptor, 8..4091 into the data sector. (QEMU issue 727 got this split wrong.)
    DataDescriptor.encode(
      {
        signature: DESC_SIGNATURE,
        trailingBytes: s.data.subarray(LOG_SECTOR - 4),
        leadingBytes: s.data.subarray(0, 8),
        fileOffset: BigInt(s.offset),
        sequenceNumber: opts.sequenceNumber,
      },
      out,
      LogEntryHeader.SIZE + i * DESCRIPTOR_SIZE,
    );
    DataSector.encode(
      { signature: DATA_SIGNATURE, sequenceHigh: seqHigh, data: s.data.subarray(8, LOG_SECTOR - 4), sequenceLow: seqLow },
      out,
      (dSectors + i) * LOG_SECTOR,
    );
  });
  sealChecksum(out);
  return out;
}
