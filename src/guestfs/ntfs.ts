import { BlockError } from '../core/errors.js';
import { defineStruct } from '../codec/struct.js';
import { forEachRun } from '../core/bitmap.js';
import { u64ToNumber } from '../core/u64.js';
import { decodeUtf16 } from '../core/utf16.js';
import { mergeSorted, type FreeRanges, type Volume } from './volume.js';

/**
 * NTFS free space, from the $Bitmap metadata file (one bit per cluster, LSB
 * first, 1 = in use). Layouts from the Linux-NTFS project's "NTFS
 * Documentation" (Richard Russon, Yuval Fledel: "Files: $Bitmap, $MFT,
 * $Volume, $LogFile", "Attributes: $DATA, $VOLUME_INFORMATION,
 * $ATTRIBUTE_LIST", "Concepts: Data Runs, Fixup, File Record") and
 * Microsoft's "NTFS boot sector" description:
 *
 *   boot sector (sector 0):  "NTFS    " at 3, BPB at 0x0B, MFT LCN at 0x30
 *   $MFT record 0:           describes the MFT itself (its unnamed $DATA runlist)
 *   record 2 $LogFile, 3 $Volume (flags: dirty), 6 $Bitmap
 *
 * Every MFT record is protected by an update sequence array: the last two bytes
 * of each 512-byte stride hold the update sequence number and are restored from
 * the array before the record is parsed; a mismatch is a torn write.
 */

const Boot = defineStruct('NTFS boot sector', 'le', 512, [
  { name: 'jump', type: 'bytes', size: 3 }, // 0x00
  { name: 'oemId', type: 'bytes', size: 8 }, // 0x03 "NTFS    "
  { name: 'bytesPerSector', type: 'u16' }, // 0x0B
  { name: 'sectorsPerCluster', type: 'u8' }, // 0x0D
  { name: 'reservedSectors', type: 'u16' }, // 0x0E (0)
  { name: 'unused1', type: 'bytes', size: 5 }, // 0x10 fats, root entries, sectors (0)
  { name: 'media', type: 'u8' }, // 0x15
  { name: 'unused2', type: 'bytes', size: 18 }, // 0x16 .. 0x28
  { name: 'totalSectors', type: 'u64' }, // 0x28
  { name: 'mftLcn', type: 'u64' }, // 0x30
  { name: 'mftMirrLcn', type: 'u64' }, // 0x38
  { name: 'clustersPerMftRecord', type: 'u8' }, // 0x40 (signed: negative = 2^-n bytes)
  { name: 'pad1', type: 'bytes', size: 3 },
  { name: 'clustersPerIndexRecord', type: 'u8' }, // 0x44
  { name: 'pad2', type: 'bytes', size: 3 },
  { name: 'serial', type: 'u64' }, // 0x48
]);

/** Record numbers of the system files used here (NTFS docs "Files"). */
const MFT_RECORD = 0;
const LOGFILE_RECORD = 2;
const VOLUME_RECORD = 3;
const ROOT_RECORD = 5;
const BITMAP_RECORD = 6;

/** Attribute types (NTFS docs "Attributes"). */
const AT_ATTRIBUTE_LIST = 0x20;
const AT_VOLUME_INFORMATION = 0x70;
const AT_DATA = 0x80;
const AT_INDEX_ROOT = 0x90;
const AT_INDEX_ALLOCATION = 0xa0;
const AT_END = 0xffffffff;

/** $VOLUME_INFORMATION flags: set while mounted, cleared at a clean unmount; chkdsk running. */
const VOLUME_IS_DIRTY = 0x0001;
const VOLUME_CHKDSK_UNDERWAY = 0x4000;
/** Attribute flags that change how runs map to bytes. */
const ATTR_COMPRESSED_OR_ENCRYPTED = 0x00ff | 0x4000;

/** Update sequence strides are 512 bytes whatever the sector size (NTFS docs "Concepts: Fixup"). */
const USA_STRIDE = 512;
/** Cluster sizes Windows formats: 512 bytes .. 2 MiB. */
const MAX_CLUSTER = 2 << 20;
const MAX_ATTRIBUTE_LIST = 256 << 10;
/** $Bitmap is read this many bytes at a time. */
const BITMAP_CHUNK = 1 << 20;

export function isNtfs(sector: Uint8Array): boolean {
  return sector.length >= 512 && new TextDecoder('latin1').decode(sector.subarray(3, 11)) === 'NTFS    ' && sector[510] === 0x55 && sector[511] === 0xaa;
}

