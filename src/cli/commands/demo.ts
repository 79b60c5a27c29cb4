import type { Command } from 'commander';
import type { CommandContext } from '../options.js';

interface DemoOptions {
  keep?: boolean;
}

export function define(cmd: Command): void {
  cmd.option('--keep', 'keep the temporary folder');
}

export async function run(ctx: CommandContext, _args: [], o: DemoOptions): Promise<void> {
  // The demo itself loads every format (it shows what this build has): only when it runs.
  await (await import('../demo.js')).runDemo(ctx, Boolean(o.keep));
}
