import { Command, CommanderError, Option } from 'commander';
import { BlockError, isBlockError } from '../core/errors.js';
import { parseSize, formatSize } from '../core/size.js';
import type { MapEntry } from '../ops/map.js';
import { parseOptions } from '../ops/options.js';
import { progressBar } from './progress.js';
import { extraCommands, type CommandEntry, type RegisterCommand } from './commands.js';
import { Exit, collect, openOptions, outputOption, withOpenOptions } from './options.js';
import { packageVersion } from './version.js';

// Each command loads what it needs when it runs (dynamic imports below), so
// start-up pays only for the command line itself: a short convert should not
// wait for the NBD server or the chain operations to load.

const registerInfo: RegisterCommand = (program, print) => {
  withOpenOptions(
    program
      .command('info')
      .description('show facts about an image (and with --backing-chain, each layer)')
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .addOption(outputOption())
      .option('--backing-chain', 'show every layer of the backing chain')
      .argument('<image>'),
  ).action(async (image: string, o) => {
    const { imageInfo } = await import('../ops/info.js');
    const { humanInfo } = await import('./output.js');
    const infos = await imageInfo(image, { ...openOptions(o, o.format), backingChain: Boolean(o.backingChain) });
    if (o.output === 'json') print(JSON.stringify(o.backingChain ? infos : infos[0], null, 4));
    else print(infos.map(humanInfo).join('\n\n'));
  });
};

const registerCreate: RegisterCommand = (program, print) => {
  program
    .command('create')
    .description('create an image (with -b, a child of BACKING)')
    .requiredOption('-f, --format <fmt>', 'format of the new image')
    .option('-o, --options <k=v,...>', 'format options (repeatable)', collect)
    .option('-b, --backing <file>', 'backing file (relative names are relative to IMAGE)')
    .option('-F, --backing-format <fmt>', 'format of the backing file')
    .option('-q, --quiet', 'print nothing')
    .argument('<image>')
    .argument('[size]', 'virtual size (k, M, G, T suffixes); default: the backing file size')
    .action(async (image: string, size: string | undefined, o) => {
      const { createImage } = await import('../ops/create.js');
      const r = await createImage({
        path: image,
        format: o.format,
        size: size === undefined ? undefined : parseSize(size),
        options: parseOptions(o.options),
        backing: o.backing !== undefined ? { path: o.backing, format: o.backingFormat } : undefined,
      });
      if (!o.quiet) {
        const rounded = r.size !== r.requestedSize ? ` (requested ${r.requestedSize}, rounded by the format)` : '';
        print(`Formatting '${image}', fmt=${r.format} size=${r.size}${rounded}${o.backing ? ` backing_file=${o.backing}` : ''}`);
      }
    });
};

const registerConvert: RegisterCommand = (program, print) => {
  withOpenOptions(
    program
      .command('convert')
      .description('copy a disk (flattening its chain) into a new image of any format')
      .option('-f, --format <fmt>', 'source format (default: probe)')
      .requiredOption('-O, --output-format <fmt>', 'target format')
      .option('-o, --options <k=v,...>', 'target format options (repeatable)', collect)
      .option('-B, --backing <file>', 'make the target a child of this file holding only what differs')
      .option('-F, --backing-format <fmt>', 'format of the -B file')
      .option('-S, --sparse-size <size>', 'skip zero runs of at least this size (0: write everything)', '4k')
      .option('-n, --no-create', 'write into an existing target')
      .option('-p, --progress', 'show a progress bar')
      .addOption(new Option('-t, --cache <mode>', 'target cache: unsafe (no syncs, as qemu-img convert) or writeback (sync as the format orders writes)').choices(['unsafe', 'writeback']).default('unsafe'))
      .argument('<source>')
      .argument('<target>'),
  ).action(async (source: string, target: string, o) => {
    const { convert } = await import('../ops/convert.js');
    const bar = o.progress ? progressBar() : undefined;
    try {
      await convert({
        source,
        sourceOptions: openOptions(o, o.format),
        target,
        targetFormat: o.outputFormat,
        options: parseOptions(o.options),
        backing: o.backing !== undefined ? { path: o.backing, format: o.backingFormat } : undefined,
        sparseSize: parseSize(o.sparseSize, 'sparse size'),
        existing: o.create === false,
        cache: o.cache,
        onProgress: bar?.update,
      });
    } finally {
      bar?.stop();
    }
  });
};

const registerCompare: RegisterCommand = (program, print) => {
  program
    .command('compare')
    .description('compare the content of two disks: exit 0 same, 1 different, 2 error')
    .option('-f, --format <fmt>', 'format of the first image')
    .option('-F, --second-format <fmt>', 'format of the second image')
    .option('-s, --strict', 'images of different sizes differ')
    .option('-q, --quiet', 'print nothing')
    .option('--ignore-checksums', 'open images whose checksums are wrong')
    .argument('<a>')
    .argument('<b>')
    .action(async (a: string, b: string, o) => {
      const { compareImages } = await import('../ops/compare.js');
      const r = await compareImages(a, b, {
        a: { format: o.format, ignoreChecksums: o.ignoreChecksums },
        b: { format: o.secondFormat, ignoreChecksums: o.ignoreChecksums },
        strict: o.strict,
      });
      if (!o.quiet) {
        if (r.sizeA !== r.sizeB) print('Warning: Image size mismatch!');
        print(r.message);
      }
      if (!r.identical) throw new Exit(1);
    });
};

