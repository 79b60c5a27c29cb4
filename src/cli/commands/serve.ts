import { createRequire } from 'node:module';
import type { Command } from 'commander';
import { BlockError } from '../../core/errors.js';
import { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_NBD_PORT } from '../../nbd/port.js';
import { openOptions, withOpenOptions, type CommandContext, type OpenFlags, type RemoteFlags } from '../options.js';

/*
 * `vdisk serve`: export an image chain over NBD, like qemu-nbd. Binds
 * 127.0.0.1 unless told otherwise, prints where it listens, and on
 * SIGINT/SIGTERM stops taking requests, lets the running ones answer,
 * flushes and closes the image.
 */

/** The open options (withOpenOptions: --layer-only, -U with -r, ...) as every command that opens an image has them. */
interface ServeOptions extends OpenFlags, RemoteFlags {
  format?: string;
  readOnly?: boolean;
  bind: string;
  /** Text: checked by wholeNumber. */
  port: string;
  socket?: string;
  exportName: string;
  description?: string;
  persistent?: boolean;
  shared: string;
  handshakeTimeout: string;
  idleTimeout?: string;
  verboseConnections?: boolean;
}

export function define(cmd: Command): void {
  withOpenOptions(cmd)
    .option('-f, --format <fmt>', 'image format (default: probe)')
    .option('-r, --read-only', 'refuse writes')
    .option('-b, --bind <addr>', 'address to listen on', '127.0.0.1')
    .option('-p, --port <n>', 'TCP port (0: any free port)', String(DEFAULT_NBD_PORT))
    .option('-k, --socket <path>', 'listen on a unix socket instead of TCP')
    .option('-x, --export-name <name>', 'export name', '')
    .option('-D, --description <text>', 'export description shown by clients')
    .option('-t, --persistent', 'keep serving after the last client leaves')
    .option('-e, --shared <n>', 'most clients at once (more than 1 also offers multi-conn)', '1')
    .option('--handshake-timeout <seconds>', 'drop clients that have not chosen an export after this long', '10')
    .option(
      '--idle-timeout <seconds>',
      `drop clients that have sent nothing and have nothing running for this long, 0: never (default: ${DEFAULT_IDLE_TIMEOUT_MS / 1000} with --shared > 1 or --persistent, else 0)`,
    )
    .option('-v, --verbose-connections', 'log clients connecting, leaving and misbehaving to stderr')
    .argument('<image>');
}

export async function run({ print }: CommandContext, [image]: [string], o: ServeOptions): Promise<void> {
  // A server turns over many short-lived objects per request (frames,
  // promises, buffer views). V8 lets its young generation grow to tens of
  // MiB for such a load; capped at 1 MiB, collections come sooner and
  // cheaper, and peak RSS under nbdcopy drops by about a third with no
  // loss of speed (measured: BENCHMARKS.md). Only this process is
  // affected — the library API leaves V8's settings to its host.
  // node:v8 is loaded here, not at start-up (other commands never need
  // it); by require, which the CLI bundle's vm.Script supports and import() not.
  (createRequire(import.meta.url)('node:v8') as typeof import('node:v8')).setFlagsFromString('--max-semi-space-size=1');
  const port = wholeNumber(o.port, '--port', 0);
  const shared = wholeNumber(o.shared, '--shared', 1);
  const timeout = Number(o.handshakeTimeout);
  if (!(timeout > 0)) throw new BlockError('invalid-argument', `--handshake-timeout must be a positive number of seconds (got ${o.handshakeTimeout})`);
  const idle = o.idleTimeout === undefined ? undefined : Number(o.idleTimeout);
  if (idle !== undefined && !(o.idleTimeout!.trim() !== '' && idle >= 0 && Number.isFinite(idle))) {
    throw new BlockError('invalid-argument', `--idle-timeout must be a number of seconds >= 0 (got ${o.idleTimeout})`);
  }
  const server = await (await import('../../nbd/server.js')).startNbdServer({
    path: image,
    format: o.format,
    openOptions: openOptions(o),
    readOnly: Boolean(o.readOnly),
    host: o.bind,
    port,
    socketPath: o.socket,
    exportName: o.exportName,
    description: o.description,
    persistent: Boolean(o.persistent),
    shared,
    handshakeTimeoutMs: timeout * 1000,
    idleTimeoutMs: idle === undefined ? undefined : idle * 1000,
    log: o.verboseConnections ? (m) => console.error(`vdisk serve: ${m}`) : undefined,
  });
  const stop = () => void server.close().catch(() => {});
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  print(`listening on ${server.address}`);
  try {
    await server.closed;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

function wholeNumber(v: string, what: string, min: number): number {
  const n = Number(v);
  if (!/^\d+$/.test(String(v)) || !Number.isSafeInteger(n) || n < min) {
    throw new BlockError('invalid-argument', `${what} must be a whole number of at least ${min} (got ${v})`);
  }
  return n;
}
