import type { Command } from 'commander';
import type { MapEntry } from '../../ops/map.js';
import { openOptions, outputOption, withOpenOptions, type CommandContext, type OpenFlags, type OutputFormat } from '../options.js';

interface MapOptions extends OpenFlags {
  format?: string;
  output: OutputFormat;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .addOption(outputOption())
      .argument('<image>'),
  );
}

export async function run({ print }: CommandContext, [image]: [string], o: MapOptions): Promise<void> {
  const { openChain } = await import('../../chain/open.js');
  const { mapChain } = await import('../../ops/map.js');
  const { humanMap, jsonMap } = await import('../output.js');
  const chain = await openChain(image, { ...openOptions(o, o.format), readOnly: true });
  try {
    const entries: MapEntry[] = [];
    for await (const e of mapChain(chain)) entries.push(e);
    print(o.output === 'json' ? jsonMap(entries) : humanMap(entries));
  } finally {
    await chain.close();
  }
}