function fail(message: string, kind: 'corrupt' | 'unsupported' = 'corrupt'): never {
  throw new BlockError(kind, `NTFS: ${message}`);
}

interface Run {
  vcn: number;
  /** -1 for a sparse run. */
  lcn: number;
  length: number;
}

interface Geometry {
  clusterSize: number;
  totalClusters: number;
  recordSize: number;
}

function geometry(raw: Uint8Array, partLength: number): Geometry & { mftLcn: number } {
  const b = Boot.decode(raw);
  const bps = b.bytesPerSector;
  if (bps < 256 || bps > 4096 || (bps & (bps - 1)) !== 0) fail(`${bps} bytes per sector is not allowed`);
  // Values above 0x80 are a negative power of two (large clusters, Windows 10 1709+).
  const spc = b.sectorsPerCluster <= 0x80 ? b.sectorsPerCluster : 2 ** (256 - b.sectorsPerCluster);
  if (spc === 0 || (spc & (spc - 1)) !== 0) fail(`${b.sectorsPerCluster} sectors per cluster is not allowed`);
  const clusterSize = bps * spc;
  if (clusterSize > MAX_CLUSTER) fail(`cluster size ${clusterSize} is not allowed`);
  const totalSectors = u64ToNumber(b.totalSectors, 'NTFS total sectors');
  if (totalSectors * bps > partLength) fail(`the volume (${totalSectors} sectors of ${bps} bytes) is larger than its partition (${partLength} bytes)`);
  const totalClusters = Math.floor(totalSectors / spc);
  if (totalClusters === 0) fail('the volume has no clusters');
  const cpr = b.clustersPerMftRecord;
  const recordSize = cpr < 0x80 ? cpr * clusterSize : 2 ** (256 - cpr);
  if (recordSize < USA_STRIDE || recordSize > 65536 || (recordSize & (recordSize - 1)) !== 0) fail(`MFT record size ${recordSize} is not allowed`);
  const mftLcn = u64ToNumber(b.mftLcn, 'NTFS MFT LCN');
  if (mftLcn >= totalClusters) fail(`the MFT (cluster ${mftLcn}) lies outside the volume`);
  return { clusterSize, totalClusters, recordSize, mftLcn };
}

/** Restore the strides of a multi-sector protected record (FILE or RSTR) in place. */
function applyFixups(rec: Uint8Array, what: string): void {
  const dv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  const usaOfs = dv.getUint16(4, true);
  const usaCount = dv.getUint16(6, true);
  const strides = rec.length / USA_STRIDE;
  if (usaCount !== strides + 1 || usaOfs < 8 || usaOfs + 2 * usaCount > USA_STRIDE - 2 || usaOfs % 2 !== 0) {
    fail(`${what} has an invalid update sequence array (offset ${usaOfs}, count ${usaCount})`);
  }
  const usn = dv.getUint16(usaOfs, true);
  for (let i = 0; i < strides; i++) {
    const at = (i + 1) * USA_STRIDE - 2;
    if (dv.getUint16(at, true) !== usn) fail(`${what} is torn (update sequence number mismatch in stride ${i})`);
    dv.setUint16(at, dv.getUint16(usaOfs + 2 * (i + 1), true), true);
  }
}

/** Decode a runlist (NTFS docs "Concepts: Data Runs") starting at `vcn`. */
function decodeRuns(buf: Uint8Array, at: number, end: number, vcn: number, totalClusters: number, what: string): Run[] {
  const runs: Run[] = [];
  let lcn = 0;
  while (at < end) {
    const header = buf[at++];
    if (header === 0) return runs;
    const lenBytes = header & 0x0f;
    const ofsBytes = header >> 4;
    if (lenBytes === 0 || lenBytes > 8 || ofsBytes > 8 || at + lenBytes + ofsBytes > end) fail(`${what}'s runlist is malformed`);
    let length = 0;
    for (let i = lenBytes - 1; i >= 0; i--) length = length * 256 + buf[at + i];
    at += lenBytes;
    if (ofsBytes === 0) {
      runs.push({ vcn, lcn: -1, length });
    } else {
      let delta = 0;
      for (let i = ofsBytes - 1; i >= 0; i--) delta = delta * 256 + buf[at + i];
      if (buf[at + ofsBytes - 1] & 0x80) delta -= 2 ** (8 * ofsBytes); // signed
      at += ofsBytes;
      lcn += delta;
      if (!Number.isSafeInteger(lcn) || !Number.isSafeInteger(length) || lcn < 0 || length <= 0 || lcn + length > totalClusters) {
        fail(`${what}'s runlist points outside the volume (cluster ${lcn}, ${length} clusters)`);
      }
      runs.push({ vcn, lcn, length });
    }
    vcn += length;
    if (!Number.isSafeInteger(vcn)) fail(`${what}'s runlist is malformed`);
  }
  fail(`${what}'s runlist has no terminator`);
}

