import { BlockError } from '../core/errors.js';
import { openLocation } from '../io/hosts.js';
import type { StoreOpener } from '../io/store.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import { findFormat } from '../formats/registry.js';
import type { Format } from '../formats/types.js';
import { checkCreateOptions, validateSize } from './create.js';

export interface MeasureRequest {
  /** Target format (`-O`). */
  format: string;
  /** `-o` creation options of the target. */
  options?: Record<string, string>;
  /** The disk that would be converted (its chain is flattened, like convert). */
  source?: string;
  sourceOptions?: ChainOpenOptions;
  /** `--size N`: a new empty disk of this size instead of a source. */
  size?: number;
  openStore?: StoreOpener;
  /** The formats to choose the target from (default: the registry). */
  formats?: readonly Format[];
  /**
   * Also give the exact length of the image written as a stream
   * (`streamed-size`: what `convert SRC -` writes, ops/sequential.ts). Reads
   * the source's data to find its zero blocks. Needs a source.
   */
  streamed?: boolean;
  /** `-B` for the streamed size: the stream is a child of this image. */
  backing?: { path: string; format?: string };
}

/** Field names of `qemu-img measure --output=json`. */
export interface MeasureResult {
  required: number;
  'fully-allocated': number;
  /** Virtual size measured (not in qemu's JSON; handy for callers). */
  size: number;
  /**
   * With `-O vhd -o azure=on`: the bytes an upload to a page blob sends —
   * the source's data ranges (an upper bound: data that reads as zeros is
   * skipped too) and the footer. The page blob itself is `required` bytes.
   */
  'upload-size'?: number;
  /** With `streamed`: bytes `convert` sends when it writes the image as a stream (exact). */
  'streamed-size'?: number;
}

const WINDOW = 1 << 30;

/**
 * How big an image of `format` would be (qemu-img measure). The source is
 * walked by block status only (no data read, like qemu-img), so ranges a
 * layer reports as data count as allocated even if they hold zeros: the
 * required size is what `convert` produces when the data holds no aligned
 * zero runs, and an upper bound otherwise. The layout arithmetic is the
 * format's own (Format.measure).
 */
export async function measureImage(req: MeasureRequest): Promise<MeasureResult> {
  const format = findFormat(req.format, req.formats);
  if (!format.measure) throw new BlockError('unsupported', `format ${format.name} cannot be measured`);
  if (req.backing && !req.streamed) throw new BlockError('invalid-argument', '-B changes only the streamed size (give --streamed)');
  if ((req.source === undefined) === (req.size === undefined)) {
    throw new BlockError('invalid-argument', 'give either a source image or --size, not both or neither');
  }
  const options = { ...(req.options ?? {}) };
  for (const key of ['backing_file', 'backing_fmt']) {
    if (key in options) throw new BlockError('invalid-argument', `option ${key} is not accepted by measure (a backing file changes nothing it computes)`);
  }
  checkCreateOptions(format, options);
  let size: number;
  const allocated: { offset: number; length: number }[] = [];
  if (req.size !== undefined) {
    size = req.size;
  } else {
    const chain = await openChain(req.source!, { ...req.sourceOptions, readOnly: true, openStore: req.openStore ?? req.sourceOptions?.openStore ?? openLocation });
    try {
      size = chain.size;
      for (let off = 0; off < size; off += WINDOW) {
        for (const e of await chain.blockStatus(off, Math.min(WINDOW, size - off))) {
          if (e.kind !== 'data') continue;
          const last = allocated[allocated.length - 1];
          if (last && last.offset + last.length === e.offset) last.length += e.length;
          else allocated.push({ offset: e.offset, length: e.length });
        }
      }
    } finally {
      await chain.close();
    }
  }
  validateSize(size, format.maxSize, format.name);
  const r = format.measure({ size, allocated, options });
  const result: MeasureResult = { required: r.required, 'fully-allocated': r.fullyAllocated, size };
  if (format.name === 'vhd' && ['on', 'true', 'yes'].includes(options.azure ?? '')) {
    // Every data range goes up in whole 512-byte pages (Put Page), then the footer page.
    let bytes = 512;
    for (const a of allocated) bytes += Math.ceil((a.offset + a.length) / 512) * 512 - Math.floor(a.offset / 512) * 512;
    result['upload-size'] = bytes;
  }
  if (req.streamed) result['streamed-size'] = await streamedSize(req, options);
  return result;
}

/** The exact length of the stream convert would write (the plan is made, nothing is sent). */
async function streamedSize(req: MeasureRequest, options: Record<string, string>): Promise<number> {
  if (req.source === undefined) throw new BlockError('invalid-argument', 'the streamed size needs a source image (not --size)');
  const { planSequentialConvert } = await import('./sequential.js');
  const plan = await planSequentialConvert({ source: req.source, sourceOptions: req.sourceOptions, targetFormat: req.format, options, backing: req.backing, openStore: req.openStore });
  await plan.close();
  return plan.length;
}
