import { Option, type Command } from 'commander';
import { escapeJson } from '../../core/escape.js';
import { openOptions, outputOption, withOpenOptions, type CommandContext, type OpenFlags, type OutputFormat } from '../options.js';

type Repair = 'leaks' | 'all';

interface CheckOptions extends OpenFlags {
  format?: string;
  repair?: Repair;
  output: OutputFormat;
  backingChain?: boolean;
  quiet?: boolean;
  azure?: boolean;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .addOption(new Option('-r, --repair <what>', 'repair what is safe to repair').choices(['leaks', 'all'] satisfies Repair[]))
      .addOption(outputOption())
      .option('--backing-chain', 'check every layer of the backing chain, not only IMAGE')
      .option('-q, --quiet', 'print nothing (the exit status tells)')
      .option('--azure', 'say everything Azure would refuse in this VHD (file or page blob URL), one line each')
      .argument('<image>'),
  );
}

/** Resolves to qemu-img check's status for what was found (ops/check.ts CHECK_EXIT). */
export async function run({ print }: CommandContext, [image]: [string], o: CheckOptions): Promise<number> {
  const { checkImage, checkExitCode, humanCheck } = await import('../../ops/check.js');
  const reports = await checkImage({ path: image, openOptions: openOptions(o, o.format), repair: o.repair, backingChain: Boolean(o.backingChain), azure: Boolean(o.azure) });
  if (!o.quiet) {
    if (o.output === 'json') print(escapeJson(JSON.stringify(o.backingChain ? reports : reports[0], null, 4)));
    else print(reports.map((r) => (reports.length > 1 ? `${r.filename}:\n` : '') + humanCheck(r)).join('\n\n'));
  }
  return checkExitCode(reports);
}
