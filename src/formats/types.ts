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
  /**
   * A second identity the parent may have instead (VHDX parent_linkage2,
   * 2.6.2.6.3): while commit writes into the parent, the child names the
   * parent's next DataWriteGuid as expectedId and its current one here
   * (ops/commit.ts).
   */
  alternateId?: string;
  /** The parent must have exactly the child's virtual size (VHD, VHDX differencing). */
  sameSize?: boolean;
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

/*
 * One layer of a disk is an Image: small contracts composed, after
 * cloud-hypervisor's block/src/disk_file.rs traits. Every layer is Readable
 * and Writable; Trimmable, Resizable, Checkable and Rebaseable are optional,
 * and an optional method present *is* the capability — there is no flag
 * beside it that could disagree, so `image.trim !== undefined` is the only
 * test. A layer whose capability depends on what open found (VHD: only
 * differencing disks discard and change their backing) leaves the method
 * undefined where it does not hold.
 */

/** Reading one layer, and what every layer is. */
export interface Readable {
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
  /**
   * The identity this image will have once written, where a write changes it
   * (VHDX: the DataWriteGuid it will take at its first guest-visible write
   * since it was opened; the same value until then, and `identity` after).
   * Lets commit tell a child the parent's next identity before it writes.
   */
  nextIdentity?(): string;
  /**
   * Writes, zero writes, discards and maintenance are refused (opened
   * read-only). The one signal that a layer cannot be written: a format that
   * could not write at all would open read-only.
   */
  readonly readOnly: boolean;

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
  /** Make every write durable (nothing to do when opened read-only). */
  flush(): Promise<void>;
  close(): Promise<void>;
  info(): FormatInfo;
}

/** Writing one layer (refused with a `read-only` BlockError when readOnly). */
export interface Writable {
  /** Write whole logical sectors. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Make whole logical sectors read as zero in this layer (never exposing the backing). */
  writeZeroes(offset: number, length: number, options?: { mayUnmap?: boolean }): Promise<void>;
  /**
   * writeZeroes records zeros in the layer's metadata instead of writing
   * zero bytes, at least for whole blocks (VHD dynamic: unallocated blocks
   * stay so; VHDX: ZERO blocks), so the NBD server may offer FAST_ZERO.
   * Not a method beside writeZeroes but a fact about it: every layer can
   * write zeros, only some cheaply. Absent or false: zeros are written.
   */
  readonly fastZero?: boolean;
  /**
   * Where writes land in the layer's files, for whole-disk copies
   * (ops/convert.ts decides what a copy does with it; see WritePlacement).
   * Absent: writes allocate, in no promised order.
   */
  readonly placement?: WritePlacement;
  /**
   * New data written by a copier that writes the layer's file itself
   * (convert's and commit's native path, native/copy.c copyToBlocks): the
   * layer takes its lock, tells `fill` where blocks go (BlockFill), and
   * `fill` writes the data — in place for blocks that have a place, into
   * consecutive slots for the others — and returns the blocks it gave
   * slots 0, 1, ... in that order. The layer then records them in its
   * metadata in its crash-safe order (VHD: footer now; bitmaps, then BAT at
   * the next flush; VHDX: all the batch's BAT entries in as few log
   * transactions as the log holds). When `fill` fails, nothing is recorded
   * and the file is cut back to where it was. Absent where blocks cannot be
   * placed this way (differencing disks: partly present blocks need
   * bitmaps; fixed disks and raw are 'identity').
   */
  readonly fillBlocks?: (fill: (where: BlockFill) => Promise<number[]>) => Promise<void>;
}

/** Where a copier writing new data into a layer's file puts it (Writable.fillBlocks). */
export interface BlockFill {
  /** The layer's file. */
  store: Store;
  /** Every range the copier writes lies inside one block of this size (aligned to it on the disk). */
  blockSize: number;
  /** File offset of slot k's data: base + k * stride. */
  base: number;
  stride: number;
  /** File offset of a block's data where it has a place already (written in place); undefined where it takes a slot. */
  placeOf(block: number): number | undefined;
}

/**
 * Where a layer puts what is written (a fact of the format, which only it
 * knows; what a copy does with it is convert's policy, in ops/convert.ts):
 *
 *   'identity'    disk offset N is byte N of hostStore, and a write is
 *                 nothing more than those bytes written there (raw, fixed
 *                 VHD): a copy may write the file directly. Implies 'fixed'.
 *   'fixed'       every disk offset has a fixed place in the layer's files;
 *                 writes never allocate, so writes to disjoint ranges may run
 *                 in any order and at once (add-cow, whose writes also set
 *                 bitmap bits).
 *   'call-order'  writes allocate new blocks in the order write() is called,
 *                 not the order writes finish, and writes to disjoint ranges
 *                 may be in flight at once (VHD dynamic and differencing).
 *
 * A layer without a placement (VHDX) allocates as writes complete: a copy
 * that wants the file laid out like the disk gives it one piece at a time.
 */
