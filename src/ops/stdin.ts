import { BlockError } from '../core/errors.js';
import { openFileStore } from '../io/file-store.js';
import { stdinStore, withStdin } from '../io/stdio.js';
import type { StreamStore } from '../io/stream-store.js';
import type { StoreOpener } from '../io/store.js';
import { probeStore } from '../chain/open.js';
import { findFormat } from '../formats/registry.js';

/** A VHD footer is 512 bytes (VHD spec 2006, "Hard Disk Footer Format"); the dynamic disk's copy at offset 0 is identical to it. */
const VHD_FOOTER = 512;

export interface StdinSource {
  /** `openStore` with `-` opening stdin. */
  openStore: StoreOpener;
  /**
   * After the image was read: read the stream to its end and check that it
   * ends as the image says (a VHD with its footer, identical to the copy at
   * offset 0). Call it before the result is kept (convert's beforeCommit).
   */
  finish(): Promise<void>;
  /** convert's mapWindow for this source: a few blocks, so sector bitmaps are read just before their blocks. */
  mapWindow: number;
}

/** Mapped at once from a stream: far less than the stream's 64 MiB buffer. */
const MAP_WINDOW = 8 << 20;

/**
 * The source `-` (issue 18): stdin as a store opener for convert. Raw needs
 * its length (`size`, --size); any other stream is recognised from its
 * first bytes, since its length is unknown until it ends: a VHD (dynamic or
 * differencing, from its footer copy at offset 0) or a VHDX. A fixed VHD
 * cannot be read from a stream: its one footer is its last 512 bytes, and
 * nothing says where the disk ends before the stream does.
 */
export async function stdinSource(options: { format?: string; size?: number; openStore?: StoreOpener; stdin?: StreamStore } = {}): Promise<StdinSource> {
  const raw = options.format !== undefined && findFormat(options.format).name === 'raw';
  if (raw && options.size === undefined) throw new BlockError('invalid-argument', 'a raw stream from stdin needs --size N (its length)');
  if (!raw && options.size !== undefined) throw new BlockError('invalid-argument', '--size applies to a raw stream (-f raw)');
  const stdin = options.stdin ?? stdinStore({ length: options.size });
  const openStore = withStdin(options.openStore ?? openFileStore, stdin);
  // A raw stream's end is checked as it is read (the declared length).
  if (raw) return { openStore, finish: async () => {}, mapWindow: MAP_WINDOW };
  // The head read here stays in the stream's buffer for the open that follows.
  const probed = (await probeStore(stdin)).name;
  const wanted = options.format === undefined ? undefined : findFormat(options.format).name;
  if (probed === 'raw' || (wanted !== undefined && probed !== wanted)) {
    await stdin.close();
    throw new BlockError(
      'unsupported',
      `stdin: not a ${wanted ?? 'VHD or VHDX'} stream that can be read from its start (a fixed VHD's only footer is at its end: convert it from a file; a raw stream needs -f raw --size N)`,
      { path: stdin.path },
    );
  }
  if (probed !== 'vhd') return { openStore, finish: async () => {}, mapWindow: MAP_WINDOW };
  const copy = new Uint8Array(VHD_FOOTER);
  await stdin.read(0, copy);
  return {
    openStore,
    mapWindow: MAP_WINDOW,
    async finish() {
      const { length, tail } = await stdin.drain(VHD_FOOTER);
      if (tail.length !== VHD_FOOTER || !Buffer.from(tail).equals(copy)) {
        throw new BlockError('corrupt', `stdin: the VHD stream (${length} bytes) does not end with its footer (the last 512 bytes differ from the footer copy at offset 0): truncated or followed by other data`, {
          path: stdin.path,
          offset: length - tail.length,
        });
      }
    },
  };
}
