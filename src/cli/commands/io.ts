import type { Command } from 'commander';
import { BlockError } from '../../core/errors.js';
import { collect, openOptions, withOpenOptions, type CommandContext, type OpenFlags } from '../options.js';

interface IoOptions extends OpenFlags {
  format?: string;
  cmd?: string[];
  readOnly?: boolean;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .option('-c, --cmd <command>', 'a command (repeatable, run in order)', collect)
      .option('-r, --read-only', 'open read-only')
      .argument('<image>'),
  );
}

export async function run({ print }: CommandContext, [image]: [string], o: IoOptions): Promise<void> {
  const cmds = o.cmd ?? [];
  if (cmds.length === 0) throw new BlockError('invalid-argument', 'no command given (use -c "read 0 512")');
  const readOnly = Boolean(o.readOnly) || cmds.every((c) => /^\s*read\b/.test(c));
  const { openChain } = await import('../../chain/open.js');
  const { runIoCommand } = await import('../../ops/io.js');
  const chain = await openChain(image, { ...openOptions(o, o.format), readOnly });
  try {
    for (const c of cmds) print(await runIoCommand(chain, c));
    if (!readOnly) await chain.flush();
  } catch (e) {
    // The failure is what the user needs to hear about, not a second one from closing after it (a full disk fails both).
    await chain.close().catch(() => {});
    throw e;
  }
  await chain.close();
}
