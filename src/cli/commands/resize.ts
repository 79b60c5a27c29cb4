import type { Command } from 'commander';
import { parseSize } from '../../core/size.js';
import { openOptions, withOpenOptions, type CommandContext, type OpenFlags } from '../options.js';

interface ResizeOptions extends OpenFlags {
  format?: string;
  shrink?: boolean;
  quiet?: boolean;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .option('--shrink', 'allow the disk to get smaller (data past the new end is lost)')
      .option('-q, --quiet', 'print nothing')
      // A negative size looks like an option: take it as an argument (like qemu-img).
      .allowUnknownOption()
      .argument('<image>')
      .argument('<size>', '[+|-]SIZE'),
  );
}

export async function run({ print }: CommandContext, [image, sizeText]: [string, string], o: ResizeOptions): Promise<void> {
  const m = /^([+-]?)(.*)$/.exec(sizeText)!;
  const n = parseSize(m[2], 'size');
  const size = m[1] === '' ? n : { delta: m[1] === '+' ? n : -n };
  const { resizeImage } = await import('../../ops/resize.js');
  const r = await resizeImage({ path: image, size, shrink: Boolean(o.shrink), openOptions: openOptions(o, o.format) });
  if (!o.quiet) print(r.newSize === r.oldSize ? `Image already has ${r.newSize} bytes.` : `Image resized from ${r.oldSize} to ${r.newSize} bytes.`);
}
