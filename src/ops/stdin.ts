import { BlockError } from '../core/errors.js';
import { openFileStore } from '../io/file-store.js';
import { stdinStore, withStdin } from '../io/stdio.js';
import type { Store, StoreOpener } from '../io/store.js';
import { probeStore } from '../chain/open.js';
import { findFormat } from '../formats/registry.js';

/**
 * The source `-` (issue 18): stdin as a store opener for convert, map,
 * compare... Raw needs its length (`size`, --size); any other stream is
 * recognised from its first bytes, since its length is unknown until it
 * ends: a VHD (dynamic or differencing, from its footer copy at offset 0)
 * or a VHDX. A fixed VHD cannot be read from a stream: its one footer is its
 * last 512 bytes, and nothing says where the disk ends before the stream does.
 */
export async function stdinOpener(options: { format?: string; size?: number; openStore?: StoreOpener; stdin?: Store } = {}): Promise<StoreOpener> {
  const raw = options.format !== undefined && findFormat(options.format).name === 'raw';
  if (raw && options.size === undefined) throw new BlockError('invalid-argument', 'a raw stream from stdin needs --size N (its length)');
  if (!raw && options.size !== undefined) throw new BlockError('invalid-argument', '--size applies to a raw stream (-f raw)');
  const stdin = options.stdin ?? stdinStore({ length: options.size });
  if (!raw) {
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
  }
  return withStdin(options.openStore ?? openFileStore, stdin);
}
