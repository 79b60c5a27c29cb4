import { BlockError } from '../core/errors.js';
import { openChain } from '../chain/open.js';
import type { Host } from '../io/host.js';
import type { ChainOpenOptions } from '../chain/open.js';
import type { StoreOpener } from '../io/store.js';

/** What of a ConvertRequest (ops/convert.ts) a convert to a sink reads. */
interface SinkConvertRequest {
  source: string;
  sourceOptions?: ChainOpenOptions;
  target: string;
  targetFormat: string;
  options?: Record<string, string>;
  backing?: unknown;
  existing?: boolean;
  overwrite?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

/**
 * convert to a host whose files cannot be written in place (S3): the
 * target goes out as one ordered byte stream through the host's ByteSink
 * (io/sink.ts). Raw is sequential by nature — the disk's bytes in order —
 * so it is written here; the other formats need the sequential writers
 * (metadata laid out up front from the source's map), which come with
 * their own module. Reads run ahead of the writes (READ_AHEAD pieces at
 * once, over the source host's connections); zero extents the source
 * reports are sent without being read. Memory: READ_AHEAD + 1 pieces plus
 * what the sink holds.
 */
const PIECE = 8 << 20;
const READ_AHEAD = 4;
const WINDOW = 1 << 30;

export async function convertToSink(req: SinkConvertRequest, host: Host & Required<Pick<Host, 'createSink'>>, openStore: StoreOpener): Promise<{ size: number; written: number }> {
  const unsupported = (what: string) => new BlockError('unsupported', `${what} cannot be written to ${host.name} (${req.target}) yet`, { path: req.target });
  if (req.targetFormat !== 'raw') throw unsupported(`format ${req.targetFormat}: only raw`);
  if (req.existing) throw unsupported('-n (writing into an existing object)');
  if (req.backing) throw unsupported('-B (a differencing target)');
  if (req.options && Object.keys(req.options).length > 0) throw unsupported('-o options');
  req.signal?.throwIfAborted();
  const src = await openChain(req.source, { ...req.sourceOptions, readOnly: true, openStore });
  try {
    const size = src.size;
    const sink = await host.createSink(req.target, { overwrite: req.overwrite, size });
    const zeros = new Uint8Array(PIECE);
    let written = 0;
    try {
      const pending: Promise<Uint8Array>[] = [];
      const send = async () => {
        const data = await pending.shift()!;
        await sink.write(data);
        written += data.length;
        req.onProgress?.(written, size);
      };
      for (let w = 0; w < size; w += WINDOW) {
        for (const e of await src.blockStatus(w, Math.min(WINDOW, size - w))) {
          for (let o = 0; o < e.length; o += PIECE) {
            req.signal?.throwIfAborted();
            const offset = e.offset + o;
            const length = Math.min(PIECE, e.length - o);
            if (e.kind === 'zero') pending.push(Promise.resolve(zeros.subarray(0, length)));
            else {
              const buf = new Uint8Array(length);
              const r = src.read(offset, buf).then(() => buf);
              r.catch(() => {}); // awaited in order by send()
              pending.push(r);
            }
            if (pending.length > READ_AHEAD) await send();
          }
        }
      }
      while (pending.length) await send();
      req.signal?.throwIfAborted();
      await sink.finish();
    } catch (e) {
      await sink.abort(e).catch(() => {});
      throw e;
    }
    return { size, written };
  } finally {
    await src.close().catch(() => {});
  }
}
