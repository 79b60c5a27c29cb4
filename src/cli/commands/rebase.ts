import type { Command } from 'commander';
import { openOptions, withOpenOptions, withProgress, type CommandContext, type OpenFlags } from '../options.js';

interface RebaseOptions extends OpenFlags {
  format?: string;
  /** "" for none. */
  backing: string;
  backingFormat?: string;
  unsafe?: boolean;
  progress?: boolean;
  quiet?: boolean;
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .requiredOption('-b, --backing <file>', 'the new backing file ("" for none; relative names are relative to IMAGE)')
      .option('-F, --backing-format <fmt>', 'format of the new backing file')
      .option('-u, --unsafe', 'only rewrite the reference; copy nothing (the content may change)')
      .option('-p, --progress', 'show a progress bar')
      .option('-q, --quiet', 'print nothing')
      .argument('<image>'),
  );
}

export async function run({ print }: CommandContext, [image]: [string], o: RebaseOptions): Promise<void> {
  const { rebaseImage } = await import('../../ops/rebase.js');
  const r = await withProgress(Boolean(o.progress), (onProgress) =>
    rebaseImage({
      path: image,
      backing: o.backing === '' ? null : { path: o.backing, format: o.backingFormat },
      unsafe: Boolean(o.unsafe),
      openOptions: openOptions(o, o.format),
      onProgress,
    }),
  );
  if (!o.quiet) print(r.backing === null ? `Image has no backing file now (${r.copied} bytes copied in).` : `Image rebased onto ${r.backing} (${r.copied} bytes copied in).`);
}