const registerMap: RegisterCommand = (program, print) => {
  withOpenOptions(
    program
      .command('map')
      .description('show which layer holds each extent of the disk')
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .addOption(outputOption())
      .argument('<image>'),
  ).action(async (image: string, o) => {
    const { openChain } = await import('../chain/open.js');
    const { mapChain } = await import('../ops/map.js');
    const { humanMap, jsonMap } = await import('./output.js');
    const chain = await openChain(image, { ...openOptions(o, o.format), readOnly: true });
    try {
      const entries: MapEntry[] = [];
      for await (const e of mapChain(chain)) entries.push(e);
      print(o.output === 'json' ? jsonMap(entries) : humanMap(entries));
    } finally {
      await chain.close();
    }
  });
};

const registerIo: RegisterCommand = (program, print) => {
  withOpenOptions(
    program
      .command('io')
      .description('scripted I/O: -c "read|write [-P PATTERN] [-z] OFF LEN", -c flush, -c "discard OFF LEN"')
      .option('-f, --format <fmt>', 'image format (default: probe)')
      .option('-c, --cmd <command>', 'a command (repeatable, run in order)', collect)
      .option('-r, --read-only', 'open read-only')
      .argument('<image>'),
  ).action(async (image: string, o) => {
    const cmds: string[] = o.cmd ?? [];
    if (cmds.length === 0) throw new BlockError('invalid-argument', 'no command given (use -c "read 0 512")');
    const readOnly = Boolean(o.readOnly) || cmds.every((c) => /^\s*read\b/.test(c));
    const { openChain } = await import('../chain/open.js');
    const { runIoCommand } = await import('../ops/io.js');
    const chain = await openChain(image, { ...openOptions(o, o.format), readOnly });
    try {
      for (const c of cmds) print(await runIoCommand(chain, c));
      if (!readOnly) await chain.flush();
    } finally {
      await chain.close();
    }
  });
};

const registerDemo: RegisterCommand = (program, print) => {
  program
    .command('demo')
    .description('make a small chain in a temporary folder, write to it, and show info, map, convert and compare')
    .option('--keep', 'keep the temporary folder')
    .action(async (o) => {
      await (await import('./demo.js')).runDemo(print, Boolean(o.keep));
    });
};

const COMMANDS: CommandEntry[] = [
  { name: 'info', register: registerInfo },
  { name: 'create', register: registerCreate },
  { name: 'convert', register: registerConvert },
  { name: 'compare', register: registerCompare },
  { name: 'map', register: registerMap },
  { name: 'io', register: registerIo },
  { name: 'demo', register: registerDemo },
  ...extraCommands,
];

/**
 * The program with every command, or (given `only`, a command's name) with
 * that one alone: start-up then pays for one command's definition, not all
 * of them (~1 ms less before a convert starts).
 */
export function buildProgram(print: (s: string) => void, only?: string): Command {
  const program = new Command('vdisk')
    .description('virtual disk images (VHD, VHDX, add-cow, raw) with copy-on-write chains')
    .version(packageVersion(), '-V, --version', 'print the version')
    .option('--verbose', 'print the cause chain of errors')
    .showHelpAfterError()
    .configureOutput({ outputError: (str, write) => write(`vdisk: ${str.replace(/^error: /, '')}`) })
    .exitOverride();

  for (const c of COMMANDS) if (only === undefined || c.name === only) c.register(program, print);
  return program;
}

/** Run the CLI; returns the exit code. Errors become one line `vdisk: <what> (<path>)`. */
export async function main(argv: string[], print: (s: string) => void = (s) => console.log(s)): Promise<number> {
  // The command named on the line (global options come first and take no
  // values); anything else — help, a typo — gets the whole program.
  const first = argv.find((a) => !a.startsWith('-'));
  const program = buildProgram(print, COMMANDS.some((c) => c.name === first) ? first : undefined);
  const verbose = argv.includes('--verbose');
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof Exit) return e.code;
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    const isCompare = argv.includes('compare');
    if (isBlockError(e)) {
      console.error(`vdisk: ${e.oneLine()}`);
      if (verbose) printCauses(e);
    } else {
      console.error(`vdisk: internal error: ${(e as Error)?.stack ?? String(e)}`);
    }
    return isCompare ? 2 : 1;
  }
}

function printCauses(e: unknown): void {
  let c: unknown = e;
  let depth = 0;
  while (c && depth < 8) {
    const err = c as Error & { kind?: string; context?: unknown };
    console.error(`  ${depth === 0 ? 'error' : 'caused by'}: ${err.kind ? `[${err.kind}] ` : ''}${err.message}${err.context ? ` ${JSON.stringify(err.context)}` : ''}`);
    c = err.cause;
    depth++;
  }
  if (e instanceof Error && e.stack) console.error(e.stack);
}

export { formatSize };
