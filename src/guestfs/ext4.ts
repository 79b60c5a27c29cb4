import { BlockError } from '../core/errors.js';
import { defineStruct } from '../codec/struct.js';
import { crc32c } from '../core/crc32c.js';
import { forEachRun } from '../core/bitmap.js';
import { mergeSorted, type FreeRanges, type Volume } from './volume.js';

/**
 * ext2/ext3/ext4 free space, from the block-group bitmaps.
 * Layout: "Ext4 Disk Layout" (kernel.org ext4 wiki, now
 * Documentation/filesystems/ext4/{super,group_descr,blockgroup,bitmaps}.rst).
 *
 *   partition byte 1024: superblock (1024 bytes, magic 0xEF53 at 0x38)
 *   block (1024 / block size) + 1: group descriptor table, desc_size bytes per group
 *   group g covers blocks first_data_block + g * blocks_per_group, ...; its block
 *   bitmap (one bit per cluster, LSB first, 1 = in use) is where its descriptor says
 *
 * "When in doubt, keep the block": besides the bitmap, every group's superblock
 * backup, descriptor copies and reserved GDT blocks, and every block bitmap,
 * inode bitmap and inode table named by any descriptor are subtracted from
 * what is reported free, even though a clean file system marks them in use.
 */

const MAGIC = 0xef53;
/** s_state bits (super.rst). */
const STATE_VALID = 0x0001;
const STATE_ERROR = 0x0002;
const STATE_ORPHANS = 0x0004;

/** s_feature_compat bits. */
const COMPAT_HAS_JOURNAL = 0x0004;
const COMPAT_SPARSE_SUPER2 = 0x0200;
/** s_feature_incompat bits. */
const INCOMPAT_COMPRESSION = 0x0001;
const INCOMPAT_RECOVER = 0x0004;
const INCOMPAT_JOURNAL_DEV = 0x0008;
const INCOMPAT_META_BG = 0x0010;
const INCOMPAT_64BIT = 0x0080;
const INCOMPAT_FLEX_BG = 0x0200;
const INCOMPAT_CSUM_SEED = 0x2000;
/** Incompat features whose on-disk changes leave the block bitmaps' meaning alone. */
const INCOMPAT_KNOWN =
  0x0002 /* filetype */ | INCOMPAT_META_BG | 0x0040 /* extents */ | INCOMPAT_64BIT | 0x0100 /* mmp */ | INCOMPAT_FLEX_BG |
  0x0400 /* ea_inode */ | 0x1000 /* dirdata */ | INCOMPAT_CSUM_SEED | 0x4000 /* largedir */ | 0x8000 /* inline_data */ |
  0x10000 /* encrypt */ | 0x20000 /* casefold */;
/** s_feature_ro_compat bits. */
const RO_SPARSE_SUPER = 0x0001;
const RO_GDT_CSUM = 0x0010;
const RO_BIGALLOC = 0x0200;
const RO_METADATA_CSUM = 0x0400;
/** Refused: snapshots keep blocks outside the block bitmap (exclude bitmap), replicas are not documented. */
const RO_REFUSED: Record<number, string> = { 0x0080: 'has_snapshot', 0x0800: 'replica' };
/** Read-only-compatible features known not to change what a clear bitmap bit means. */
const RO_KNOWN =
  RO_SPARSE_SUPER | 0x0002 /* large_file */ | 0x0004 /* btree_dir */ | 0x0008 /* huge_file */ | RO_GDT_CSUM | 0x0020 /* dir_nlink */ |
  0x0040 /* extra_isize */ | 0x0100 /* quota */ | RO_BIGALLOC | RO_METADATA_CSUM | 0x1000 /* readonly */ | 0x2000 /* project */ |
  0x4000 /* shared_blocks */ | 0x8000 /* verity */ | 0x10000 /* orphan_present */;

/** Descriptor bg_flags (group_descr.rst). */
const BG_BLOCK_UNINIT = 0x0002;

