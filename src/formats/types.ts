import type { Extent } from '../core/extent.js';
import type { HostRange, Store, StoreOpener } from '../io/store.js';

/**
 * The contracts every format implements. A format answers only for its own
 * layer; combining layers is chain/'s job (architecture: "Backing logic lives
 * once, in chain/").
 */

/** What a layer records about its backing file. */
export interface BackingRef {
  /** The name as recorded in the image, for `info` (e.g. the VHD parent unicode name). */
  recorded: string;
  /**
   * Names to try, in order (VHD: W2ru, W2ku, MacX, unicode name). Relative names
   * are resolved by chain/ against the child's folder; `\` separators are accepted.
   */
  candidates: string[];
  /** The parent's format when the child records or implies it; the parent is then opened with it, never probed. */
  format?: string;
  /** Identity the parent must have (VHD parent UUID; VHDX parent_linkage = parent DataWriteGuid). */
  expectedId?: string;
  /** The parent must have exactly the child's virtual size (VHD, VHDX differencing). */
  sameSize?: boolean;
}

export interface Capabilities {
  /** The format can be written at all (independent of a read-only open). */
  write: boolean;
  /** writeZeroes records zeros without writing zero data. */
  writeZeroes: boolean;
  /** trim can release space. */
  trim: boolean;
  resize: boolean;
  /** The backing reference can be rewritten (rebase -u). */
  setBacking: boolean;
  /** The format can have a backing file at all. */
  backing: boolean;
  /**
   * Every disk offset has a fixed place in the file (raw; add-cow's image
   * file): writes never allocate, so writes to disjoint ranges may run in
   * any order and at once. Absent or false: a copy writes in disk order, so
   * that allocating formats lay out the file like the disk.
   */
  fixedLayout?: boolean;
  /**
   * Writes to disjoint ranges may be in flight at once, and new blocks are
   * placed in the order write() is called (not the order writes finish): a
   * copy may issue its writes in disk order without waiting for each one
   * and still get a file laid out like the disk.
   */
  orderedAllocation?: boolean;
  /**
   * Disk offset N is byte N of the layer's hostStore, and a write is
   * nothing more than those bytes written there (raw, fixed VHD): a copy
   * may write the file directly (convert's native path). Not add-cow, whose
   * writes also set bitmap bits.
   */
  hostIdentity?: boolean;
}

export interface CheckProblem {
  severity: 'corruption' | 'leak' | 'warning' | 'info';
  message: string;
  offset?: number;
  repaired?: boolean;
}

export interface CheckResult {
  problems: CheckProblem[];
  /** Fields for `check --output=json` beyond the counts (e.g. allocated-clusters). */
  details?: Record<string, unknown>;
}

export interface FormatInfo {
  clusterSize?: number;
  dirty?: boolean;
  /** Format-specific facts for `info` (the "format-specific" data of qemu-img's JSON). */
  specific: Record<string, unknown>;
}

/** One layer of a disk. */
export interface Image {
  /** Registry name of the format ("vhd", "vhdx", "add-cow", "raw"). */
  readonly format: string;
  readonly path: string;
  /** Virtual size in bytes. */
  readonly size: number;
  /** Writes reaching the layer are multiples of this, at offsets that are too (chain/ guarantees it). */
  readonly logicalSectorSize: number;
  readonly backing: BackingRef | null;
  /** What a child records to identify this image as its parent (VHD UUID, VHDX DataWriteGuid). */
  readonly identity?: string;
  readonly readOnly: boolean;
  readonly capabilities: Capabilities;

