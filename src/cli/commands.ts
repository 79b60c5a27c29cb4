import type { Command } from 'commander';
import type { CommandContext } from './options.js';
import * as amend from './commands/amend.js';
import * as check from './commands/check.js';
import * as commit from './commands/commit.js';
import * as compact from './commands/compact.js';
import * as compare from './commands/compare.js';
import * as convert from './commands/convert.js';
import * as create from './commands/create.js';
import * as demo from './commands/demo.js';
import * as info from './commands/info.js';
import * as io from './commands/io.js';
import * as map from './commands/map.js';
import * as measure from './commands/measure.js';
import * as rebase from './commands/rebase.js';
import * as resize from './commands/resize.js';
import * as serve from './commands/serve.js';

/*
 * Every command vdisk has, as plain data (architecture rule 8), in the
 * manner of qemu-img.c's img_cmds[]: adding a command is one module in
 * commands/ and one row here. Each module gives `define` (its arguments and
 * options, in commander's terms) and `run` (the handler, which imports what
 * it needs only when it runs: start-up pays for the command line alone).
 */

/** Positional arguments as commander hands them over (an absent optional one is undefined). */
export type CommandArgs = readonly (string | undefined)[];

/**
 * A command's exit status. `run` resolves to the status it ends with (compare:
 * 1 when the images differ; check: its verdict), or nothing for 0; `error` is
 * the status when it fails with an error. Usage errors (unknown option, missing
 * argument) exit 2 for every command: the parser finds them before any handler runs.
 */
export interface ExitPolicy {
  error: number;
}

/** One command, typed by its own arguments and options (an interface in its module). */
export interface CommandSpec<A extends CommandArgs, O> {
  name: string;
  description: string;
  define(cmd: Command): void;
  run(ctx: CommandContext, args: A, opts: O): Promise<number | void>;
  exit: ExitPolicy;
}

/** A row of the table: a CommandSpec whose argument and option types its module keeps. */
export interface CommandEntry {
  readonly name: string;
  readonly description: string;
  readonly define: (cmd: Command) => void;
  /** `opts` is what commander parsed for the options `define` declared. */
  readonly run: (ctx: CommandContext, args: CommandArgs, opts: object) => Promise<number | void>;
  readonly exit: ExitPolicy;
}

function command<A extends CommandArgs, O extends object>(spec: CommandSpec<A, O>): CommandEntry {
  // The one place where commander's untyped values meet the command's types:
  // `define` declares the arguments and options that the module's A and O
  // describe, side by side in the same module.
  return { ...spec, run: (ctx, args, opts) => spec.run(ctx, args as A, opts as O) };
}

/** Errors exit 1 (qemu-img's convention). */
const ERROR_1: ExitPolicy = { error: 1 };

export const COMMANDS: readonly CommandEntry[] = [
  command({ name: 'info', description: 'show facts about an image (and with --backing-chain, each layer)', define: info.define, run: info.run, exit: ERROR_1 }),
  command({ name: 'create', description: 'create an image (with -b, a child of BACKING)', define: create.define, run: create.run, exit: ERROR_1 }),
  command({ name: 'convert', description: 'copy a disk (flattening its chain) into a new image of any format', define: convert.define, run: convert.run, exit: ERROR_1 }),
  // Like qemu-img compare: 0 same, 1 different, 2 error (so "different" and "could not compare" stay apart).
  command({ name: 'compare', description: 'compare the content of two disks: exit 0 same, 1 different, 2 error', define: compare.define, run: compare.run, exit: { error: 2 } }),
  command({ name: 'map', description: 'show which layer holds each extent of the disk', define: map.define, run: map.run, exit: ERROR_1 }),
  command({ name: 'io', description: 'scripted I/O: -c "read|write [-P PATTERN] [-z] OFF LEN", -c flush, -c "discard OFF LEN"', define: io.define, run: io.run, exit: ERROR_1 }),
  command({ name: 'demo', description: 'make a small chain in a temporary folder, write to it, and show info, map, convert and compare', define: demo.define, run: demo.run, exit: ERROR_1 }),
  // Like qemu-img check: run resolves to the verdict (ops/check.ts CHECK_EXIT); a check that cannot run at all is 1.
  command({ name: 'check', description: 'check an image for structural problems: exit 0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 no check for this format', define: check.define, run: check.run, exit: ERROR_1 }),
  command({ name: 'commit', description: "write the image's data into its backing file (or the ancestor BASE), then empty the image unless -d", define: commit.define, run: commit.run, exit: ERROR_1 }),
  command({ name: 'compact', description: 'give back the file space of blocks a dynamic or differencing VHD/VHDX no longer needs (zero, trim), shrinking the file in place; add-cow: holes punched in its image file', define: compact.define, run: compact.run, exit: ERROR_1 }),
  command({ name: 'rebase', description: 'change the backing file of an image (-b "" removes it); safe mode keeps the content by copying differences first', define: rebase.define, run: rebase.run, exit: ERROR_1 }),
  // vdisk cannot see an image's children (nothing in a parent names them): the help says what that means for a parent.
  command({
    name: 'resize',
    description:
      "change the virtual size: SIZE, +SIZE or -SIZE (k, M, G, T suffixes); shrinking needs --shrink. vdisk cannot see an image's children: grow a VHD parent alone and its children stop opening (resize --chain CHILD SIZE grows a child and its whole chain, base first)",
    define: resize.define,
    run: resize.run,
    exit: ERROR_1,
  }),
  command({ name: 'amend', description: 'change an image in place: -o reset-identity=on gives it new identifiers (VHD UUID; VHDX DataWriteGuid and disk id)', define: amend.define, run: amend.run, exit: ERROR_1 }),
  command({ name: 'measure', description: 'how big an image of format FMT would be: for SRC converted, or a new disk of --size N', define: measure.define, run: measure.run, exit: ERROR_1 }),
  command({ name: 'serve', description: 'export an image (and its backing chain) to NBD clients', define: serve.define, run: serve.run, exit: ERROR_1 }),
];
