import { BlockError } from '../core/errors.js';

/**
 * A byte store: the file under one image layer. Positional I/O only; the
 * format decides what the bytes mean. `flush()` means durable (fdatasync).
 */
export interface Store {
  /** The path this store was opened from (for messages and for resolving relative names). */
  readonly path: string;
  readonly readOnly: boolean;
  /**
   * Optional: reads of at least this many bytes cost least (a remote store
   * fetches them straight into the caller's buffer, io/ranged-store.ts); a
   * copy reads its pieces this big.
   */
  readonly readSize?: number;
  /** Current length in bytes. */
  size(): Promise<number>;
  /** Read up to into.length bytes at offset; returns the count read (short only at end of file). */
  read(offset: number, into: Uint8Array): Promise<number>;
  write(offset: number, data: Uint8Array): Promise<void>;
  /**
   * Optional: write `parts` back to back from `offset` as one request (a
   * vectored write). Like separate writes, the parts may land in any order
   * or not at all if the host crashes. Use writeParts(), which falls back to
   * one write per part.
   */
  writev?(offset: number, parts: readonly Uint8Array[]): Promise<void>;
  truncate(size: number): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
  close(): Promise<void>;
  /**
   * Where the host file has data and holes in [offset, offset+length), when the
   * host can tell (Linux SEEK_DATA/SEEK_HOLE); undefined when it cannot.
   */
  allocation?(offset: number, length: number): Promise<HostRange[] | undefined>;
  /**
   * Optional: the descriptor of the local file under this store, for vdisk's
   * native file-to-file copy (io/native.ts). Only a store that is exactly a
   * local file's bytes has it; valid until close().
   */
  nativeFd?(): number;
  /**
   * Optional: give the host file's space in [offset, offset+length) back to
   * its file system, the range then reading as zeros and the file keeping
   * its length (Linux fallocate PUNCH_HOLE | KEEP_SIZE). Only a store that
   * can has it; a file system that cannot fails with `unsupported`.
   * add-cow compaction punches its image file (ops/compact-holes.ts).
   */
  punchHole?(offset: number, length: number): Promise<void>;
}

/** A store with a local file under it: the capability the native copier needs (io/native.ts). */
export type NativeStore = Store & { nativeFd(): number };

/** The store as a NativeStore, when it has a local file under it. */
export function nativeStore(store: Store | undefined): NativeStore | undefined {
  return store?.nativeFd ? (store as NativeStore) : undefined;
}

export interface HostRange {
  offset: number;
  length: number;
  data: boolean;
}

export interface OpenStoreOptions {
  readOnly?: boolean;
  /** Create the file (failing if it exists unless `truncate`). */
  create?: boolean;
  truncate?: boolean;
  /**
   * Make flush() a no-op (qemu-img's cache=unsafe): for writing a fresh copy
   * whose every byte can be rewritten from its source, where syncs buy nothing.
   */
  noSync?: boolean;
  /**
   * Read-only opens only: share the image with writers and refuse nothing to
   * them (qemu-img's -U/--force-share). Reading an image something else is
   * writing may see it half-changed: the user's risk.
   */
  forceShare?: boolean;
}

/** How a format (or the chain) opens another file: a file path, or anything a test substitutes. */
export type StoreOpener = (path: string, options: OpenStoreOptions) => Promise<Store>;

/** Read exactly into.length bytes or fail with `corrupt` (a structure runs past the end of the file). */
export async function readExact(store: Store, offset: number, into: Uint8Array, what = 'data'): Promise<Uint8Array> {
  const n = await store.read(offset, into);
  if (n !== into.length) {
    throw new BlockError('corrupt', `${what} is truncated: wanted ${into.length} bytes at offset ${offset}, file ends after ${n}`, {
      path: store.path,
      offset,
      operation: 'read',
    });
  }
  return into;
}

/** Read into `into`, zero-filling whatever lies past the end of the file. */
export async function readOrZero(store: Store, offset: number, into: Uint8Array): Promise<void> {
  const n = await store.read(offset, into);
  if (n < into.length) into.fill(0, n);
}

/**
 * Write `parts` back to back from `offset`: one vectored write where the
 * store has it (a format joins structures that lie next to each other in
 * the file — a VHD block's bitmap, data and the footer after it — and pays
 * one request instead of three), else one write per part, in order.
 */
export async function writeParts(store: Store, offset: number, parts: readonly Uint8Array[]): Promise<void> {
  if (store.writev) return store.writev(offset, parts);
  for (const p of parts) {
    await store.write(offset, p);
    offset += p.length;
  }
}