/** The superblock fields read here (super.rst, offsets in the comments). */
const Superblock = defineStruct('ext superblock', 'le', 1024, [
  { name: 'inodesCount', type: 'u32' }, // 0x00
  { name: 'blocksCountLo', type: 'u32' }, // 0x04
  { name: 'rBlocksCountLo', type: 'u32' }, // 0x08
  { name: 'freeBlocksCountLo', type: 'u32' }, // 0x0C
  { name: 'freeInodesCount', type: 'u32' }, // 0x10
  { name: 'firstDataBlock', type: 'u32' }, // 0x14
  { name: 'logBlockSize', type: 'u32' }, // 0x18
  { name: 'logClusterSize', type: 'u32' }, // 0x1C
  { name: 'blocksPerGroup', type: 'u32' }, // 0x20
  { name: 'clustersPerGroup', type: 'u32' }, // 0x24
  { name: 'inodesPerGroup', type: 'u32' }, // 0x28
  { name: 'mtimeWtime', type: 'bytes', size: 8 }, // 0x2C
  { name: 'mntCount', type: 'u16' }, // 0x34
  { name: 'maxMntCount', type: 'u16' }, // 0x36
  { name: 'magic', type: 'u16' }, // 0x38
  { name: 'state', type: 'u16' }, // 0x3A
  { name: 'errors', type: 'u16' }, // 0x3C
  { name: 'minorRevLevel', type: 'u16' }, // 0x3E
  { name: 'checkTimes', type: 'bytes', size: 12 }, // 0x40 lastcheck, checkinterval, creator_os
  { name: 'revLevel', type: 'u32' }, // 0x4C
  { name: 'defResUidGid', type: 'u32' }, // 0x50
  { name: 'firstIno', type: 'u32' }, // 0x54
  { name: 'inodeSize', type: 'u16' }, // 0x58
  { name: 'blockGroupNr', type: 'u16' }, // 0x5A
  { name: 'featureCompat', type: 'u32' }, // 0x5C
  { name: 'featureIncompat', type: 'u32' }, // 0x60
  { name: 'featureRoCompat', type: 'u32' }, // 0x64
  { name: 'uuid', type: 'bytes', size: 16 }, // 0x68
  { name: 'volumeName', type: 'bytes', size: 16 }, // 0x78
  { name: 'lastMounted', type: 'bytes', size: 64 }, // 0x88
  { name: 'algorithmUsageBitmap', type: 'u32' }, // 0xC8
  { name: 'prealloc', type: 'u16' }, // 0xCC
  { name: 'reservedGdtBlocks', type: 'u16' }, // 0xCE
  { name: 'journalUuid', type: 'bytes', size: 16 }, // 0xD0
  { name: 'journalInum', type: 'u32' }, // 0xE0
  { name: 'journalDev', type: 'u32' }, // 0xE4
  { name: 'lastOrphan', type: 'u32' }, // 0xE8
  { name: 'hashSeed', type: 'bytes', size: 16 }, // 0xEC
  { name: 'defHashVersion', type: 'u8' }, // 0xFC
  { name: 'jnlBackupType', type: 'u8' }, // 0xFD
  { name: 'descSize', type: 'u16' }, // 0xFE
  { name: 'defaultMountOpts', type: 'u32' }, // 0x100
  { name: 'firstMetaBg', type: 'u32' }, // 0x104
  { name: 'mkfsTime', type: 'u32' }, // 0x108
  { name: 'jnlBlocks', type: 'bytes', size: 68 }, // 0x10C
  { name: 'blocksCountHi', type: 'u32' }, // 0x150
  { name: 'rBlocksCountHi', type: 'u32' }, // 0x154
  { name: 'freeBlocksCountHi', type: 'u32' }, // 0x158
  { name: 'extraIsize', type: 'u32' }, // 0x15C
  { name: 'flags', type: 'u32' }, // 0x160
  { name: 'raid', type: 'bytes', size: 16 }, // 0x164 raid_stride, mmp_interval, mmp_block, raid_stripe_width
  { name: 'logGroupsPerFlex', type: 'u8' }, // 0x174
  { name: 'checksumType', type: 'u8' }, // 0x175
  { name: 'pad', type: 'bytes', size: 30 }, // 0x176 .. 0x194
  { name: 'errorCount', type: 'u32' }, // 0x194
  { name: 'errorInfo', type: 'bytes', size: 180 }, // 0x198 .. 0x24C
  { name: 'backupBg0', type: 'u32' }, // 0x24C
  { name: 'backupBg1', type: 'u32' }, // 0x250
  { name: 'encryptSalt', type: 'bytes', size: 28 }, // 0x254 .. 0x270
  { name: 'checksumSeed', type: 'u32' }, // 0x270
  { name: 'rest', type: 'bytes', size: 392 }, // 0x274 .. 0x3FC
  { name: 'checksum', type: 'u32' }, // 0x3FC
]);

