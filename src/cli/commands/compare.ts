import type { Command } from 'commander';
import type { CommandContext } from '../options.js';

interface CompareOptions {
  format?: string;
  secondFormat?: string;
  strict?: boolean;
  quiet?: boolean;
  ignoreChecksums?: boolean;
  forceShare?: boolean;
}

export function define(cmd: Command): void {
  cmd
    .option('-f, --format <fmt>', 'format of the first image')
    .option('-F, --second-format <fmt>', 'format of the second image')
    .option('-s, --strict', 'images of different sizes differ')
    .option('-q, --quiet', 'print nothing')
    .option('--ignore-checksums', 'open images whose checksums are wrong')
    .option('-U, --force-share', 'open even while another process writes an image (its changes may show half-done)')
    .argument('<a>')
    .argument('<b>');
}

/** 0 when the disks have the same content, 1 when they differ. */
export async function run({ print }: CommandContext, [a, b]: [string, string], o: CompareOptions): Promise<number> {
  const { compareImages } = await import('../../ops/compare.js');
  const r = await compareImages(a, b, {
    a: { format: o.format, ignoreChecksums: o.ignoreChecksums, forceShare: o.forceShare },
    b: { format: o.secondFormat, ignoreChecksums: o.ignoreChecksums, forceShare: o.forceShare },
    strict: o.strict,
  });
  if (!o.quiet) {
    if (r.sizeA !== r.sizeB) print('Warning: Image size mismatch!');
    print(r.message);
  }
  return r.identical ? 0 : 1;
}
