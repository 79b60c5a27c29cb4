import { defineStruct } from '../../codec/struct.js';
import { BlockError } from '../../core/errors.js';
import { isPowerOfTwo, u64ToNumber } from '../../core/u64.js';
import { MAX_BLOCK_SIZE, MAX_SIZE, MIN_BLOCK_SIZE } from './layout.js';

/**
 * The system metadata items (VHDX spec 2.6.2). Each is a small fixed struct
 * stored somewhere in the metadata region, located by the metadata table.
 */

/** 2.6.2.1 File Parameters: block size, and the LeaveBlocksAllocated / HasParent flags. */
export const FileParameters = defineStruct('VHDX file parameters', 'le', 8, [
  { name: 'blockSize', type: 'u32' },
  { name: 'flags', type: 'u32' },
]);
export const LEAVE_BLOCKS_ALLOCATED = 1;
export const HAS_PARENT = 2;

/** 2.6.2.2 Virtual Disk Size, in bytes. */
export const VirtualDiskSize = defineStruct('VHDX virtual disk size', 'le', 8, [{ name: 'size', type: 'u64' }]);
/** 2.6.2.3 Page 83 Data: the disk's SCSI identity (a GUID). */
export const Page83Data = defineStruct('VHDX page 83 data', 'le', 16, [{ name: 'id', type: 'bytes', size: 16 }]);
/** 2.6.2.4 / 2.6.2.5 sector sizes: 512 or 4096. */
export const SectorSize = defineStruct('VHDX sector size', 'le', 4, [{ name: 'size', type: 'u32' }]);

export interface DiskParameters {
  blockSize: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  page83: Uint8Array;
}

/** Validate what the items say together (2.6.2: ranges and their relations). */
export function validateParameters(p: DiskParameters, path?: string): void {
  const ctx = { path };
  if (!isPowerOfTwo(p.blockSize) || p.blockSize < MIN_BLOCK_SIZE || p.blockSize > MAX_BLOCK_SIZE) {
    throw new BlockError('corrupt', `block size ${p.blockSize} is not a power of two between 1 MiB and 256 MiB`, ctx);
  }
  for (const [what, v] of [['logical', p.logicalSectorSize], ['physical', p.physicalSectorSize]] as const) {
    if (v !== 512 && v !== 4096) throw new BlockError('corrupt', `${what} sector size ${v} is neither 512 nor 4096`, ctx);
  }
  if (p.virtualSize <= 0 || p.virtualSize % p.logicalSectorSize !== 0) {
    throw new BlockError('corrupt', `virtual size ${p.virtualSize} is not a positive multiple of the ${p.logicalSectorSize}-byte sector`, ctx);
  }
  if (p.virtualSize > MAX_SIZE) throw new BlockError('unsupported', `virtual size ${p.virtualSize} exceeds 64 TiB`, ctx);
}

export function decodeVirtualSize(raw: Uint8Array, path?: string): number {
  return u64ToNumber(VirtualDiskSize.decode(raw).size, 'virtual disk size', { path });
}
