import { Option, type Command } from 'commander';
import { BlockError } from '../../core/errors.js';
import { parseSize } from '../../core/size.js';
import { parseOptions } from '../../ops/options.js';
import type { StdinSource } from '../../ops/stdin.js';
import type { ByteSink } from '../../io/sink.js';
import { interruptible } from '../interrupt.js';
import { collect, openOptions, withOpenOptions, withProgress, type CommandContext, type OpenFlags } from '../options.js';

interface ConvertOptions extends OpenFlags {
  format?: string;
  outputFormat: string;
  options?: string[];
  backing?: string;
  backingFormat?: string;
  sparseSize: string;
  /** false with -n (--no-create). */
  create: boolean;
  progress?: boolean;
  cache: 'unsafe' | 'writeback';
  overwrite?: boolean;
  quiet?: boolean;
  resume?: boolean;
  streamed?: boolean;
  size?: string;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'source format (default: probe)')
      .requiredOption('-O, --output-format <fmt>', 'target format')
      .option('-o, --options <k=v,...>', 'target format options (repeatable)', collect)
      .option('-B, --backing <file>', 'make the target a child of this file holding only what differs')
      .option('-F, --backing-format <fmt>', 'format of the -B file')
      .option('-S, --sparse-size <size>', 'skip zero runs of at least this size (0: write everything)', '4k')
      .option('-n, --no-create', 'write into an existing target (in place: not atomic)')
      .option('--overwrite', 'replace an existing target (atomically, once the copy is complete)')
      .option('--resume', 'TARGET is an Azure page blob: finish an interrupted upload (sends only what the blob lacks or holds differently)')
      .option('--streamed', 'write the target as one sequential stream (as to stdout), not in place; a target of - is always streamed')
      .option('--size <size>', 'with SOURCE - and -f raw: the length of the raw stream read from stdin')
      .option('-p, --progress', 'show a progress bar')
      .addOption(new Option('-t, --cache <mode>', 'target cache: unsafe (no syncs, as qemu-img convert) or writeback (sync as the format orders writes)').choices(['unsafe', 'writeback'] satisfies ConvertOptions['cache'][]).default('unsafe'))
      .option('-q, --quiet', 'quiet: print nothing but errors (no progress bar, even with -p), as qemu-img convert -q')
      // Optional for `-o help` alone (checked in run); the usage line still says they are needed.
      .argument('[source]')
      .argument('[target]')
      .usage('[options] <source> <target>'),
  );
}

export async function run({ print }: CommandContext, [source, target]: [string | undefined, string | undefined], o: ConvertOptions): Promise<number | undefined> {
  const help = await import('../options-help.js');
  if (help.wantsOptionHelp(o.options)) return void (await help.printCreateOptions(o.outputFormat, print));
  if (source === undefined) return help.missingArgument('source');
  if (target === undefined) return help.missingArgument('target');
  const { isStdio } = await import('../../io/stdio.js');
  const stdin = await sourceOpener(source, o);
  if (isStdio(target) || o.streamed) return streamed(print, source, target, o, stdin);
  const { convert } = await import('../../ops/convert.js');
  const { fileHost } = await import('../../io/staging.js');
  if (stdin) {
    const { hostFor } = await import('../../io/hosts.js');
    const { findFormat } = await import('../../formats/registry.js');
    // A target that is not written in place (S3) is streamed too (ops/convert-sink.ts): the same rule as for stdout.
    const host = hostFor(target);
    if (!host.files && host.createSink && findFormat(o.outputFormat).name !== 'raw') {
      throw new BlockError('unsupported', `a stream read from stdin can be uploaded as raw only (-O ${o.outputFormat} needs two passes over its source); convert it to a file first`);
    }
  }
  const existing = o.create === false;
  const { isAzureLocation, displayLocation } = await import('../../io/azure-location.js');
  const what = isAzureLocation(target)
    ? `${displayLocation(target)} is partly uploaded and has no footer yet: the same command with --resume finishes it`
    : existing
      ? `${target} is partly written (-n writes in place)`
      : `nothing was written to ${target}`;
  return interruptible(what, (signal) =>
    withProgress(Boolean(o.progress) && !o.quiet, (onProgress) =>
      convert({
        source,
        sourceOptions: openOptions(o, o.format),
        target,
        targetFormat: o.outputFormat,
        options: parseOptions(o.options),
        backing: o.backing !== undefined ? { path: o.backing, format: o.backingFormat } : undefined,
        sparseSize: parseSize(o.sparseSize, 'sparse size'),
        existing,
        overwrite: Boolean(o.overwrite),
        resume: Boolean(o.resume),
        cache: o.cache,
        onProgress,
        signal,
        // With stdin in the opener, the target's files are still named and renamed on the host.
        ...(stdin ? { openStore: stdin.openStore, host: fileHost, beforeCommit: stdin.finish, mapWindow: stdin.mapWindow } : {}),
      }).then((r) => {
        if (r.note) print(r.note);
      }),
    ),
  );
}