interface Attribute {
  type: number;
  nameLength: number;
  /** The attribute's name ("" for the unnamed one; "$I30" for directory indexes). */
  name: string;
  flags: number;
  nonResident: boolean;
  /** Resident value. */
  value?: Uint8Array;
  /** Non-resident fields. */
  lowestVcn: number;
  highestVcn: number;
  dataSize: number;
  initializedSize: number;
  runs: Run[];
}

/** The attributes of an MFT record (after fixups). */
function attributes(rec: Uint8Array, g: Geometry, what: string): Attribute[] {
  const dv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  if (new TextDecoder('latin1').decode(rec.subarray(0, 4)) !== 'FILE') fail(`${what} has no FILE signature`);
  if (!(dv.getUint16(0x16, true) & 0x0001)) fail(`${what} is not in use`);
  const bytesInUse = dv.getUint32(0x18, true);
  if (bytesInUse > rec.length) fail(`${what} claims ${bytesInUse} bytes in use`);
  const out: Attribute[] = [];
  let at = dv.getUint16(0x14, true);
  for (;;) {
    if (at + 4 > bytesInUse) fail(`${what}'s attributes run past its end`);
    const type = dv.getUint32(at, true);
    if (type === AT_END) return out;
    if (at + 0x18 > bytesInUse) fail(`${what}'s attributes run past its end`);
    const length = dv.getUint32(at + 4, true);
    if (length < 0x18 || length % 8 !== 0 || at + length > bytesInUse) fail(`${what} has an attribute of invalid length ${length}`);
    const a = rec.subarray(at, at + length);
    const av = new DataView(a.buffer, a.byteOffset, a.byteLength);
    const nonResident = a[8] !== 0;
    const nameOffset = av.getUint16(0x0a, true);
    if (nameOffset + 2 * a[9] > length) fail(`${what} has an attribute name outside its attribute`);
    const name = decodeUtf16(a.subarray(nameOffset, nameOffset + 2 * a[9]), 'le', false);
    const base = { type, nameLength: a[9], name, flags: av.getUint16(0x0c, true), nonResident };
    if (!nonResident) {
      const valueLength = av.getUint32(0x10, true);
      const valueOffset = av.getUint16(0x14, true);
      if (valueOffset + valueLength > length) fail(`${what} has an attribute whose value runs past it`);
      out.push({ ...base, value: a.subarray(valueOffset, valueOffset + valueLength), lowestVcn: 0, highestVcn: -1, dataSize: valueLength, initializedSize: valueLength, runs: [] });
    } else {
      if (length < 0x40) fail(`${what} has a non-resident attribute of invalid length ${length}`);
      const lowestVcn = u64ToNumber(av.getBigUint64(0x10, true), `${what} lowest VCN`);
      const highestVcn = Number(av.getBigInt64(0x18, true));
      const mp = av.getUint16(0x20, true);
      if (mp < 0x40 || mp > length) fail(`${what} has a runlist outside its attribute`);
      out.push({
        ...base,
        lowestVcn,
        highestVcn,
        dataSize: u64ToNumber(av.getBigUint64(0x30, true), `${what} data size`),
        initializedSize: u64ToNumber(av.getBigUint64(0x38, true), `${what} initialized size`),
        runs: decodeRuns(a, mp, length, lowestVcn, g.totalClusters, what),
      });
    }
    at += length;
  }
}

class Ntfs {
  /** Runs of $MFT's unnamed $DATA (the first extent, which maps the system records). */
  mftRuns: Run[] = [];

  constructor(
    readonly vol: Volume,
    readonly g: Geometry,
  ) {}

