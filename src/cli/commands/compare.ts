import type { Command } from 'commander';
import { openOptions, withOpenOptions, type CommandContext, type OpenFlags, type RemoteFlags } from '../options.js';

/** The open options (withOpenOptions: --layer-only, -U, ...) apply to both images. */
interface CompareOptions extends OpenFlags, RemoteFlags {
  format?: string;
  secondFormat?: string;
  strict?: boolean;
  quiet?: boolean;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'format of the first image')
      .option('-F, --second-format <fmt>', 'format of the second image')
      .option('-s, --strict', 'images of different sizes differ')
      .option('-q, --quiet', 'print nothing')
      .argument('<a>')
      .argument('<b>'),
  );
}

/** 0 when the disks have the same content, 1 when they differ. */
export async function run({ print }: CommandContext, [a, b]: [string, string], o: CompareOptions): Promise<number> {
  const { compareImages } = await import('../../ops/compare.js');
  const r = await compareImages(a, b, {
    a: openOptions(o, o.format),
    b: openOptions(o, o.secondFormat),
    strict: o.strict,
  });
  if (!o.quiet) {
    if (r.sizeA !== r.sizeB) print('Warning: Image size mismatch!');
    print(r.message);
  }
  return r.identical ? 0 : 1;
}
