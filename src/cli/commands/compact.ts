import { Option, type Command } from 'commander';
import { escapeJson } from '../../core/escape.js';
import { formatSize } from '../../core/size.js';
import { collect, openOptions, outputOption, withOpenOptions, withProgress, type CommandContext, type OpenFlags, type OutputFormat } from '../options.js';

interface CompactOptions extends OpenFlags {
  format?: string;
  mode?: string[];
  dryRun?: boolean;
  progress?: boolean;
  output: OutputFormat;
  quiet?: boolean;
  cache: 'unsafe' | 'writeback';
}

export function define(cmd: Command): void {
  withOpenOptions(
    cmd
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .option('--mode <modes>', 'what to release: zero (all-zero blocks; in a differencing layer, zero sector runs over zeros in the parent), trim (blocks already discarded), fs (blocks in space the guest\'s ext2/3/4 or NTFS file systems do not use: free space may then read as zeros); repeatable or comma-separated (default: zero,trim)', collect)
      .option('--dry-run', 'report what would be released and the size the file would reach; write nothing')
      .addOption(
        new Option('-t, --cache <mode>', 'writeback (sync as the crash-safe order needs: a power loss leaves the old or the new disk) or unsafe (no syncs, as qemu-img convert: a killed process is still safe, a power loss may not be)')
          .choices(['unsafe', 'writeback'] satisfies CompactOptions['cache'][])
          .default('writeback'),
      )
      .option('-p, --progress', 'show a progress bar')
      .addOption(outputOption())
      .option('-q, --quiet', 'print nothing')
      .argument('<image>'),
  );
}

export async function run({ print }: CommandContext, [image]: [string], o: CompactOptions): Promise<void> {
  const { compactImage, parseModes } = await import('../../ops/compact.js');
  const modes = parseModes(o.mode);
  const r = await withProgress(Boolean(o.progress), (onProgress) =>
    compactImage({ path: image, modes, dryRun: Boolean(o.dryRun), cache: o.cache, openOptions: openOptions(o, o.format), onProgress }),
  );
  if (o.quiet) return;
  if (o.output === 'json') {
    print(
      escapeJson(
        JSON.stringify(
          {
            filename: r.path,
            format: r.format,
            modes: r.modes,
            'dry-run': r.dryRun,
            'block-size': r.blockSize,
            'blocks-released': r.released,
            'blocks-moved': r.moved,
            'zero-run-bytes': r.zeroRunBytes,
            'bytes-before': r.bytesBefore,
            'bytes-after': r.bytesAfter,
            seconds: Number(r.seconds.toFixed(3)),
            ...(r.nothingToCompact ? { 'nothing-to-compact': r.nothingToCompact } : {}),
            notes: r.notes,
          },
          null,
          4,
        ),
      ),
    );
    return;
  }
  for (const n of r.notes) print(`Note: ${n}`);
  if (r.nothingToCompact) {
    print(`Nothing to compact: ${r.nothingToCompact.replace(/: nothing to compact$/, '')}.`);
    return;
  }
  const total = Object.values(r.released).reduce((a, b) => a + b, 0);
  const perMode = r.modes.map((m) => `${m}: ${r.released[m]}`).join(', ');
  const sizes = `${formatSize(r.bytesBefore)} (${r.bytesBefore} bytes) -> ${formatSize(r.bytesAfter)} (${r.bytesAfter} bytes)`;
  if (r.format === 'add-cow') {
    // No blocks move: holes are punched in the image file, whose allocated bytes are the sizes (ops/compact-holes.ts).
    const held = `${formatSize(r.bytesBefore)} (${r.bytesBefore} bytes) -> ${formatSize(r.bytesAfter)} (${r.bytesAfter} bytes)`;
    if (r.dryRun) print(`Would punch ${total} 4 KiB granule(s) (${perMode}) in the image file; the space it holds would go from ${held}.`);
    else print(`Punched ${total} 4 KiB granule(s) (${perMode}) in the image file; the space it holds went from ${held} in ${r.seconds.toFixed(2)} s.`);
    return;
  }
  if (r.dryRun) print(`Would release ${total} block(s) (${perMode}) and move ${r.moved}; the file would go from ${sizes}.`);
  else print(`Released ${total} block(s) (${perMode}) and moved ${r.moved}; the file went from ${sizes} in ${r.seconds.toFixed(2)} s.`);
  if (r.zeroRunBytes) {
    // Sector runs of blocks that stay: no file space by themselves, but the disk no longer needs this layer there.
    print(`${r.dryRun ? 'Would hand' : 'Handed'} ${formatSize(r.zeroRunBytes)} (${r.zeroRunBytes} bytes) of zero sectors over zeros in the parent back to the parent (their bitmap bits cleared).`);
  }
}