  /** Read `length` bytes at `offset` of a stream described by `runs` (sparse runs read as zeros). */
  async readStream(runs: Run[], offset: number, length: number, what: string): Promise<Uint8Array> {
    const cs = this.g.clusterSize;
    const out = new Uint8Array(length);
    let done = 0;
    for (const r of runs) {
      const rs = r.vcn * cs;
      const re = rs + r.length * cs;
      const s = Math.max(rs, offset + done);
      const e = Math.min(re, offset + length);
      if (s >= e) continue;
      if (s !== offset + done) break; // a gap in the runs
      if (r.lcn >= 0) out.set(await this.vol.read(r.lcn * cs + (s - rs), e - s, what), done);
      done += e - s;
      if (done === length) return out;
    }
    fail(`${what} is not mapped by its runlist`);
  }

  async record(n: number, what: string): Promise<Attribute[]> {
    const rs = this.g.recordSize;
    const rec = await this.readStream(this.mftRuns, n * rs, rs, what);
    applyFixups(rec, what);
    return attributes(rec, this.g, what);
  }

  /** Record 0 is read where the boot sector points: it holds the runlist that maps all others. */
  async mftRecord0(mftLcn: number): Promise<Attribute[]> {
    const rec = await this.vol.read((mftLcn * this.g.clusterSize) + MFT_RECORD * this.g.recordSize, this.g.recordSize, '$MFT record 0');
    applyFixups(rec, '$MFT record 0');
    return attributes(rec, this.g, '$MFT record 0');
  }

  /** All extents of the unnamed $DATA of a record, following an $ATTRIBUTE_LIST into extension records. */
  async dataExtents(n: number, what: string): Promise<Attribute[]> {
    const attrs = await this.record(n, what);
    const list = attrs.find((a) => a.type === AT_ATTRIBUTE_LIST);
    let extents = attrs.filter((a) => a.type === AT_DATA && a.nameLength === 0);
    if (list) {
      // An attribute list names at most a few hundred extents; a larger one is damage, not something to allocate.
      if (list.dataSize > MAX_ATTRIBUTE_LIST) fail(`${what}'s attribute list of ${list.dataSize} bytes is too large`);
      const value = list.nonResident ? await this.readStream(list.runs, 0, list.dataSize, `${what}'s attribute list`) : list.value!;
      const lv = new DataView(value.buffer, value.byteOffset, value.byteLength);
      const others = new Set<number>();
      for (let at = 0; at + 0x1a <= value.length; ) {
        const type = lv.getUint32(at, true);
        const len = lv.getUint16(at + 4, true);
        if (len < 0x1a || at + len > value.length) fail(`${what}'s attribute list is malformed`);
        const ref = Number(lv.getBigUint64(at + 0x10, true) & 0xffffffffffffn);
        if (type === AT_DATA && value[at + 6] === 0 && ref !== n) others.add(ref);
        at += len;
      }
      if (others.size > 64) fail(`${what}'s $DATA is spread over too many records`, 'unsupported');
      for (const ref of others) {
        const ext = await this.record(ref, `${what}'s extension record ${ref}`);
        extents = extents.concat(ext.filter((a) => a.type === AT_DATA && a.nameLength === 0));
      }
    }
    if (extents.length === 0) fail(`${what} has no unnamed $DATA attribute`);
    extents.sort((a, b) => a.lowestVcn - b.lowestVcn);
    if (extents[0].lowestVcn !== 0 || !extents[0].nonResident) fail(`${what}'s $DATA does not start at VCN 0 or is resident`);
    for (let i = 1; i < extents.length; i++) {
      if (!extents[i].nonResident || extents[i].lowestVcn !== extents[i - 1].highestVcn + 1) fail(`${what}'s $DATA extents do not follow each other`);
    }
    for (const e of extents) if (e.flags & ATTR_COMPRESSED_OR_ENCRYPTED) fail(`${what}'s $DATA is compressed or encrypted`, 'unsupported');
    return extents;
  }
}

/**
 * Refuse a volume Windows did not leave clean. $Volume's $VOLUME_INFORMATION
 * flags carry VOLUME_IS_DIRTY while mounted; a hibernated Windows (also "Fast
 * Startup") leaves its $LogFile with clients in use and without the
 * RESTART_VOLUME_IS_CLEAN flag, which is what ntfs-3g checks before mounting
 * (ntfs_check_logfile): the restart area of the first restart page ("RSTR",
 * NTFS docs "Files: $LogFile") is examined; an all-0xFF page is an emptied log.
 */
