import type { Command } from 'commander';
import { BlockError } from '../../core/errors.js';
import { parseSize } from '../../core/size.js';
import { openOptions, withOpenOptions, type CommandContext, type OpenFlags } from '../options.js';

interface ResizeOptions extends OpenFlags {
  format?: string;
  shrink?: boolean;
  quiet?: boolean;
  chain?: boolean;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .option('--shrink', 'allow the disk to get smaller (data past the new end is lost)')
      .option('--chain', 'grow every layer of the chain, from the base up, to SIZE (absolute; re-run the same command to finish an interrupted one)')
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
  if (o.chain) {
    if (m[1] !== '') throw new BlockError('invalid-argument', 'resize --chain takes an absolute size (re-running it after an interruption must not grow the chain again)');
    if (o.shrink) throw new BlockError('invalid-argument', 'resize --chain only grows a chain; shrink a single VHDX layer with resize --shrink, or convert the chain to one image first');
    const { resizeChain } = await import('../../ops/resize-chain.js');
    const r = await resizeChain({
      path: image,
      size: n,
      openOptions: openOptions(o, o.format),
      onLayer: (l) => {
        if (!o.quiet) print(l.oldSize === l.newSize ? `${l.path}: already ${l.newSize} bytes.` : `${l.path}: resized from ${l.oldSize} to ${l.newSize} bytes.`);
      },
    });
    if (!o.quiet) print(`Chain of ${r.layers.length} layer${r.layers.length === 1 ? '' : 's'} is ${r.newSize} bytes.`);
    return;
  }
  const { resizeImage } = await import('../../ops/resize.js');
  const r = await resizeImage({ path: image, size, shrink: Boolean(o.shrink), openOptions: openOptions(o, o.format) });
  if (!o.quiet) print(r.newSize === r.oldSize ? `Image already has ${r.newSize} bytes.` : `Image resized from ${r.oldSize} to ${r.newSize} bytes.`);
}
