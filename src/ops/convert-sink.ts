import { BlockError } from '../core/errors.js';
import type { ChainOpenOptions } from '../chain/open.js';
import type { Host } from '../io/host.js';
import type { ByteSink } from '../io/sink.js';
import type { StoreOpener } from '../io/store.js';
import { planSequentialConvert } from './sequential.js';

/** What of a ConvertRequest (ops/convert.ts) a convert to a sink reads. */
interface SinkConvertRequest {
  source: string;
  sourceOptions?: ChainOpenOptions;
  target: string;
  targetFormat: string;
  options?: Record<string, string>;
  backing?: { path: string; format?: string };
  existing?: boolean;
  overwrite?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  beforeCommit?: () => Promise<void>;
}

/**
 * convert to a host whose files cannot be written in place (S3): the
 * target goes out as one ordered byte stream through the host's ByteSink
 * (io/sink.ts), laid out by the sequential writers (ops/sequential.ts) —
 * raw, VHD (dynamic, fixed, differencing with -B) and VHDX. The plan's
 * exact length is known before the first byte, so the sink sizes its
 * upload's parts from it. A -B name is taken relative to the target, on
 * the target's host (a child in S3 names a parent in S3). On any failure
 * or abort the sink is aborted: nothing is left under the target's name
 * (for S3, no multipart upload either).
 */
export async function convertToSink(
  req: SinkConvertRequest,
  host: Host & Required<Pick<Host, 'createSink'>>,
  openStore: StoreOpener,
): Promise<{ size: number; written: number; targetSize?: number; note?: string; objectSize: number }> {
  if (req.existing) {
    throw new BlockError('unsupported', `-n writes into an existing target in place; ${host.name} objects (${req.target}) cannot be written in place, only replaced (--overwrite)`, {
      path: req.target,
    });
  }
  req.signal?.throwIfAborted();
  // Refused before the source is scanned (the sink checks again when it starts).
  if (!req.overwrite && (await host.stat(req.target)) !== undefined) {
    throw new BlockError('invalid-argument', 'file already exists', { path: req.target, operation: 'create' });
  }
  const plan = await planSequentialConvert({
    source: req.source,
    sourceOptions: req.sourceOptions,
    targetFormat: req.targetFormat,
    options: req.options,
    backing: req.backing,
    target: req.target,
    openStore,
  });
  try {
    req.signal?.throwIfAborted();
    const opened = await host.createSink(req.target, { overwrite: req.overwrite, size: plan.length });
    // A stdin source's end is checked (no trailing bytes, a VHD's footer where its length says) before the object is completed.
    const before = req.beforeCommit;
    const sink: ByteSink = before ? { location: opened.location, write: (d) => opened.write(d), finish: async () => (await before(), opened.finish()), abort: (r) => opened.abort(r) } : opened;
    // write() aborts the sink on any error or abort before rethrowing.
    const written = await plan.write(sink, { signal: req.signal, onProgress: req.onProgress });
    // As a seekable convert reports (ops/convert.ts): the source's size, the target's when the format made it larger, the note.
    return {
      size: plan.sourceSize,
      written,
      ...(plan.size !== plan.sourceSize ? { targetSize: plan.size } : {}),
      ...(plan.note ? { note: plan.note } : {}),
      objectSize: plan.length,
    };
  } finally {
    await plan.close().catch(() => {});
  }
}