export type WritePlacement = 'identity' | 'fixed' | 'call-order';

/** Discards. */
export interface Trimmable {
  /** Discard whole logical sectors; contents afterwards are unspecified (may expose the backing). */
  trim(offset: number, length: number): Promise<void>;
}

export interface ResizeOptions {
  /** Allow the disk to get smaller (data past the new end is lost). */
  shrink?: boolean;
  /**
   * The layer's parent as it now is, for a differencing layer that follows
   * its parent (`resize --chain`): a VHD child takes only its parent's size
   * and records the parent's modification time (its Parent Time Stamp).
   */
  parent?: { size: number; mtime: Date };
}

/**
 * Gives file space back (vdisk compact, ops/compact.ts): the layer says
 * which of its blocks hold file space, ops decides which to release (zero
 * data, data the guest's file system does not use), and the layer releases
 * them and shrinks its file in place. Present on layers that allocate
 * blocks (dynamic and differencing VHD and VHDX); a fixed layer has none.
 */
export interface Compactable {
  compactBlocks(): Promise<CompactBlocks>;
  /**
   * Release `release` (block indexes from compactBlocks), move blocks from
   * the end of the file into the holes, cut the file. With `dryRun`,
   * nothing is written: the result says what would happen. Never changes
   * what the disk reads where a released block's content was kept
   * elsewhere (a parent's identical bytes, zeros) — the caller's decision.
   */
  compact(release: readonly number[], options: CompactOptions): Promise<CompactOutcome>;
}

export interface CompactOptions {
  dryRun: boolean;
  onProgress?: (done: number, total: number) => void;
  /**
   * Differencing layers: disk byte ranges (whole logical sectors, each
   * inside one block that stays) whose sector bits are cleared, so they read
   * from the parent again — the caller's decision that the parent reads
   * there what the layer holds (zeros). Cleared before any block moves.
   */
  clear?: readonly { offset: number; length: number }[];
}

export interface CompactBlocks {
  /** Bytes of the disk each block covers. */
  blockSize: number;
  /** Blocks holding file space, in disk order; `trimmed`: the layer's metadata says it holds nothing (VHD: no bitmap bit set). */
  blocks: { index: number; trimmed: boolean }[];
}

export interface CompactOutcome {
  /** File size before and after (after: what it would be, for a dry run). */
  bytesBefore: number;
  bytesAfter: number;
  /** Blocks moved towards the start of the file. */
  moved: number;
  /** Bytes of `clear` whose sector bits were (or, in a dry run, would be) cleared. */
  cleared: number;
}

/**
 * Gives file space back by punching holes (vdisk compact on add-cow,
 * ops/compact-holes.ts): for a layer whose data file is the disk's raw twin
 * (add-cow's image file: disk byte n is file byte n, `hostOffset` = disk
 * offset), its metadata left as it is. A punched range reads as zeros.
 */
export interface HolePunchable {
  /** Why holes cannot be punched here (a store without the capability, no native addon), or undefined when they can. */
  punchRefusal(): string | undefined;
  /** Bytes the data file occupies on its host (its data ranges, SEEK_DATA/SEEK_HOLE), or undefined when the host cannot tell. */
  hostAllocated(): Promise<number | undefined>;
  /**
   * Punch `ranges` (host offsets, sorted, disjoint) in the data file; durable
   * at the next flush. The caller has decided each range already reads as
   * zeros, is never read, or lies in a file system's free space.
   */
  punchHoles(ranges: readonly { offset: number; length: number }[]): Promise<void>;
}

/** Changes its virtual size. */
export interface Resizable {
  resize(newSize: number, options: ResizeOptions): Promise<void>;
}

/** Checks (and repairs) its own structures. */
export interface Checkable {
  check(options: { repair?: 'leaks' | 'all' }): Promise<CheckResult>;
}

/** Rewrites its backing reference. */
export interface Rebaseable {
  /** Rewrite the backing reference only (no data copied): rebase -u. `parent` null removes the backing. */
  setBacking(parent: BackingTarget | null): Promise<void>;
  /**
   * Why `setBacking(null)` cannot remove this image's backing, when it
   * cannot: known up front, so that rebase -b "" refuses before it copies
   * anything into the image.
   */
  readonly flattenRefusal?: string;
}