/** Group descriptor fields (group_descr.rst); the *Hi halves exist when desc_size >= 64. */
const D_BLOCK_BITMAP_LO = 0x00;
const D_INODE_BITMAP_LO = 0x04;
const D_INODE_TABLE_LO = 0x08;
const D_FREE_BLOCKS_LO = 0x0c;
const D_FLAGS = 0x12;
const D_BLOCK_BITMAP_CSUM_LO = 0x18;
const D_CHECKSUM = 0x1e;
const D_BLOCK_BITMAP_HI = 0x20;
const D_INODE_BITMAP_HI = 0x24;
const D_INODE_TABLE_HI = 0x28;
const D_FREE_BLOCKS_HI = 0x2c;
const D_BLOCK_BITMAP_CSUM_HI = 0x38;

/** Recognise the superblock magic (the only test made before a partition is claimed as ext). */
export function isExt(superblock: Uint8Array): boolean {
  return superblock.length >= 0x3a && (superblock[0x38] | (superblock[0x39] << 8)) === MAGIC;
}

/** ext4's crc32c: the raw CRC register, seeded by the caller, without the final inversion (ext4_chksum). */
function extCrc32c(seed: number, data: Uint8Array): number {
  return ~crc32c(data, ~seed) >>> 0;
}

/** CRC-16 (polynomial 0x8005, reflected) of the older gdt_csum feature (e2fsprogs lib/ext2fs/crc16.c). */
const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1;
    t[i] = c;
  }
  return t;
})();
function crc16(crc: number, data: Uint8Array): number {
  for (const b of data) crc = (crc >>> 8) ^ CRC16_TABLE[(crc ^ b) & 0xff];
  return crc & 0xffff;
}

function isPowerOf(n: number, base: number): boolean {
  while (n > 1 && n % base === 0) n /= base;
  return n === 1;
}

interface Geometry {
  blockSize: number;
  /** Blocks per cluster (1 unless bigalloc). */
  clusterRatio: number;
  blocksCount: number;
  firstDataBlock: number;
  blocksPerGroup: number;
  clustersPerGroup: number;
  groups: number;
  descSize: number;
  descPerBlock: number;
  inodeTableBlocks: number;
  incompat: number;
  roCompat: number;
  compat: number;
  firstMetaBg: number;
  reservedGdtBlocks: number;
  backupBgs: [number, number];
  csumSeed: number;
  uuid: Uint8Array;
}

function fail(message: string, kind: 'corrupt' | 'unsupported' = 'corrupt'): never {
  throw new BlockError(kind, `ext file system: ${message}`);
}