async function checkClean(fs: Ntfs): Promise<{ version: string; logRuns: Run[] }> {
  const vol = await fs.record(VOLUME_RECORD, '$Volume');
  const info = vol.find((a) => a.type === AT_VOLUME_INFORMATION && !a.nonResident);
  if (!info?.value || info.value.length < 12) fail('$Volume has no $VOLUME_INFORMATION');
  const flags = info.value[10] | (info.value[11] << 8);
  const version = `${info.value[8]}.${info.value[9]}`;
  if (flags & VOLUME_IS_DIRTY) throw new BlockError('unsupported', 'NTFS volume is marked dirty (not cleanly unmounted, or chkdsk is due); run chkdsk or ntfsfix -d after checking it');
  if (flags & VOLUME_CHKDSK_UNDERWAY) throw new BlockError('unsupported', 'NTFS volume has chkdsk under way');

  const log = await fs.dataExtents(LOGFILE_RECORD, '$LogFile');
  const runs = log.flatMap((e) => e.runs);
  const size = log[0].dataSize;
  // Two restart pages, the second one system page size after the first; the
  // one with the higher current LSN is the restart area in force (ntfs-3g
  // logfile.c does the same).
  let newest: { lsn: bigint; inUse: number; flags: number } | undefined;
  let empty = true;
  let pageSize = 4096;
  for (const at of [0, -1]) {
    const offset = at === 0 ? 0 : pageSize;
    if (offset + 512 > size) break;
    const head = await fs.readStream(runs, offset, Math.min(4096, size - offset), '$LogFile');
    if (head.every((b) => b === 0xff)) continue;
    empty = false;
    const magic = new TextDecoder('latin1').decode(head.subarray(0, 4));
    if (magic === 'CHKD') throw new BlockError('unsupported', 'NTFS $LogFile was left by an interrupted chkdsk');
    if (magic !== 'RSTR') continue;
    const ps = new DataView(head.buffer, head.byteOffset, head.byteLength).getUint32(0x10, true);
    if (ps < 512 || ps > 65536 || (ps & (ps - 1)) !== 0) fail(`$LogFile restart page size ${ps} is not allowed`);
    if (at === 0) pageSize = ps;
    if (offset + ps > size) fail('$LogFile restart page runs past the log');
    const page = ps <= head.length ? head.slice(0, ps) : await fs.readStream(runs, offset, ps, '$LogFile');
    applyFixups(page, '$LogFile restart page');
    const pv = new DataView(page.buffer, page.byteOffset, page.byteLength);
    const ra = pv.getUint16(0x18, true);
    if (ra + 0x10 > page.length) fail('$LogFile restart area lies outside its page');
    const area = { lsn: pv.getBigUint64(ra, true), inUse: pv.getUint16(ra + 0x0c, true), flags: pv.getUint16(ra + 0x0e, true) };
    if (!newest || area.lsn > newest.lsn) newest = area;
  }
  if (empty) return { version, logRuns: runs };
  if (!newest) fail('$LogFile has no restart page');
  const RESTART_VOLUME_IS_CLEAN = 0x0002;
  const LOGFILE_NO_CLIENT = 0xffff;
  if (newest.inUse !== LOGFILE_NO_CLIENT && !(newest.flags & RESTART_VOLUME_IS_CLEAN)) {
    throw new BlockError('unsupported', 'NTFS $LogFile is not clean (Windows hibernated, Fast Startup, or not cleanly shut down); shut Windows down fully first');
  }
  return { version, logRuns: runs };
}

/** The largest root-directory index read when looking for hiberfil.sys (a root holds tens of entries). */
const MAX_ROOT_INDEX = 16 << 20;

/**
 * The MFT references of the entries of a directory index named `wanted`
 * (lower case). Layout (NTFS docs "Attributes: $INDEX_ROOT, $INDEX_ALLOCATION",
 * "Concepts: Index entry"): an index header (entries offset, index length)
 * followed by entries (file reference u64, entry length u16 @8, key length
 * u16 @10, flags u16 @12 with 2 = last, key = a $FILE_NAME value whose name
 * length is at 0x40 and UTF-16 name at 0x42). Every entry is looked at, in
 * the root and in every INDX block, so no B-tree order has to be trusted.
 */
