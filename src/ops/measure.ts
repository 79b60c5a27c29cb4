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
}

/** Field names of `qemu-img measure --output=json`. */
export interface MeasureResult {
  required: number;
  'fully-allocated': number;
  /** Virtual size measured (not in qemu's JSON; handy for callers). */
  size: number;
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
  return { required: r.required, 'fully-allocated': r.fullyAllocated, size };
}