/**
 * The sequential writer (ops/sequential.ts): `-` (stdout) or, with
 * --streamed, a file written front to back. Options that only make sense
 * for a target written in place are refused rather than ignored.
 */
async function streamed(print: (s: string) => void, source: string, target: string, o: ConvertOptions, stdin: StdinSource | undefined): Promise<number | undefined> {
  const { isStdio, stdoutSink } = await import('../../io/stdio.js');
  const { fileSink } = await import('../../io/file-sink.js');
  const { convertToSink } = await import('../../ops/sequential.js');
  const toStdout = isStdio(target);
  if (o.create === false) throw new BlockError('invalid-argument', `-n writes into an existing target in place; ${toStdout ? 'stdout' : 'a streamed target'} is always new`);
  if (o.sparseSize !== '4k') throw new BlockError('invalid-argument', '-S does not apply to a streamed target (its zero blocks are always left out)');
  if (toStdout && o.overwrite) throw new BlockError('invalid-argument', '--overwrite does not apply to stdout');
  if (toStdout && process.stdout.isTTY) throw new BlockError('invalid-argument', 'stdout is a terminal: pipe or redirect the image (vdisk convert ... - > FILE)');
  const { findFormat } = await import('../../formats/registry.js');
  if (isStdio(source) && findFormat(o.outputFormat).name !== 'raw') {
    // A streamed image's block map is decided by a first pass over the data, which a stream cannot give twice.
    throw new BlockError('unsupported', `a stream read from stdin can be streamed out as raw only (-O ${o.outputFormat} needs two passes over its source); write it to a file`);
  }
  const out = toStdout ? stdoutSink() : await fileSink(target, { overwrite: Boolean(o.overwrite), durable: o.cache === 'writeback' });
  // A stdin source's end is checked before the stream is declared complete.
  const sink: ByteSink = stdin
    ? { location: out.location, write: (d) => out.write(d), finish: async () => (await stdin.finish(), out.finish()), abort: (r) => out.abort(r) }
    : out;
  const what = toStdout ? 'the stream on stdout is incomplete' : `nothing was written to ${target}`;
  return interruptible(what, (signal) =>
    withProgress(Boolean(o.progress) && !o.quiet, (onProgress) =>
      convertToSink({
        source,
        sourceOptions: openOptions(o, o.format),
        targetFormat: o.outputFormat,
        options: parseOptions(o.options),
        backing: o.backing !== undefined ? { path: o.backing, format: o.backingFormat } : undefined,
        target: toStdout ? undefined : target,
        openStore: stdin?.openStore,
        sink,
        signal,
        onProgress,
      }).then((r) => {
        // Not on stdout, which holds the image: the note goes with a file target only.
        if (r.note && !toStdout) print(r.note);
      }),
    ),
  );
}

/**
 * The source `-`: stdin, raw with --size or an image whose blocks come in
 * file order (io/stream-store.ts). Undefined for any other source.
 */
async function sourceOpener(source: string, o: ConvertOptions): Promise<StdinSource | undefined> {
  const { isStdio } = await import('../../io/stdio.js');
  if (!isStdio(source)) {
    if (o.size !== undefined) throw new BlockError('invalid-argument', '--size gives the length of a raw stream read from stdin (SOURCE -)');
    return undefined;
  }
  const { stdinSource } = await import('../../ops/stdin.js');
  return stdinSource({ format: o.format, size: o.size === undefined ? undefined : parseSize(o.size, 'size') });
}
