import { BlockError } from '../core/errors.js';
import type { ByteSink } from './sink.js';
import type { Store, StoreOpener } from './store.js';
import { StreamStore } from './stream-store.js';


/**
 * What streamSink uses of a node:stream Writable (process.stdout, a socket,
 * a file stream), spelled out so that the library's declarations need no
 * @types/node (test/package.test.ts).
 */
export interface WritableByteStream {
  readonly destroyed: boolean;
  readonly writableEnded: boolean;
  write(data: Uint8Array, callback: (err?: Error | null) => void): boolean;
  end(callback: (err?: Error | null) => void): unknown;
  destroy(): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  off(event: 'error', listener: (err: Error) => void): unknown;
}
/**
 * The location `-`: stdout when written, stdin when read (issue 18). A host
 * table plugs it in through `isStdio` and the two openers below; nothing
 * else in vdisk needs to know that `-` is special.
 */
const STDIO = '-';

export function isStdio(location: string): boolean {
  return location === STDIO;
}

/**
 * A ByteSink writing to a stream (stdout by default). Each write resolves
 * once the stream has taken the chunk (its callback ran), so at most one
 * chunk is queued: that is the backpressure — a slow reader slows the
 * writer instead of filling memory. When the reader goes away (EPIPE, or
 * any other stream error) every later write fails with one clear error;
 * the process is never left waiting for a 'drain' that cannot come.
 */
export function streamSink(stream: WritableByteStream, location = STDIO): ByteSink {
  let failed: BlockError | undefined;
  let written = 0;
  const failure = (e: unknown): BlockError => {
    if (failed) return failed;
    const code = (e as NodeJS.ErrnoException | undefined)?.code;
    const why = code === 'EPIPE' ? 'the reading end of the pipe was closed (EPIPE)' : `writing failed (${(e as Error)?.message ?? String(e)})`;
    failed = new BlockError('io', `${location === STDIO ? 'stdout' : location}: ${why} after ${written} bytes`, { path: location, operation: 'write' }, { cause: e });
    return failed;
  };
  // Without a listener a stream error would be thrown as an uncaught exception.
  const onError = (e: unknown) => void failure(e);
  stream.on('error', onError);
  const settled = () => stream.off('error', onError);
  return {
    location,
    write(data) {
      if (failed) return Promise.reject(failed);
      if (stream.destroyed || stream.writableEnded) return Promise.reject(failure(new Error('the stream is closed')));
      return new Promise<void>((resolve, reject) => {
        stream.write(data, (err) => {
          if (err || failed) reject(failure(err ?? failed));
          else {
            written += data.length;
            resolve();
          }
        });
      });
    },
    async finish() {
      if (failed) throw failed;
      // Stdout itself is never ended (the process may still print to it); any other stream is.
      if (stream !== process.stdout) await new Promise<void>((resolve, reject) => stream.end((err?: Error | null) => (err ? reject(failure(err)) : resolve())));
      settled();
    },
    async abort() {
      // The error listener stays: a broken stream may still report errors, which must not become uncaught.
      // A pipe cannot take bytes back: the reader sees a short stream, and our exit status says why.
      if (stream !== process.stdout && !stream.destroyed) stream.destroy();
    },
  };
}

/** Stdout as a ByteSink (the target `-`). */
export function stdoutSink(): ByteSink {
  return streamSink(process.stdout);
}

/**
 * Stdin as a read-only Store (the source `-`; io/stream-store.ts): raw with
 * a declared `length` (--size), or an image whose blocks come in file order.
 */
export function stdinStore(options: { length?: number; capacity?: number } = {}): StreamStore {
  return new StreamStore(process.stdin, STDIO, { ...options, name: 'stdin' });
}

/** `openStore` with `-` opening `stdin` (once: a stream is read once) and every other name as before. */
export function withStdin(openStore: StoreOpener, stdin: Store): StoreOpener {
  return async (path, options) => {
    if (!isStdio(path)) return openStore(path, options);
    if (!options.readOnly) throw new BlockError('invalid-argument', 'stdin can only be read', { path });
    return stdin;
  };
}