function indexEntries(block: Uint8Array, header: number, what: string, wanted: string, found: number[]): void {
  const dv = new DataView(block.buffer, block.byteOffset, block.byteLength);
  if (header + 16 > block.length) fail(`${what} is truncated`);
  const end = header + dv.getUint32(header + 4, true);
  let at = header + dv.getUint32(header, true);
  if (end > block.length) fail(`${what}'s entries run past it`);
  for (;;) {
    if (at + 16 > end) fail(`${what}'s entries run past it`);
    const len = dv.getUint16(at + 8, true);
    const keyLen = dv.getUint16(at + 10, true);
    const flags = dv.getUint16(at + 12, true);
    if (len < 16 || at + len > end || 16 + keyLen > len) fail(`${what} has an index entry of invalid length`);
    if (flags & 2) return;
    if (keyLen >= 0x42) {
      const n = block[at + 16 + 0x40];
      if (0x42 + 2 * n <= keyLen && n === wanted.length) {
        const name = decodeUtf16(block.subarray(at + 16 + 0x42, at + 16 + 0x42 + 2 * n), 'le', false);
        if (name.toLowerCase() === wanted) found.push(Number(dv.getBigUint64(at, true) & 0xffffffffffffn));
      }
    }
    at += len;
  }
}

/**
 * Refuse a hibernated Windows: a hibernated (or Fast Startup) system leaves
 * hiberfil.sys in the root directory starting with "hibr" or "HIBR"; after a
 * resume it reads "wake" or zeros. ntfs-3g refuses to mount such a volume
 * read-write for the same reason (volume.c, ntfs_volume_check_hiberfile).
 */
async function checkHibernation(fs: Ntfs): Promise<void> {
  const root = await fs.record(ROOT_RECORD, 'the root directory');
  const ir = root.find((a) => a.type === AT_INDEX_ROOT && a.name === '$I30' && !a.nonResident);
  if (!ir?.value || ir.value.length < 0x20) fail('the root directory has no $I30 index root');
  const refs: number[] = [];
  indexEntries(ir.value, 0x10, 'the root directory index', 'hiberfil.sys', refs);
  const blockSize = new DataView(ir.value.buffer, ir.value.byteOffset).getUint32(8, true);
  const alloc = root.find((a) => a.type === AT_INDEX_ALLOCATION && a.name === '$I30' && a.nonResident);
  if (alloc) {
    if (blockSize < USA_STRIDE || blockSize > 65536 || (blockSize & (blockSize - 1)) !== 0) fail(`root directory index block size ${blockSize} is not allowed`);
    if (alloc.dataSize > MAX_ROOT_INDEX) fail(`the root directory index of ${alloc.dataSize} bytes is too large`, 'unsupported');
    if (alloc.lowestVcn !== 0) fail("the root directory's index allocation is split over records", 'unsupported');
    const data = await fs.readStream(alloc.runs, 0, Math.floor(alloc.dataSize / blockSize) * blockSize, 'the root directory index');
    for (let at = 0; at + blockSize <= data.length; at += blockSize) {
      const block = data.subarray(at, at + blockSize);
      if (new TextDecoder('latin1').decode(block.subarray(0, 4)) !== 'INDX') continue; // never used
      applyFixups(block, 'a root directory index block');
      indexEntries(block, 0x18, 'a root directory index block', 'hiberfil.sys', refs);
    }
  }
  for (const ref of refs) {
    const attrs = await fs.record(ref, 'hiberfil.sys');
    const resident = attrs.find((a) => a.type === AT_DATA && a.nameLength === 0 && !a.nonResident);
    let head: Uint8Array;
    if (resident) head = resident.value!.subarray(0, 4);
    else {
      const extents = await fs.dataExtents(ref, 'hiberfil.sys');
      if (extents[0].initializedSize < 4) continue;
      head = await fs.readStream(extents.flatMap((e) => e.runs), 0, 4, 'hiberfil.sys');
    }
    const magic = new TextDecoder('latin1').decode(head);
    if (magic === 'hibr' || magic === 'HIBR') {
      throw new BlockError('unsupported', `NTFS: Windows is hibernated (hiberfil.sys begins with "${magic}"); resume it and shut it down fully (Fast Startup off)`);
    }
  }
}

/**
 * $MFTMirr holds copies of the first MFT records ($MFT, $MFTMirr, $LogFile,
 * $Volume); ntfs-3g refuses a volume where they differ, and so do we: the
 * runlists read from record 0 then come from a record Windows wrote twice.
 */
