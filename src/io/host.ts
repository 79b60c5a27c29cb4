import type { OpenStoreOptions, Store } from './store.js';
import type { ByteSink } from './sink.js';
import type { FileHost } from './staging.js';

/**
 * Where images live: the local file system, an S3 bucket, a web server (and
 * `-`, stdin/stdout). Everything outside io/ asks a Host — through the
 * table in io/hosts.ts, which picks one by the location's scheme — and
 * never node:fs or node:path, so the chain, the formats and the operations
 * work the same on every host (the model: Xen Orchestra's
 * @xen-orchestra/fs remote handlers, through which vhd-lib reads and
 * writes VHD chains without touching fs). A location is a string: a local
 * path, or a URL the host understands (`s3://bucket/key`, `https://…`).
 */
export interface Host {
  /** For messages: 'local file', 'S3', 'HTTP'. */
  readonly name: string;
  /** Open the location as a Store (options as for a local file; a host that cannot write refuses create and read-write). */
  open(location: string, options: OpenStoreOptions): Promise<Store>;
  /** Names and folders of locations on this host. */
  readonly paths: HostPaths;
  /**
   * The answer to "is this the same file?": a string equal for two
   * locations exactly when they name one file (a local file's real path,
   * links resolved; a URL's normal form). The location itself when the
   * host has no such file.
   */
  identity(location: string): Promise<string>;
  /** Size, modification time and bytes the host really holds for it; undefined when nothing is there. */
  stat(location: string): Promise<HostStat | undefined>;
  /**
   * Renames and removals, for staging new files under temporary names
   * (io/staging.ts); undefined on a host where new files cannot be made
   * that way (object stores write new objects through a ByteSink, io/sink.ts).
   */
  readonly files?: FileHost;
  /**
   * Whether `target` (a name recorded in the image at `recorder`, already
   * resolved) lies inside `recorder`'s folder or one of `allowed`
   * (docs/security.md). Returns where it really leads (links followed) and
   * whether that is inside; `real` is null when nothing is there.
   */
  contained(target: string, recorder: string, allowed: readonly string[]): Promise<{ inside: boolean; real: string | null }>;
  /**
   * A new file written as one ordered byte stream (io/sink.ts), for hosts
   * whose files cannot be written in place (object stores). Nothing shows
   * under `location` until finish(); an existing file there is refused
   * unless `overwrite`.
   */
  createSink?(location: string, options: SinkOptions): Promise<ByteSink>;
}

export interface SinkOptions {
  overwrite?: boolean;
  /** The length, when known before the first byte (sizes the upload's parts). */
  size?: number;
}

export interface HostStat {
  size: number;
  mtime?: Date;
  /** Bytes the host really stores (a sparse local file's blocks), when it can tell. */
  allocated?: number;
}

/** node:path's questions, asked of a host (URL hosts answer them for URLs). */
export interface HostPaths {
  /** Whether a name stands alone (a local absolute path, a full URL). */
  isAbsolute(name: string): boolean;
  /** A location in full (a local path made absolute from the working folder, a URL normalised). */
  absolute(location: string): string;
  /** The folder a location lies in. */
  dirname(location: string): string;
  /** The last part of a location (its file name). */
  basename(location: string): string;
  /** `name` taken from `folder` (a name that stands alone is returned as it is, normalised). */
  resolve(folder: string, name: string): string;
  /** The name of `target` seen from `folder` ('..' where needed), or undefined when no relative name leads there (another bucket or server). */
  relative(folder: string, target: string): string | undefined;
}
