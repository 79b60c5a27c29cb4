import { BlockError, type ErrorContext } from './errors.js';

/**
 * The one request check of vdisk, modelled on QEMU's `bdrv_check_request`
 * (block/io.c), which the block layer runs once for every request instead of
 * each driver writing its own: the range lies inside the disk, a write goes
 * to an image opened for writing, and a layer's write covers whole logical
 * sectors. The chain runs it for the disk (any alignment: it completes
 * partial sectors), each layer for itself (layers are also written directly:
 * commit writes its base, tests write a layer alone), so the messages and
 * error kinds are the same whoever refuses.
 *
 * Nothing is allocated unless the check fails: it runs on every read.
 */

/** What a request is checked against: an image (or the top layer of a chain). */
export interface RequestTarget {
  readonly path: string;
  /** Virtual size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
}

/**
 * Throw unless [offset, offset+length) lies inside `target`'s disk and, when
 * `writeAlign` is given (a write, zero write or discard), the target is open
 * for writing and (writeAlign > 1) the range covers whole units of it.
 * Checked in that order: read-only, range, alignment.
 */
export function checkRequest(target: RequestTarget, operation: string, offset: number, length: number, writeAlign = 0): void {
  if (writeAlign !== 0 && target.readOnly) throw readOnlyError({ path: target.path, operation });
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > target.size) {
    throw new BlockError('out-of-range', `${operation} of ${length} bytes at ${offset} is outside the disk (${target.size} bytes)`, {
      path: target.path,
      offset,
      length,
      operation,
    });
  }
  if (writeAlign > 1 && (offset % writeAlign !== 0 || length % writeAlign !== 0)) {
    throw new BlockError('invalid-argument', `${operation} must cover whole ${writeAlign}-byte sectors (${length} bytes at ${offset})`, {
      path: target.path,
      offset,
      length,
      operation,
    });
  }
}

/** The error for a change to something opened read-only (an image, a chain, a store). */
export function readOnlyError(context: ErrorContext): BlockError {
  return new BlockError('read-only', 'image is open read-only', context);
}
