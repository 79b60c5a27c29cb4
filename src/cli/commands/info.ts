import type { Command } from 'commander';
import { escapeJson } from '../../core/escape.js';
import { openOptions, outputOption, withOpenOptions, type CommandContext, type OpenFlags, type OutputFormat } from '../options.js';

interface InfoOptions extends OpenFlags {
  format?: string;
  output: OutputFormat;
  backingChain?: boolean;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .addOption(outputOption())
      .option('--backing-chain', 'show every layer of the backing chain')
      .argument('<image>'),
  );
}

export async function run({ print }: CommandContext, [image]: [string], o: InfoOptions): Promise<void> {
  const { imageInfo } = await import('../../ops/info.js');
  const { humanInfo } = await import('../output.js');
  const infos = await imageInfo(image, { ...openOptions(o, o.format), backingChain: Boolean(o.backingChain) });
  if (o.output === 'json') print(escapeJson(JSON.stringify(o.backingChain ? infos : infos[0], null, 4)));
  else print(infos.map(humanInfo).join('\n\n'));
}