/** Decode first, validate second: every field used to locate anything is checked here. */
function geometry(raw: Uint8Array, partLength: number): Geometry {
  const sb = Superblock.decode(raw);
  if (sb.magic !== MAGIC) fail('bad superblock magic');
  if (sb.revLevel > 1) fail(`superblock revision ${sb.revLevel} is unknown`, 'unsupported');
  const rev0 = sb.revLevel === 0;
  // Revision 0 has no feature fields (super.rst: "only valid if s_rev_level > 0").
  const compat = rev0 ? 0 : sb.featureCompat;
  const incompat = rev0 ? 0 : sb.featureIncompat;
  const roCompat = rev0 ? 0 : sb.featureRoCompat;

  if (roCompat & RO_METADATA_CSUM) {
    if (sb.checksumType !== 1) fail(`superblock checksum type ${sb.checksumType} is unknown`, 'unsupported');
    if (extCrc32c(0xffffffff, raw.subarray(0, Superblock.offsets.checksum)) !== sb.checksum) fail('superblock checksum does not match');
  }
  // Refuse what is not clean before anything else that might be a side effect of it.
  if (incompat & INCOMPAT_RECOVER) throw new BlockError('unsupported', 'ext file system needs journal recovery (needs_recovery): it was not unmounted cleanly; mount it once or run e2fsck');
  if (sb.state & STATE_ERROR) throw new BlockError('unsupported', 'ext file system has errors (superblock state); run e2fsck');
  if (sb.state & STATE_ORPHANS) throw new BlockError('unsupported', 'ext file system is recovering orphan inodes (superblock state); run e2fsck');
  if (!(sb.state & STATE_VALID)) throw new BlockError('unsupported', 'ext file system was not cleanly unmounted (superblock state); run e2fsck');
  if (sb.errorCount !== 0) throw new BlockError('unsupported', `ext file system recorded ${sb.errorCount} errors since its last check; run e2fsck`);

  if (incompat & INCOMPAT_JOURNAL_DEV) fail('is an external journal device', 'unsupported');
  if (incompat & INCOMPAT_COMPRESSION) fail('uses the compression feature', 'unsupported');
  const unknownIncompat = incompat & ~INCOMPAT_KNOWN & ~INCOMPAT_RECOVER;
  if (unknownIncompat) fail(`has unknown incompatible features 0x${unknownIncompat.toString(16)}`, 'unsupported');
  for (const [bit, name] of Object.entries(RO_REFUSED)) if (roCompat & Number(bit)) fail(`uses the ${name} feature`, 'unsupported');
  const unknownRo = roCompat & ~RO_KNOWN;
  if (unknownRo) fail(`has unknown read-only features 0x${unknownRo.toString(16)}`, 'unsupported');

  // super.rst: block size = 2 ^ (10 + s_log_block_size); Linux mounts 1 KiB .. 64 KiB.
  if (sb.logBlockSize > 6) fail(`block size 2^${10 + sb.logBlockSize} is not allowed`);
  const blockSize = 1024 << sb.logBlockSize;
  const bigalloc = (roCompat & RO_BIGALLOC) !== 0;
  let clusterRatio = 1;
  if (bigalloc) {
    if (sb.logClusterSize < sb.logBlockSize || sb.logClusterSize - sb.logBlockSize > 16) fail(`cluster size 2^${10 + sb.logClusterSize} is not allowed`);
    clusterRatio = 2 ** (sb.logClusterSize - sb.logBlockSize);
  } else if (!rev0 && sb.logClusterSize !== sb.logBlockSize && sb.logClusterSize !== 0) {
    fail('cluster size differs from block size without bigalloc');
  }
  const is64 = (incompat & INCOMPAT_64BIT) !== 0;
  const blocksCount = sb.blocksCountLo + (is64 ? sb.blocksCountHi * 2 ** 32 : 0);
  // A 1 KiB-block file system starts at block 1 (block 0 holds the boot sector); others at 0.
  const firstDataBlock = blockSize === 1024 && !bigalloc ? 1 : 0;
  if (sb.firstDataBlock !== firstDataBlock) fail(`first data block ${sb.firstDataBlock} is wrong for ${blockSize}-byte blocks`);
  if (blocksCount <= firstDataBlock) fail(`block count ${blocksCount} is too small`);
  if (blocksCount * blockSize > partLength) {
    fail(`is larger than its partition (${blocksCount} blocks of ${blockSize} bytes, partition ${partLength} bytes)`);
  }
  const bitsPerBitmap = 8 * blockSize;
  const clustersPerGroup = bigalloc ? sb.clustersPerGroup : sb.blocksPerGroup;
  if (clustersPerGroup < 8 || clustersPerGroup > bitsPerBitmap || clustersPerGroup % 8 !== 0) fail(`${clustersPerGroup} clusters per group is not allowed`);
  if (sb.blocksPerGroup !== clustersPerGroup * clusterRatio) fail('blocks per group and clusters per group disagree');
  const blocksPerGroup = sb.blocksPerGroup;
  const groups = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  if (sb.inodesPerGroup < 1 || sb.inodesPerGroup > bitsPerBitmap) fail(`${sb.inodesPerGroup} inodes per group is not allowed`);
  if (sb.inodesCount !== groups * sb.inodesPerGroup) fail(`inode count ${sb.inodesCount} disagrees with ${groups} groups of ${sb.inodesPerGroup}`);
  const inodeSize = rev0 ? 128 : sb.inodeSize;
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) fail(`inode size ${inodeSize} is not allowed`);
  let descSize = 32;
  if (is64) {
    descSize = sb.descSize;
    // group_descr.rst: 64 bytes with 64bit, a power of two no larger than 1024 (EXT4_MAX_DESC_SIZE).
    if (descSize < 64 || descSize > 1024 || (descSize & (descSize - 1)) !== 0) fail(`group descriptor size ${descSize} is not allowed`);
  }
  const descPerBlock = blockSize / descSize;
  const metaBg = (incompat & INCOMPAT_META_BG) !== 0;
  if (metaBg && sb.firstMetaBg > Math.ceil(groups / descPerBlock)) fail(`first_meta_bg ${sb.firstMetaBg} lies past the descriptor table`);
  const csumSeed = incompat & INCOMPAT_CSUM_SEED ? sb.checksumSeed : extCrc32c(0xffffffff, sb.uuid);
  return {
    blockSize,
    clusterRatio,
    blocksCount,
    firstDataBlock,
    blocksPerGroup,
    clustersPerGroup,
    groups,
    descSize,
    descPerBlock,
    inodeTableBlocks: Math.ceil((sb.inodesPerGroup * inodeSize) / blockSize),
    incompat,
    roCompat,
    compat,
    firstMetaBg: metaBg ? sb.firstMetaBg : 0,
    reservedGdtBlocks: sb.reservedGdtBlocks,
    backupBgs: [sb.backupBg0, sb.backupBg1],
    csumSeed,
    uuid: sb.uuid,
  };
}

