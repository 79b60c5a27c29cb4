import { Option, type Command } from 'commander';
import { openOptions, withOpenOptions, withProgress, type CommandContext, type OpenFlags } from '../options.js';

interface CommitOptions extends OpenFlags {
  format?: string;
  base?: string;
  keep?: boolean;
  progress?: boolean;
  quiet?: boolean;
  cache: 'unsafe' | 'writeback';
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .option('-b, --base <file>', 'the ancestor to commit into (default: the backing file); the layers between are committed too')
      .option('-d, --keep', 'do not empty the image afterwards')
      .addOption(
        new Option('-t, --cache <mode>', 'cache mode of the images written: writeback (sync as the crash-safe order needs) or unsafe (no syncs: a crash may break the chain)')
          .choices(['unsafe', 'writeback'] satisfies CommitOptions['cache'][])
          .default('writeback'),
      )
      .option('-p, --progress', 'show a progress bar')
      .option('-q, --quiet', 'print nothing')
      .argument('<image>'),
  );
}

export async function run({ print }: CommandContext, [image]: [string], o: CommitOptions): Promise<void> {
  const { commitImage } = await import('../../ops/commit.js');
  const r = await withProgress(Boolean(o.progress), (onProgress) =>
    commitImage({ path: image, base: o.base, keepTop: Boolean(o.keep), cache: o.cache, openOptions: openOptions(o, o.format), onProgress }),
  );
  if (o.quiet) return;
  for (const n of r.notes) print(`Note: ${n}`);
  for (const p of r.invalidated) print(`Warning: ${p} now shows different content (its backing changed under it); it is no longer a valid disk`);
  if (r.relinked) print(`The image now uses ${r.base} as its backing file.`);
  print(r.emptied ? 'Image committed.' : 'Image committed (the image keeps its data).');
}
