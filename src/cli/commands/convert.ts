import { Option, type Command } from 'commander';
import { parseSize } from '../../core/size.js';
import { parseOptions } from '../../ops/options.js';
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
  const { convert } = await import('../../ops/convert.js');
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
      }).then((r) => {
        if (r.note) print(r.note);
      }),
    ),
  );
}