/** Whether group g holds a superblock backup (ext4_bg_has_super; super.rst "sparse_super", "sparse_super2"). */
function hasSuper(g: Geometry, group: number): boolean {
  if (group === 0) return true;
  if (g.compat & COMPAT_SPARSE_SUPER2) return group === g.backupBgs[0] || group === g.backupBgs[1];
  if (group <= 1 || !(g.roCompat & RO_SPARSE_SUPER)) return true;
  if (group % 2 === 0) return false;
  return isPowerOf(group, 3) || isPowerOf(group, 5) || isPowerOf(group, 7);
}

function groupFirstBlock(g: Geometry, group: number): number {
  return g.firstDataBlock + group * g.blocksPerGroup;
}

function metaBgActive(g: Geometry, group: number): boolean {
  return (g.incompat & INCOMPAT_META_BG) !== 0 && Math.floor(group / g.descPerBlock) >= g.firstMetaBg;
}

/**
 * Blocks at the start of a group taken by the superblock backup and descriptor
 * copies (ext4_num_base_meta_clusters): with meta_bg, the first, second and
 * last group of each meta group carry one descriptor block.
 */
function baseMetaBlocks(g: Geometry, group: number): number {
  const sup = hasSuper(g, group) ? 1 : 0;
  if (!metaBgActive(g, group)) {
    if (!sup) return 0;
    const gdt = g.incompat & INCOMPAT_META_BG ? g.firstMetaBg : Math.ceil(g.groups / g.descPerBlock);
    return sup + gdt + g.reservedGdtBlocks;
  }
  const r = group % g.descPerBlock;
  return sup + (r === 0 || r === 1 || r === g.descPerBlock - 1 ? 1 : 0);
}

