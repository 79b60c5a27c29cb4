/**
 * vdisk library entry point: open image chains, read and write them, and run
 * the whole-image operations the CLI offers.
 */
export { BlockError, isBlockError, type BlockErrorKind, type ErrorContext } from './core/errors.js';
export type { Extent, ExtentKind } from './core/extent.js';
export { parseSize, formatSize } from './core/size.js';
export type { Store, StoreOpener, OpenStoreOptions } from './io/store.js';
export { FileStore, openFileStore } from './io/file-store.js';
export { fileHost, type FileHost } from './io/staging.js';
export { MemoryStore, MemoryFs } from './io/memory-store.js';
export type {
  Image,
  Readable,
  Writable,
  Trimmable,
  Resizable,
  ResizeOptions,
  Checkable,
  Rebaseable,
  IdentityResettable,
  IdentityChange,
  Compactable,
  WritePlacement,
  Format,
  BackingRef,
  FormatInfo,
  CheckResult,
  CheckProblem,
} from './formats/types.js';
export { FORMATS, findFormat, probeFormat } from './formats/registry.js';
export { Chain, type ChainExtent } from './chain/chain.js';
export { openChain, openLayer, type ChainOpenOptions, type LayerOpenOptions, DEFAULT_DEPTH_LIMIT } from './chain/open.js';
export { createImage, parseOptions, type CreateRequest, type CreateResult } from './ops/create.js';
export { imageInfo, type ImageInfo } from './ops/info.js';
export { convert, type ConvertRequest, type ConvertResult } from './ops/convert.js';
export { compareImages, compareChains, type CompareResult } from './ops/compare.js';
export { mapChain, type MapEntry } from './ops/map.js';
export { runIoCommand } from './ops/io.js';
export { startNbdServer, DEFAULT_NBD_PORT, type NbdServer, type NbdServerOptions, type NbdServerStats } from './nbd/index.js';
export { checkImage, checkExitCode, type CheckRequest, type CheckReport } from './ops/check.js';
export { commitImage, type CommitRequest, type CommitResult } from './ops/commit.js';
export { compactImage, type CompactRequest, type CompactResult, type CompactMode } from './ops/compact.js';
export { rebaseImage, type RebaseRequest, type RebaseResult } from './ops/rebase.js';
export { resizeImage, type ResizeRequest, type ResizeResult } from './ops/resize.js';
export { amendImage, AMEND_OPTIONS, type AmendRequest, type AmendResult } from './ops/amend.js';
export { resizeChain, type ChainResizeRequest, type ChainResizeResult, type ChainResizeLayer } from './ops/resize-chain.js';
export { measureImage, type MeasureRequest, type MeasureResult } from './ops/measure.js';
export { findFreeSpace as findGuestFreeSpace, type GuestFreeSpace, type DiskReader } from './guestfs/index.js';
// Sequential writers and pipes (issue 18): an image as one ordered byte stream of known length, and stdin as a source.
export { planSequentialConvert, convertToSink, type SequentialConvertRequest, type SequentialPlan } from './ops/sequential.js';
export type { ByteSink } from './io/sink.js';
export { stdoutSink, streamSink } from './io/stdio.js';
export { fileSink } from './io/file-sink.js';
export { stdinSource, type StdinSource } from './ops/stdin.js';
// Hosts (docs/hosts.md): where images live — local files, S3 (s3://), HTTP(S).
export type { Host, HostPaths, HostStat, SinkOptions } from './io/host.js';
export { hostFor, openLocation } from './io/hosts.js';
export { setRemoteOptions, type RemoteOptions } from './io/remote-options.js';
export { openS3Sink } from './io/s3-sink.js';