  /** Extents covering exactly [offset, offset+length), merged, in order: this layer only. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /**
   * What blockStatus would answer, if the layer can tell from metadata it
   * already holds in memory; undefined when it would have to read (a sector
   * bitmap not cached). Optional: it spares the chain an await per layer per
   * request, which is most of the cost of a small read through a deep chain.
   */
  mapCached?(offset: number, length: number): Extent[] | undefined;
  /** Read this layer's bytes; any alignment. Ranges the layer does not hold read as zeros. */
  read(offset: number, into: Uint8Array): Promise<void>;
  /**
   * Read bytes that blockStatus/mapCached reported as `data`, by the extent's
   * hostOffset (plus how far into the extent `into` starts). Optional: it
   * lets the chain read a data extent without the layer mapping it again.
   */
  readHost?(hostOffset: number, into: Uint8Array): Promise<void>;
  /**
   * The store readHost reads, where reading it at a data extent's
   * hostOffset gives exactly the disk's bytes (zeros past its end, as
   * readHost). Lets a copy go from file to file without the layer (convert's
   * native path). Absent where that does not hold.
   */
  readonly hostStore?: Store;
  /**
   * Where the file behind data extents' hostOffsets has data and where holes
   * (SEEK_DATA/SEEK_HOLE), or undefined when the host cannot tell. A hole
   * reads as zeros, so a caller that wants zero ranges found without reading
   * them (convert) can refine a data extent with it. Absent for raw, whose
   * blockStatus asks the host already.
   */
  hostAllocation?(hostOffset: number, length: number): Promise<HostRange[] | undefined>;
  /** Write whole logical sectors. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Make whole logical sectors read as zero in this layer (never exposing the backing). */
  writeZeroes(offset: number, length: number, options?: { mayUnmap?: boolean }): Promise<void>;
  /** Discard whole logical sectors; contents afterwards are unspecified (may expose the backing). */
  trim?(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  info(): FormatInfo;
  check?(options: { repair?: 'leaks' | 'all' }): Promise<CheckResult>;
  resize?(newSize: number, options: { shrink?: boolean }): Promise<void>;
  /** Rewrite the backing reference only (no data copied): rebase -u. `parent` null removes the backing. */
  setBacking?(parent: BackingTarget | null): Promise<void>;
}

/** A parent as a child records it (create -b, rebase). */
export interface BackingTarget {
  /** The path as the user gave it (stored relative to the child when possible). */
  path: string;
  /** Absolute path. */
  absolutePath: string;
  format: string;
  size: number;
  identity?: string;
  /** The parent's top layer, opened (read-only). */
  image: Image;
  /** Parent file modification time (VHD records it). */
  mtime: Date;
}

export interface OpenOptions {
  /** Accept images whose checksums are wrong (say so in info). */
  ignoreChecksums?: boolean;
}

export interface OpenContext {
  store: Store;
  path: string;
  readOnly: boolean;
  /** Opens other files a format needs (add-cow image file), relative names already resolved by the caller. */
  openStore: StoreOpener;
  options: OpenOptions;
}

export interface CreateContext {
  path: string;
  size: number;
  /** `-o key=value` options, validated against createOptions by the registry. */
  options: Record<string, string>;
  backing?: BackingTarget;
  openStore: StoreOpener;
}

export interface CreateOption {
  name: string;
  type: 'size' | 'bool' | 'string' | 'enum';
  values?: string[];
  description: string;
}

export interface ProbeInput {
  /** First bytes of the file (up to 64 KiB). */
  head: Uint8Array;
  /** Last bytes of the file (up to 512). */
  tail: Uint8Array;
  size: number;
}

/** What `measure` knows about the disk to be converted (see Format.measure). */
export interface MeasureInput {
  /** Virtual size in bytes of the disk to create. */
  size: number;
  /**
   * Ranges of the disk that hold data (merged, in order) — what convert would
   * write. Empty for `measure --size N` (a new, empty disk).
   */
  allocated: readonly { offset: number; length: number }[];
  /** `-o key=value` creation options (already validated against createOptions). */
  options: Record<string, string>;
}

export interface MeasureResult {
  /** Bytes the image takes when it holds exactly `allocated` (what convert produces). */
  required: number;
  /** Bytes the image takes when every block of the disk is allocated. */
  fullyAllocated: number;
}

export interface Format {
  readonly name: string;
  readonly aliases: readonly string[];
  readonly description: string;
  /** Largest virtual size the format can hold. */
  readonly maxSize: number;
  /** 0 (not this format) .. 100 (certain). Raw answers 1. */
  probe(input: ProbeInput): number;
  open(ctx: OpenContext): Promise<Image>;
  /** Create the file at ctx.path (it must not exist unless the format says otherwise). Absent: cannot create. */
  create?(ctx: CreateContext): Promise<void>;
  readonly createOptions: readonly CreateOption[];
  /**
   * File size an image of this format would have (qemu-img measure). Optional:
   * layout knowledge belongs to the format; absent means "cannot measure".
   */
  measure?(input: MeasureInput): MeasureResult;
}
