import type { Command } from 'commander';
import { parseSize } from '../../core/size.js';
import { parseOptions } from '../../ops/options.js';
import { interruptible } from '../interrupt.js';
import { collect, type CommandContext } from '../options.js';

interface CreateOptions {
  format: string;
  options?: string[];
  backing?: string;
  backingFormat?: string;
  allowPath?: string[];
  backingAs?: string[];
  quiet?: boolean;
  overwrite?: boolean;
}

export function define(cmd: Command): void {
  cmd
    .requiredOption('-f, --format <fmt>', 'format of the new image')
    .option('-o, --options <k=v,...>', 'format options (repeatable)', collect)
    .option('-b, --backing <file>', 'backing file (relative names are relative to IMAGE)')
    .option('-F, --backing-format <fmt>', 'format of the backing file')
    .option('--allow-path <dir>', 'let names recorded in the backing chain lead into DIR too (repeatable; docs/security.md)', collect)
    .option('--backing-as <fmt>', "format of a backing file under -b that its image does not record (add-cow); needed for raw; repeatable", collect)
    .option('-q, --quiet', 'print nothing')
    .option('--overwrite', 'replace an existing file (atomically, once the new image is complete)')
    // Optional for `-o help` alone (checked in run); the usage line still says it is needed.
    .argument('[image]')
    .argument('[size]', 'virtual size (k, M, G, T suffixes); default: the backing file size')
    .usage('[options] <image> [size]')
    .addHelpText(
      'after',
      '\nVHD sizes: dynamic and differencing disks hold at most 2040 GiB; fixed ones up to 32 TiB,\n' +
        'but Hyper-V attaches fixed VHDs only up to 2040 GiB (Azure takes them up to 32 TiB).\n' +
        '-o azure=on: a fixed VHD Azure takes (size rounded up to a whole MiB, 20 MiB to 32 TiB).',
    );
}

export async function run({ print }: CommandContext, [image, size]: [string | undefined, string | undefined], o: CreateOptions): Promise<number | undefined> {
  const help = await import('../options-help.js');
  if (help.wantsOptionHelp(o.options)) return void (await help.printCreateOptions(o.format, print));
  if (image === undefined) return help.missingArgument('image');
  const { createImage } = await import('../../ops/create.js');
  let r: Awaited<ReturnType<typeof createImage>> | undefined;
  const status = await interruptible(`nothing was written to ${image}`, async (signal) => {
    r = await createImage({
      path: image,
      format: o.format,
      size: size === undefined ? undefined : parseSize(size),
      options: parseOptions(o.options),
      backing: o.backing !== undefined ? { path: o.backing, format: o.backingFormat } : undefined,
      backingOpenOptions: { allowPaths: o.allowPath ?? [], backingFormats: o.backingAs ?? [] },
      overwrite: Boolean(o.overwrite),
      signal,
    });
  });
  if (status !== undefined || !r) return status;
  if (!o.quiet) {
    if (r.note) print(r.note);
    const rounded = r.size !== r.requestedSize ? ` (requested ${r.requestedSize}, rounded by the format)` : '';
    print(`Formatting '${image}', fmt=${r.format} size=${r.size}${rounded}${o.backing ? ` backing_file=${o.backing}` : ''}`);
  }
}
