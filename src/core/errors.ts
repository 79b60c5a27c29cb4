import { escapeControl } from './escape.js';

/**
 * The one error class of vdisk. Every failure that a user or a caller can act
 * on is a BlockError with a stable `kind`; the CLI prints it as one line and
 * the NBD server maps the kind to an errno through one table (nbd/errno.ts).
 */
export type BlockErrorKind =
  | 'io' // the host refused a read/write/flush
  | 'corrupt' // on-disk structure is damaged or inconsistent
  | 'checksum' // a checksum did not match (a kind of corruption users may override)
  | 'unsupported' // valid but not handled (feature, version, operation)
  | 'not-found' // a file (image, parent, image file) does not exist
  | 'out-of-range' // offset/length beyond the disk or a format limit
  | 'invalid-argument' // the caller asked for something malformed
  | 'read-only' // write to an image opened read-only
  | 'busy' // file locked or in use
  | 'loop' // a backing chain refers to itself
  | 'too-deep' // a backing chain exceeds the depth limit
  | 'mismatch'; // parent identity or size does not match what the child records

export interface ErrorContext {
  path?: string;
  offset?: number;
  length?: number;
  operation?: string;
  /** Extra facts, e.g. the list of paths tried for a missing parent. */
  [key: string]: unknown;
}

export class BlockError extends Error {
  override readonly name = 'BlockError';
  readonly kind: BlockErrorKind;
  readonly context: ErrorContext;

  constructor(kind: BlockErrorKind, message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    // Messages quote names recorded in images: escaped, so that an image's author cannot forge lines or drive a terminal (core/escape.ts). The context keeps them as they are.
    super(escapeControl(message), options?.cause === undefined ? undefined : { cause: options.cause });
    this.kind = kind;
    this.context = context;
  }

  /** Same error with more context (context already set wins: the innermost knows best). */
  withContext(extra: ErrorContext): BlockError {
    const e = new BlockError(this.kind, this.message, { ...extra, ...this.context }, { cause: this.cause });
    e.stack = this.stack;
    return e;
  }

  /** One line for humans: `<message> (<path>)`. */
  oneLine(): string {
    return this.context.path ? `${this.message} (${escapeControl(this.context.path)})` : this.message;
  }
}

export function isBlockError(e: unknown, kind?: BlockErrorKind): e is BlockError {
  return e instanceof BlockError && (kind === undefined || e.kind === kind);
}

/** Turn a Node system error into a BlockError of the right kind. */
export function fromSystemError(e: unknown, context: ErrorContext): BlockError {
  if (e instanceof BlockError) return e.withContext(context);
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const op = context.operation ?? 'access';
  switch (code) {
    case 'ENOENT':
      return new BlockError('not-found', 'no such file', context, { cause: e });
    case 'EISDIR':
      return new BlockError('invalid-argument', 'is a directory, not an image file', context, { cause: e });
    case 'EACCES':
    case 'EPERM':
      return new BlockError('io', `permission denied (${op})`, context, { cause: e });
    case 'EROFS':
      return new BlockError('read-only', 'read-only file system', context, { cause: e });
    case 'EAGAIN':
    case 'EBUSY':
      return new BlockError('busy', 'file is busy', context, { cause: e });
    case 'ENOSPC':
      return new BlockError('io', 'no space left on device', context, { cause: e });
    default:
      return new BlockError('io', `${op} failed: ${(e as Error)?.message ?? String(e)}`, context, { cause: e });
  }
}