/** Block holding descriptor block number `index` (ext4_descriptor_loc). */
function descriptorBlock(g: Geometry, index: number): number {
  const sbBlock = Math.floor(1024 / g.blockSize);
  if (!(g.incompat & INCOMPAT_META_BG) || index < g.firstMetaBg) return sbBlock + 1 + index;
  const first = index * g.descPerBlock;
  return groupFirstBlock(g, first) + (hasSuper(g, first) ? 1 : 0);
}

interface Descriptor {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  freeClusters: number;
  flags: number;
  bitmapCsum: number;
  /** Whether bitmapCsum holds 32 bits (else its low 16). */
  bitmapCsum32: boolean;
}

/** Reads descriptors in runs of consecutive descriptor blocks (1 MiB at most), so a 64 TiB file system is never held whole. */
class Descriptors {
  private chunkFirst = -1;
  private chunkBlocks = 0;
  private chunk: Uint8Array = new Uint8Array(0);
  private readonly wide: boolean;

  constructor(
    private readonly vol: Volume,
    private readonly g: Geometry,
  ) {
    this.wide = g.descSize >= 64;
  }

  async get(group: number): Promise<Descriptor> {
    const g = this.g;
    const index = Math.floor(group / g.descPerBlock);
    if (index < this.chunkFirst || index >= this.chunkFirst + this.chunkBlocks) await this.load(index);
    const at = (index - this.chunkFirst) * g.blockSize + (group % g.descPerBlock) * g.descSize;
    const d = this.chunk.subarray(at, at + g.descSize);
    this.verify(group, d);
    const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
    const u32 = (lo: number, hi: number) => dv.getUint32(lo, true) + (this.wide ? dv.getUint32(hi, true) * 2 ** 32 : 0);
    return {
      blockBitmap: u32(D_BLOCK_BITMAP_LO, D_BLOCK_BITMAP_HI),
      inodeBitmap: u32(D_INODE_BITMAP_LO, D_INODE_BITMAP_HI),
      inodeTable: u32(D_INODE_TABLE_LO, D_INODE_TABLE_HI),
      freeClusters: dv.getUint16(D_FREE_BLOCKS_LO, true) + (this.wide ? dv.getUint16(D_FREE_BLOCKS_HI, true) * 65536 : 0),
      flags: dv.getUint16(D_FLAGS, true),
      bitmapCsum: dv.getUint16(D_BLOCK_BITMAP_CSUM_LO, true) + (g.descSize >= D_BLOCK_BITMAP_CSUM_HI + 2 ? dv.getUint16(D_BLOCK_BITMAP_CSUM_HI, true) * 65536 : 0),
      bitmapCsum32: g.descSize >= D_BLOCK_BITMAP_CSUM_HI + 2,
    };
  }

  private async load(index: number): Promise<void> {
    const g = this.g;
    const total = Math.ceil(g.groups / g.descPerBlock);
    const maxBlocks = Math.max(1, Math.floor((1 << 20) / g.blockSize));
    const first = descriptorBlock(g, index);
    let n = 1;
    while (index + n < total && n < maxBlocks && descriptorBlock(g, index + n) === first + n) n++;
    this.chunk = await this.vol.read(first * g.blockSize, n * g.blockSize, 'the group descriptor table');
    this.chunkFirst = index;
    this.chunkBlocks = n;
  }

