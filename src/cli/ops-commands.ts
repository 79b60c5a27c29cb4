import { Option, type Command } from 'commander';
import { BlockError } from '../core/errors.js';
import { parseSize } from '../core/size.js';
import { parseOptions } from '../ops/options.js';
import type { CommandEntry, RegisterCommand } from './commands.js';
import { Exit, collect, openOptions, outputOption, withOpenOptions, withProgress } from './options.js';

/*
 * The whole-image chain operations (issue 6): check, commit, rebase, resize,
 * measure. Thin: parse, call ops/, print. Options and words follow qemu-img.
 */

const registerCheck: RegisterCommand = (program, print) => {
  withOpenOptions(
    program
      .command('check')
      .description('check an image for structural problems: exit 0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 no check for this format')
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .addOption(new Option('-r, --repair <what>', 'repair what is safe to repair').choices(['leaks', 'all']))
      .addOption(outputOption())
      .option('--backing-chain', 'check every layer of the backing chain, not only IMAGE')
      .option('-q, --quiet', 'print nothing (the exit status tells)')
      .argument('<image>'),
  ).action(async (image: string, o) => {
    const { checkImage, checkExitCode, humanCheck, CHECK_EXIT } = await import('../ops/check.js');
    const reports = await checkImage({ path: image, openOptions: openOptions(o, o.format), repair: o.repair, backingChain: Boolean(o.backingChain) });
    if (!o.quiet) {
      if (o.output === 'json') print(JSON.stringify(o.backingChain ? reports : reports[0], null, 4));
      else print(reports.map((r) => (reports.length > 1 ? `${r.filename}:\n` : '') + humanCheck(r)).join('\n\n'));
    }
    const code = checkExitCode(reports);
    if (code !== CHECK_EXIT.clean) throw new Exit(code);
  });
};

const registerCommit: RegisterCommand = (program, print) => {
  withOpenOptions(
    program
      .command('commit')
      .description("write the image's data into its backing file (or the ancestor BASE), then empty the image unless -d")
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .option('-b, --base <file>', 'the ancestor to commit into (default: the backing file); the layers between are committed too')
      .option('-d, --keep', 'do not empty the image afterwards')
      .option('-p, --progress', 'show a progress bar')
      .option('-q, --quiet', 'print nothing')
      .argument('<image>'),
  ).action(async (image: string, o) => {
    const { commitImage } = await import('../ops/commit.js');
    const r = await withProgress(Boolean(o.progress), (onProgress) =>
      commitImage({ path: image, base: o.base, keepTop: Boolean(o.keep), openOptions: openOptions(o, o.format), onProgress }),
    );
    if (o.quiet) return;
    for (const n of r.notes) print(`Note: ${n}`);
    for (const p of r.invalidated) print(`Warning: ${p} now shows different content (its backing changed under it); it is no longer a valid disk`);
    if (r.relinked) print(`The image now uses ${r.base} as its backing file.`);
    print(r.emptied ? 'Image committed.' : 'Image committed (the image keeps its data).');
  });
};

const registerRebase: RegisterCommand = (program, print) => {
  withOpenOptions(
    program
      .command('rebase')
      .description('change the backing file of an image (-b "" removes it); safe mode keeps the content by copying differences first')
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .requiredOption('-b, --backing <file>', 'the new backing file ("" for none; relative names are relative to IMAGE)')
      .option('-F, --backing-format <fmt>', 'format of the new backing file')
      .option('-u, --unsafe', 'only rewrite the reference; copy nothing (the content may change)')
      .option('-p, --progress', 'show a progress bar')
      .option('-q, --quiet', 'print nothing')
      .argument('<image>'),
  ).action(async (image: string, o) => {
    const { rebaseImage } = await import('../ops/rebase.js');
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
  });
};

const registerResize: RegisterCommand = (program, print) => {
  withOpenOptions(
    program
      .command('resize')
      .description('change the virtual size: SIZE, +SIZE or -SIZE (k, M, G, T suffixes); shrinking needs --shrink')
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .option('--shrink', 'allow the disk to get smaller (data past the new end is lost)')
      .option('-q, --quiet', 'print nothing')
      // A negative size looks like an option: take it as an argument (like qemu-img).
      .allowUnknownOption()
      .argument('<image>')
      .argument('<size>', '[+|-]SIZE'),
  ).action(async (image: string, sizeText: string, o) => {
    const m = /^([+-]?)(.*)$/.exec(sizeText)!;
    const n = parseSize(m[2], 'size');
    const size = m[1] === '' ? n : { delta: m[1] === '+' ? n : -n };
    const { resizeImage } = await import('../ops/resize.js');
    const r = await resizeImage({ path: image, size, shrink: Boolean(o.shrink), openOptions: openOptions(o, o.format) });
    if (!o.quiet) print(r.newSize === r.oldSize ? `Image already has ${r.newSize} bytes.` : `Image resized from ${r.oldSize} to ${r.newSize} bytes.`);
  });
};

const registerMeasure: RegisterCommand = (program, print) => {
  withOpenOptions(
    program
      .command('measure')
      .description('how big an image of format FMT would be: for SRC converted, or a new disk of --size N')
      .requiredOption('-O, --output-format <fmt>', 'format to measure for')
      .option('-o, --options <k=v,...>', 'creation options (repeatable)', collect)
      .option('-f, --format <fmt>', 'format of SRC (default: probe)')
      .option('--size <size>', 'measure a new empty disk of this size')
      .addOption(outputOption())
      .argument('[source]'),
  ).action(async (source: string | undefined, o) => {
    if ((source === undefined) === (o.size === undefined)) throw new BlockError('invalid-argument', 'give either SRC or --size N');
    const { measureImage } = await import('../ops/measure.js');
    const r = await measureImage({
      format: o.outputFormat,
      options: parseOptions(o.options),
      source,
      sourceOptions: openOptions(o, o.format),
      size: o.size === undefined ? undefined : parseSize(o.size),
    });
    if (o.output === 'json') print(JSON.stringify({ required: r.required, 'fully-allocated': r['fully-allocated'] }, null, 4));
    else print(`required size: ${r.required}\nfully allocated size: ${r['fully-allocated']}`);
  });
};

export const opsCommands: CommandEntry[] = [
  { name: 'check', register: registerCheck },
  { name: 'commit', register: registerCommit },
  { name: 'rebase', register: registerRebase },
  { name: 'resize', register: registerResize },
  { name: 'measure', register: registerMeasure },
];