/** One identifier an identity reset changed (amend -o reset-identity=on). */
export interface IdentityChange {
  /** As info's format-specific data names it: "uuid" (VHD), "data-write-guid", "virtual-disk-id" (VHDX). */
  field: string;
  old: string;
  new: string;
}

/** Takes new identifiers, keeping its data (Hyper-V's Set-VHD -ResetDiskIdentifier). */
export interface IdentityResettable {
  /** Give the image new identifiers, crash-safe; what changed. A child that recorded the old one no longer matches. */
  resetIdentity(): Promise<IdentityChange[]>;
}

/** One layer of a disk: readable and writable, and whatever of the optional contracts its format (and what open found) allows. */
export interface Image extends Readable, Writable, Partial<Trimmable>, Partial<Resizable>, Partial<Checkable>, Partial<Rebaseable>, Partial<IdentityResettable>, Partial<Compactable>, Partial<HolePunchable> {}

/** A parent as a child records it (create -b, rebase). */
export interface BackingTarget {
  /** The path as the user gave it (stored relative to the child when possible). */
  path: string;
  /** Absolute path. */
  absolutePath: string;
  format: string;
  size: number;
  identity?: string;
  /** An identity the parent is about to take (commit, ahead of its writes): the child accepts either (VHDX parent_linkage2). */
  nextIdentity?: string;
  /** The parent's top layer, opened (read-only). */
  image: Image;
  /** Parent file modification time (VHD records it). */
  mtime: Date;
}

export interface OpenOptions {
  /** Accept images whose checksums are wrong (say so in info). */
  ignoreChecksums?: boolean;
  /**
   * Folders besides the recording image's own where names recorded in an
   * image (backing files, parent locators, add-cow's image file) may lead
   * (`--allow-path`, docs/security.md).
   */
  allowPaths?: readonly string[];
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
  /**
   * The name of the format whose probe claims `store`'s bytes ('raw' when
   * none does), asked of the registry by the caller (ops/create.ts). A format
   * that must recognise another file at create (add-cow refuses an existing
   * image file that is not raw) asks here: importing the registry, which
   * imports every format, would be a cycle.
   */
  probe(store: Store): Promise<string>;
}

export interface CreateOption {
  name: string;
  type: 'size' | 'bool' | 'string' | 'enum';
  values?: string[];
  description: string;
  /** What the image gets when the option is not given, as `-o help` shows it. */
  default?: string;
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
  /**
   * How an image of this format is laid out as one strictly sequential
   * byte stream (ops/sequential.ts drives it; formats/<fmt>/sequential.ts).
   * Absent: the format cannot be streamed.
   */
  sequential?(ctx: SequentialContext): Promise<SequentialLayout>;
}

/** What a format's sequential layout is planned from. */
export interface SequentialContext {
  /**
   * The target as the format's create made it, into a store that keeps only
   * what was written (headers, tables, footers; io/skeleton-store.ts): the
   * layout takes its metadata from here instead of computing it again.
   */
  skeleton: Store;
  /** Virtual size of the target. */
  size: number;
  /** The target is a child of a backing (`-B`): it holds only what differs. */
  differencing: boolean;
}

/** Which of the target's blocks hold data (decided before the first byte is written). */
export interface BlockMap {
  readonly blocks: number;
  readonly count: number;
  has(block: number): boolean;
  /** The first allocated block at or after `from`, or -1. */
  next(from: number): number;
}

/** What a layout writes through (ops/sequential.ts). */
export interface SequentialOutput {
  /** Metadata bytes, as they are. */
  bytes(data: Uint8Array): Promise<void>;
  /** `length` zero bytes (padding, an empty log). */
  zeros(length: number): Promise<void>;
  /** The disk's bytes [offset, offset+length): zeros past the disk's end. */
  disk(offset: number, length: number): Promise<void>;
  /**
   * The runs of [offset, offset+length) the new layer holds as its own,
   * relative to `offset`, in `sectorSize` units of bytes: all of what lies
   * inside the disk for a base image; what differs from the backing for a
   * child. Reads the data (a child's twice: once here, once by disk()).
   */
  present(offset: number, length: number): Promise<Array<[number, number]>>;
}

export interface SequentialLayout {
  /**
   * Block size by which the driver decides what to write: a block is
   * allocated when it holds a non-zero byte (base) or a byte that differs
   * from the backing (child). Undefined: every byte of the disk is written
   * (raw, fixed VHD) and no map is needed.
   */
  readonly blockSize?: number;
  /** Granule of present(): the sector a bitmap bit stands for. */
  readonly sectorSize: number;
  /** Exact bytes write() sends for `map`. */
  length(map: BlockMap | undefined): number;
  write(map: BlockMap | undefined, out: SequentialOutput): Promise<void>;
}