  /** Descriptor checksum (group_descr.rst bg_checksum): crc32c & 0xFFFF with metadata_csum, crc16 with gdt_csum. */
  private verify(group: number, d: Uint8Array): void {
    const g = this.g;
    const stored = d[D_CHECKSUM] | (d[D_CHECKSUM + 1] << 8);
    const le = new Uint8Array(4);
    new DataView(le.buffer).setUint32(0, group, true);
    let sum: number;
    if (g.roCompat & RO_METADATA_CSUM) {
      let c = extCrc32c(g.csumSeed, le);
      c = extCrc32c(c, d.subarray(0, D_CHECKSUM));
      c = extCrc32c(c, new Uint8Array(2));
      if (g.descSize > D_CHECKSUM + 2) c = extCrc32c(c, d.subarray(D_CHECKSUM + 2));
      sum = c & 0xffff;
    } else if (g.roCompat & RO_GDT_CSUM) {
      let c = crc16(0xffff, g.uuid);
      c = crc16(c, le);
      c = crc16(c, d.subarray(0, D_CHECKSUM));
      if (g.descSize > D_CHECKSUM + 2) c = crc16(c, d.subarray(D_CHECKSUM + 2));
      sum = c;
    } else {
      return;
    }
    if (sum !== stored) fail(`group descriptor ${group} checksum does not match`);
  }
}

/**
 * Report the free blocks of the ext2/3/4 file system in `vol` to `out` (disk
 * byte ranges, ascending). Returns a one-line description for the notes.
 * Throws BlockError for a file system that is not clean, damaged, or uses a
 * feature that could hide used blocks from the bitmaps.
 */
