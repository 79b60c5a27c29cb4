import { baseName } from '../io/hosts.js';
import type { Chain } from '../chain/chain.js';
import { BlockError } from '../core/errors.js';
import {
  DEFAULT_MAX_BLOCK,
  FLAG_CAN_MULTI_CONN,
  FLAG_HAS_FLAGS,
  FLAG_READ_ONLY,
  FLAG_SEND_DF,
  FLAG_SEND_FAST_ZERO,
  FLAG_SEND_FLUSH,
  FLAG_SEND_FUA,
  FLAG_SEND_TRIM,
  FLAG_SEND_WRITE_ZEROES,
} from './protocol.js';

/** What one export offers, decided once when the server starts. */
export interface NbdExport {
  readonly name: string;
  readonly description: string;
  readonly chain: Chain;
  readonly size: number;
  readonly readOnly: boolean;
  /** All connections share this one Chain (its write range lock and flush), so multi-conn is safe. */
  readonly multiConn: boolean;
  /** The top layer can discard (it has Image.trim). */
  readonly canTrim: boolean;
  /** The top layer records zeros without writing them: NBD_CMD_FLAG_FAST_ZERO can be honoured. */
  readonly canFastZero: boolean;
  readonly minBlock: number;
  readonly preferredBlock: number;
  readonly maxBlock: number;
}

export interface ExportOptions {
  name?: string;
  description?: string;
  readOnly?: boolean;
  multiConn?: boolean;
  /** Largest READ/WRITE length (default 32 MiB). */
  maxBlock?: number;
}

export function makeExport(chain: Chain, options: ExportOptions = {}): NbdExport {
  const name = options.name ?? '';
  if (Buffer.byteLength(name, 'utf8') > 4096 || name.includes('\0')) {
    throw new BlockError('invalid-argument', 'export name must be at most 4096 bytes of UTF-8 without NUL');
  }
  const top = chain.top;
  const readOnly = Boolean(options.readOnly) || chain.readOnly || top.readOnly;
  const lss = chain.logicalSectorSize;
  // Block size constraints (proto.md "Block size constraints"): the minimum is
  // the sector, or 512 when the layer is byte-addressed but the disk is still a
  // whole number of sectors; a disk of odd length stays reachable with 1.
  const minBlock = lss >= 512 ? lss : chain.size % 512 === 0 ? 512 : 1;
  const preferredBlock = Math.max(minBlock, 4096);
  const maxBlock = Math.max(preferredBlock, options.maxBlock ?? DEFAULT_MAX_BLOCK);
  if (!Number.isInteger(maxBlock) || maxBlock > 0xffffffff) throw new BlockError('invalid-argument', `maximum block size ${maxBlock} is not a 32-bit size`);
  return {
    name,
    description: options.description ?? `vdisk ${top.format} image ${baseName(top.path)}${chain.layers.length > 1 ? ` (+${chain.layers.length - 1} backing)` : ''}`,
    chain,
    size: chain.size,
    readOnly,
    multiConn: Boolean(options.multiConn),
    canTrim: !readOnly && top.trim !== undefined,
    canFastZero: !readOnly && top.fastZero === true,
    minBlock,
    preferredBlock,
    maxBlock,
  };
}

/**
 * Transmission flags (proto.md "Transmission flags"), per image capability.
 * WRITE_ZEROES is offered whenever the export is writable — the chain can
 * always do it, at worst by writing zeros — while FAST_ZERO is offered only
 * when the format records zeros without writing them. DF needs structured
 * replies; reads are always sent as one chunk so DF is honoured for free.
 */
export function transmissionFlags(exp: NbdExport, structured: boolean): number {
  let f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH;
  if (exp.readOnly) f |= FLAG_READ_ONLY;
  else {
    f |= FLAG_SEND_FUA | FLAG_SEND_WRITE_ZEROES;
    if (exp.canTrim) f |= FLAG_SEND_TRIM;
    if (exp.canFastZero) f |= FLAG_SEND_FAST_ZERO;
  }
  if (structured) f |= FLAG_SEND_DF;
  if (exp.multiConn) f |= FLAG_CAN_MULTI_CONN;
  return f;
}
