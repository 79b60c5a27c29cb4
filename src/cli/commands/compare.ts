import type { Command } from 'commander';
import { applyRemoteOptions, collect, withRemoteOptions, type CommandContext, type RemoteFlags } from '../options.js';

interface CompareOptions extends RemoteFlags {
  format?: string;
  secondFormat?: string;
  strict?: boolean;
  quiet?: boolean;
  ignoreChecksums?: boolean;
  forceShare?: boolean;
  allowPath?: string[];
  backingAs?: string[];
}

export function define(cmd: Command): void {
  withRemoteOptions(cmd)
    .option('-f, --format <fmt>', 'format of the first image')
    .option('-F, --second-format <fmt>', 'format of the second image')
    .option('-s, --strict', 'images of different sizes differ')
    .option('-q, --quiet', 'print nothing')
    .option('--ignore-checksums', 'open images whose checksums are wrong')
    .option('-U, --force-share', 'open even while another process writes an image (its changes may show half-done)')
    .option('--allow-path <dir>', 'let names recorded in images lead into DIR too (repeatable; docs/security.md)', collect)
    .option('--backing-as <fmt>', 'format of a backing file its image does not record (add-cow), for both images; needed for raw; repeatable', collect)
    .argument('<a>')
    .argument('<b>');
}

/** 0 when the disks have the same content, 1 when they differ. */
export async function run({ print }: CommandContext, [a, b]: [string, string], o: CompareOptions): Promise<number> {
  applyRemoteOptions(o);
  const { compareImages } = await import('../../ops/compare.js');
  const shared = { ignoreChecksums: o.ignoreChecksums, forceShare: o.forceShare, allowPaths: o.allowPath ?? [], backingFormats: o.backingAs ?? [] };
  const r = await compareImages(a, b, {
    a: { ...shared, format: o.format },
    b: { ...shared, format: o.secondFormat },
    strict: o.strict,
  });
  if (!o.quiet) {
    if (r.sizeA !== r.sizeB) print('Warning: Image size mismatch!');
    print(r.message);
  }
  return r.identical ? 0 : 1;
}