export async function extFreeSpace(vol: Volume, out: FreeRanges): Promise<string> {
  const g = geometry(await vol.read(1024, 1024, 'the ext superblock'), vol.length);
  const hasCsum = (g.roCompat & (RO_METADATA_CSUM | RO_GDT_CSUM)) !== 0;
  const flex = (g.incompat & INCOMPAT_FLEX_BG) !== 0;
  const descs = new Descriptors(vol, g);

  // Pass 1: where every group's bitmaps and inode table lie (with flex_bg they
  // may sit in another group, even one marked BLOCK_UNINIT). Contiguous
  // neighbours merge, so this is a few ranges per flex group.
  const pairs: number[] = [];
  const pushMeta = (s: number, e: number) => {
    const n = pairs.length;
    if (n > 0 && pairs[n - 1] === s) pairs[n - 1] = e;
    else pairs.push(s, e);
  };
  for (let group = 0; group < g.groups; group++) {
    const d = await descs.get(group);
    const lo = flex ? g.firstDataBlock : groupFirstBlock(g, group);
    const hi = flex ? g.blocksCount : Math.min(g.blocksCount, groupFirstBlock(g, group) + g.blocksPerGroup);
    const where = flex ? 'the file system' : 'its group';
    if (d.blockBitmap < lo || d.blockBitmap >= hi) fail(`group ${group}'s block bitmap (block ${d.blockBitmap}) lies outside ${where}`);
    if (d.inodeBitmap < lo || d.inodeBitmap >= hi) fail(`group ${group}'s inode bitmap (block ${d.inodeBitmap}) lies outside ${where}`);
    if (d.inodeTable < lo || d.inodeTable + g.inodeTableBlocks > hi) fail(`group ${group}'s inode table (block ${d.inodeTable}) lies outside ${where}`);
    pushMeta(d.blockBitmap, d.blockBitmap + 1);
    pushMeta(d.inodeBitmap, d.inodeBitmap + 1);
    pushMeta(d.inodeTable, d.inodeTable + g.inodeTableBlocks);
  }
  const meta = mergeSorted(pairs);
  pairs.length = 0;

  // Pass 2: group by group, the clear bits of the block bitmap (or, for a
  // BLOCK_UNINIT group, the whole group: the kernel builds such a bitmap from
  // the group's metadata alone, ext4_init_block_bitmap), minus the metadata.
  let mi = 0;
  /**
   * Report blocks [s, e) free, minus the metadata ranges. `strict` (the range
   * came from an initialised bitmap): metadata inside it means the bitmap is
   * damaged, since a clean file system marks all of it in use.
   */
  const emitFree = (s: number, e: number, strict: boolean) => {
    while (mi < meta.length && meta[mi + 1] <= s) mi += 2;
    let k = mi;
    let cur = s;
    while (cur < e && k < meta.length && meta[k] < e) {
      if (strict) fail(`a block bitmap marks metadata block ${Math.max(s, meta[k])} free`);
      if (meta[k] > cur) out.add(vol.start + cur * g.blockSize, (meta[k] - cur) * g.blockSize);
      cur = Math.max(cur, meta[k + 1]);
      k += 2;
    }
    if (cur < e) out.add(vol.start + cur * g.blockSize, (e - cur) * g.blockSize);
  };

  const BATCH = Math.max(1, Math.min(256, Math.floor((1 << 20) / g.blockSize)));
  let uninit = 0;
  for (let base = 0; base < g.groups; base += BATCH) {
    const end = Math.min(g.groups, base + BATCH);
    const ds: Descriptor[] = [];
    for (let group = base; group < end; group++) ds.push(await descs.get(group));
    // Read runs of consecutive bitmap blocks at once (flex_bg packs them).
    const bitmaps: (Uint8Array | undefined)[] = new Array(end - base);
    for (let i = 0; i < ds.length; ) {
      const isUninit = (j: number) => hasCsum && (ds[j].flags & BG_BLOCK_UNINIT) !== 0;
      if (isUninit(i)) {
        i++;
        continue;
      }
      let n = 1;
      while (i + n < ds.length && !isUninit(i + n) && ds[i + n].blockBitmap === ds[i].blockBitmap + n) n++;
      const buf = await vol.read(ds[i].blockBitmap * g.blockSize, n * g.blockSize, `block bitmap of group ${base + i}`);
      for (let k = 0; k < n; k++) bitmaps[i + k] = buf.subarray(k * g.blockSize, (k + 1) * g.blockSize);
      i += n;
    }
    for (let i = 0; i < ds.length; i++) {
      const group = base + i;
      const first = groupFirstBlock(g, group);
      const last = Math.min(first + g.blocksPerGroup, g.blocksCount);
      const clusters = Math.ceil((last - first) / g.clusterRatio);
      const skip = first + baseMetaBlocks(g, group);
      const bits = bitmaps[i];
      if (!bits) {
        uninit++;
        emitFree(Math.min(skip, last), last, false);
        continue;
      }
      if (g.roCompat & RO_METADATA_CSUM) {
        let c = extCrc32c(g.csumSeed, bits.subarray(0, g.clustersPerGroup / 8));
        if (!ds[i].bitmapCsum32) c &= 0xffff;
        if (c !== ds[i].bitmapCsum) fail(`block bitmap of group ${group} fails its checksum`);
      }
      let free = 0;
      forEachRun('lsb-first', bits, 0, clusters, (s, e, set) => {
        if (set) return;
        free += e - s;
        const bs = first + s * g.clusterRatio;
        const be = Math.min(first + e * g.clusterRatio, last);
        if (bs < skip) fail(`block bitmap of group ${group} marks metadata block ${bs} free`);
        if (bs < be) emitFree(bs, be, true);
      });
      // The descriptor keeps its own count of free clusters: a bitmap that
      // disagrees is damaged, or is not the bitmap at all.
      if (free !== ds[i].freeClusters) fail(`block bitmap of group ${group} counts ${free} free clusters, its descriptor ${ds[i].freeClusters}`);
    }
  }
  // Named as mkfs would: ext4 features beyond filetype make it ext4, a journal alone ext3.
  const ext4 = (g.incompat & ~0x0002) !== 0;
  const journal = (g.compat & COMPAT_HAS_JOURNAL) !== 0;
  const kind = ext4 ? (journal ? 'ext4' : 'ext4 (no journal)') : journal ? 'ext3' : 'ext2';
  return `${kind}, ${g.blocksCount} blocks of ${g.blockSize} bytes${g.clusterRatio > 1 ? ` in clusters of ${g.clusterRatio}` : ''}, ${g.groups} groups${uninit ? ` (${uninit} never initialised)` : ''}`;
}