async function checkMirror(fs: Ntfs, mirrLcn: number): Promise<void> {
  const { recordSize, clusterSize, totalClusters } = fs.g;
  if (mirrLcn * clusterSize + 4 * recordSize > totalClusters * clusterSize) fail(`$MFTMirr (cluster ${mirrLcn}) lies outside the volume`);
  const mirror = await fs.vol.read(mirrLcn * clusterSize, 4 * recordSize, '$MFTMirr');
  const main = await fs.readStream(fs.mftRuns, 0, 4 * recordSize, '$MFT');
  for (let i = 0; i < 4; i++) {
    const a = main.subarray(i * recordSize, (i + 1) * recordSize);
    const b = mirror.subarray(i * recordSize, (i + 1) * recordSize);
    applyFixups(a, `$MFT record ${i}`);
    applyFixups(b, `$MFTMirr record ${i}`);
    const inUse = new DataView(a.buffer, a.byteOffset).getUint32(0x18, true);
    if (inUse > recordSize) fail(`$MFT record ${i} claims ${inUse} bytes in use`);
    for (let k = 0; k < inUse; k++) if (a[k] !== b[k]) fail(`$MFTMirr does not match $MFT (record ${i}); run chkdsk`);
  }
}

/**
 * Report the free clusters of the NTFS volume in `vol` to `out` (disk byte
 * ranges, ascending); returns a one-line description for the notes.
 */
export async function ntfsFreeSpace(vol: Volume, out: FreeRanges): Promise<string> {
  const geo = geometry(await vol.read(0, 512, 'the NTFS boot sector'), vol.length);
  const fs = new Ntfs(vol, geo);
  const cs = geo.clusterSize;
  const rec0 = await fs.mftRecord0(geo.mftLcn);
  const mftData = rec0.find((a) => a.type === AT_DATA && a.nameLength === 0 && a.nonResident && a.lowestVcn === 0);
  if (!mftData) fail('$MFT has no unnamed $DATA attribute');
  if (mftData.runs[0]?.lcn !== geo.mftLcn) fail('$MFT does not start where the boot sector says');
  fs.mftRuns = mftData.runs;
  await checkMirror(fs, u64ToNumber(Boot.decode(await vol.read(0, 512, 'the NTFS boot sector')).mftMirrLcn, 'NTFS MFT mirror LCN'));
  const { version, logRuns } = await checkClean(fs);
  await checkHibernation(fs);

  const bitmap = await fs.dataExtents(BITMAP_RECORD, '$Bitmap');
  const runs = bitmap.flatMap((e) => e.runs);
  const needed = Math.ceil(geo.totalClusters / 8);
  if (bitmap[0].dataSize < needed) fail(`$Bitmap (${bitmap[0].dataSize} bytes) is shorter than the volume (${geo.totalClusters} clusters need ${needed})`);
  if (bitmap[0].initializedSize < needed) fail(`$Bitmap is initialised only up to ${bitmap[0].initializedSize} of ${needed} bytes`);
  for (const r of runs) if (r.lcn < 0 && r.vcn * cs < needed) fail('$Bitmap has a sparse run');

  // $Boot (the first 8 KiB), the MFT's first extent, $LogFile and $Bitmap
  // itself must be marked in use: a bitmap that frees any of them is damaged
  // (or is not $Bitmap at all), and nothing it says can be trusted.
  const pairs: number[] = [0, Math.ceil(8192 / cs)];
  for (const r of [...fs.mftRuns, ...logRuns, ...runs]) if (r.lcn >= 0) pairs.push(r.lcn, r.lcn + r.length);
  const keep = mergeSorted(pairs);
  let ki = 0;
  const emit = (s: number, e: number) => {
    while (ki < keep.length && keep[ki + 1] <= s) ki += 2;
    if (ki < keep.length && keep[ki] < e) fail(`$Bitmap marks cluster ${Math.max(s, keep[ki])} of a system file free`);
    out.add(vol.start + s * cs, (e - s) * cs);
  };

  for (let byte = 0; byte < needed; byte += BITMAP_CHUNK) {
    const n = Math.min(BITMAP_CHUNK, needed - byte);
    const bits = await fs.readStream(runs, byte, n, '$Bitmap');
    const base = byte * 8;
    const count = Math.min(n * 8, geo.totalClusters - base);
    forEachRun('lsb-first', bits, 0, count, (s, e, set) => {
      if (!set) emit(base + s, base + e);
    });
  }
  return `NTFS ${version}, ${geo.totalClusters} clusters of ${cs} bytes`;
}
