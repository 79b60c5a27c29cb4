import { Option, type Command } from 'commander';
import { BlockError } from '../core/errors.js';
import type { ChainOpenOptions } from '../chain/open.js';
import { progressBar } from './progress.js';
import { remoteTimeoutMs, setRemoteOptions } from '../io/remote-options.js';

/*
 * What the command modules share: the context a handler runs in and the
 * option helpers. A module of its own so that command modules import it and
 * not the runner (main.ts) or the table (commands.ts), which import them.
 */

/** Where a command prints its result (stdout, or the demo's transcript). */
export type Print = (s: string) => void;

/** What the runner hands a command's handler. */
export interface CommandContext {
  print: Print;
  /** Run another command line with the same `print` (the demo's steps); returns its exit status. */
  run(argv: string[]): Promise<number>;
}

/** Repeatable option: `-o a -o b` → ['a', 'b']. */
export const collect = (v: string, prev: string[] = []) => [...prev, v];

/** The options `withOpenOptions` adds, as commander hands them over. */
export interface OpenFlags {
  layerOnly?: boolean;
  ignoreParentId?: boolean;
  ignoreChecksums?: boolean;
  forceShare?: boolean;
  /** Text: checked by `openOptions` (a default, so always present). */
  depthLimit: string;
  allowPath?: string[];
  backingAs?: string[];
}

/** The options `withRemoteOptions` adds. */
export interface RemoteFlags {
  header?: string[];
  s3Endpoint?: string;
  remoteTimeout?: string;
}

/** Options of images in S3 or over HTTP(S) (io/remote-options.ts); every command that opens images has them. */
function withRemoteOptions(cmd: Command): Command {
  return cmd
    .option('--header <line>', "extra HTTP header for http(s):// images, e.g. 'Authorization: Bearer …' (repeatable; also VDISK_HTTP_HEADERS)", collect)
    .option('--s3-endpoint <url>', 'S3 endpoint for s3:// images (non-AWS servers: path-style addressing; default: AWS configuration)')
    .option('--remote-timeout <seconds>', 'give up a remote connection after this long without progress (then retried; default 30, or VDISK_REMOTE_TIMEOUT)');
}

/** Apply --header, --s3-endpoint and --remote-timeout to the remote hosts. */
function applyRemoteOptions(o: RemoteFlags): void {
  const timeout = o.remoteTimeout === undefined ? undefined : Number(o.remoteTimeout);
  if (timeout !== undefined && (o.remoteTimeout!.trim() === '' || !Number.isFinite(timeout))) {
    throw new BlockError('invalid-argument', `--remote-timeout must be a number of seconds, not '${o.remoteTimeout}'`);
  }
  setRemoteOptions({ httpHeaders: o.header ?? [], s3Endpoint: o.s3Endpoint, timeoutSeconds: timeout });
  remoteTimeoutMs(); // a bad value (here or in VDISK_REMOTE_TIMEOUT) is an error before anything is opened
}

/** Options every command that opens an image accepts. */
export function withOpenOptions(cmd: Command): Command {
  return withRemoteOptions(cmd)
    .option('--layer-only', 'open only this image, not its backing chain')
    .option('--ignore-parent-id', "accept a parent whose id differs from what the child records")
    .option('--ignore-checksums', 'open images whose checksums are wrong (reported by info)')
    .option('-U, --force-share', 'open read-only even while another process writes the image (its changes may show half-done)')
    .option('--depth-limit <n>', 'most layers a backing chain may have', '64')
    .option('--allow-path <dir>', 'let names recorded in images lead into DIR too (repeatable; docs/security.md)', collect)
    .option('--backing-as <fmt>', 'format of a backing file its image does not record (add-cow); needed for raw; repeat for each such backing down the chain', collect);
}

export function openOptions(o: OpenFlags & RemoteFlags, format?: string): ChainOpenOptions {
  applyRemoteOptions(o);
  const depth = Number(o.depthLimit);
  if (!Number.isInteger(depth) || depth < 1) throw new BlockError('invalid-argument', `--depth-limit must be a positive whole number (got ${o.depthLimit})`);
  return {
    format,
    layerOnly: Boolean(o.layerOnly),
    ignoreParentId: Boolean(o.ignoreParentId),
    ignoreChecksums: Boolean(o.ignoreChecksums),
    forceShare: Boolean(o.forceShare),
    depthLimit: depth,
    allowPaths: o.allowPath ?? [],
    backingFormats: o.backingAs ?? [],
  };
}

/** `--output human|json` (the choices are enforced by commander). */
export type OutputFormat = 'human' | 'json';

export function outputOption(): Option {
  return new Option('--output <fmt>', 'output format').choices(['human', 'json'] satisfies OutputFormat[]).default('human' satisfies OutputFormat);
}

/** Run `work` with a progress bar when asked for (-p); the bar is stopped however `work` ends. */
export async function withProgress<T>(on: boolean, work: (update?: (done: number, total: number) => void) => Promise<T>): Promise<T> {
  const bar = on ? progressBar() : undefined;
  try {
    return await work(bar?.update);
  } finally {
    bar?.stop();
  }
}
