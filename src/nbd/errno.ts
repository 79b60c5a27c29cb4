import { type BlockErrorKind, isBlockError } from '../core/errors.js';
import { NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_ENOTSUP, NBD_EOVERFLOW, NBD_EPERM } from './protocol.js';

/**
 * The one table from BlockError kinds to NBD error values (architecture:
 * "the NBD server maps kinds to NBD errno through one table"). Only the
 * values proto.md "Error values" lists may go on the wire; anything the
 * client can do nothing about is EIO.
 */
export const NBD_ERRNO: Readonly<Record<BlockErrorKind, number>> = {
  io: NBD_EIO,
  corrupt: NBD_EIO,
  checksum: NBD_EIO,
  unsupported: NBD_ENOTSUP,
  'not-found': NBD_EIO,
  // Requests are range-checked before they reach the chain; one that still
  // fails this way hit a format limit.
  'out-of-range': NBD_EINVAL,
  'invalid-argument': NBD_EINVAL,
  // proto.md: "SHOULD return EPERM if it receives a write or trim request on a read-only export".
  'read-only': NBD_EPERM,
  busy: NBD_EIO,
  loop: NBD_EIO,
  'too-deep': NBD_EIO,
  mismatch: NBD_EIO,
};

/** Host error codes that mean "no space" (proto.md: map EDQUOT and EFBIG to ENOSPC). */
const NO_SPACE_CODES = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

/** The NBD error value for whatever a command threw. */
export function nbdErrno(e: unknown): number {
  if (isBlockError(e)) {
    const code = (e.cause as NodeJS.ErrnoException | undefined)?.code;
    if (code && NO_SPACE_CODES.has(code)) return NBD_ENOSPC;
    return NBD_ERRNO[e.kind] ?? NBD_EIO;
  }
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code && NO_SPACE_CODES.has(code)) return NBD_ENOSPC;
  if (code === 'EOVERFLOW') return NBD_EOVERFLOW;
  return NBD_EIO;
}
