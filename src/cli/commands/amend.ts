import type { Command } from 'commander';
import { parseOptions } from '../../ops/options.js';
import { collect, openOptions, type CommandContext, type OpenFlags } from '../options.js';

/*
 * `vdisk amend [-f FMT] -o reset-identity=on [--force] IMAGE`: change an
 * existing image in place (ops/amend.ts says what and why).
 */

interface AmendOptions {
  format?: string;
  options?: string[];
  force?: boolean;
  ignoreChecksums?: boolean;
  quiet?: boolean;
}

export function define(cmd: Command): void {
  cmd
    .option('-f, --format <fmt>', 'image format (default: probe)')
    .option('-o, --options <k=v,...>', 'what to change: reset-identity=on (-o help lists the options)', collect)
    .option('--force', 'reset the identity even when images in the folder record this one as their parent')
    .option('--ignore-checksums', 'open an image whose checksums are wrong')
    .option('-q, --quiet', 'print nothing')
    // Optional for `-o help` alone (checked in run).
    .argument('[image]')
    .usage('[options] <image>');
}

export async function run({ print }: CommandContext, [image]: [string | undefined], o: AmendOptions): Promise<void> {
  const help = await import('../options-help.js');
  const { amendImage, AMEND_OPTIONS } = await import('../../ops/amend.js');
  if (help.wantsOptionHelp(o.options)) return help.printOptionTable('Supported options for amend (-o NAME=VALUE,...):', AMEND_OPTIONS, print);
  if (image === undefined) return help.missingArgument('image');
  const flags: OpenFlags = { depthLimit: '1', ignoreChecksums: o.ignoreChecksums };
  const r = await amendImage({ path: image, options: parseOptions(o.options), force: Boolean(o.force), openOptions: openOptions(flags, o.format) });
  if (o.quiet) return;
  for (const c of r.changes) print(`${c.field}: ${c.old} -> ${c.new}`);
  if (r.children.length) print(`warning: these images recorded the old identity and no longer open over ${image}: ${r.children.join(', ')}`);
}
