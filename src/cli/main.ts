import { Command, CommanderError } from 'commander';
import { isBlockError } from '../core/errors.js';
import { COMMANDS, type CommandEntry } from './commands.js';
import type { CommandContext, Print } from './options.js';
import { packageVersion } from './version.js';

// The runner: the commands themselves are rows of the table in commands.ts.
// Each handler loads what it needs when it runs (dynamic imports), so
// start-up pays only for the command line itself: a short convert should not
// wait for the NBD server or the chain operations to load.

/** What a parse ran: the command the parser chose, and the status its handler resolved to. */
interface Outcome {
  ran?: CommandEntry;
  status: number;
}

/**
 * The program with every command, or (given `only`) with that one alone:
 * start-up then pays for one command's definition, not all of them (~1 ms
 * less before a convert starts). A run records in `outcome` which command
 * the parser chose (before its handler starts) and the status it ends with.
 */
function buildProgram(ctx: CommandContext, only: CommandEntry | undefined, outcome: Outcome): Command {
  const program = new Command('vdisk')
    .description('virtual disk images (VHD, VHDX, add-cow, raw) with copy-on-write chains')
    .version(packageVersion(), '-V, --version', 'print the version')
    .option('--verbose', 'print the cause chain of errors')
    .showHelpAfterError()
    .configureOutput({ outputError: (str, write) => write(`vdisk: ${str.replace(/^error: /, '')}`) })
    .exitOverride();

  for (const entry of only ? [only] : COMMANDS) {
    const cmd = program.command(entry.name).description(entry.description);
    entry.define(cmd);
    cmd.action(async () => {
      outcome.ran = entry;
      // The declared arguments (as commander hands them to an action) and the parsed options.
      const args = cmd.processedArgs.slice(0, cmd.registeredArguments.length) as (string | undefined)[];
      outcome.status = (await entry.run(ctx, args, cmd.opts())) ?? 0;
    });
  }
  return program;
}

/** Run the CLI; returns the exit code. Errors become one line `vdisk: <what> (<path>)`. */
export async function main(argv: string[], print: Print = (s) => console.log(s)): Promise<number> {
  // The command named on the line (global options come first and take no
  // values); anything else — help, a typo — gets the whole program.
  const first = argv.find((a) => !a.startsWith('-'));
  const outcome: Outcome = { status: 0 };
  const ctx: CommandContext = { print, run: (args) => main(args, print) };
  const program = buildProgram(ctx, COMMANDS.find((c) => c.name === first), outcome);
  const verbose = argv.includes('--verbose');
  try {
    await program.parseAsync(argv, { from: 'user' });
    return outcome.status;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (isBlockError(e)) {
      // A wrong checksum (kind 'checksum', from any format) can be overridden: name the option that does it.
      const hint = isBlockError(e, 'checksum') ? '; --ignore-checksums opens it anyway (info then lists what was wrong)' : '';
      console.error(`vdisk: ${e.oneLine()}${hint}`);
      if (verbose) printCauses(e);
    } else {
      console.error(`vdisk: internal error: ${(e as Error)?.stack ?? String(e)}`);
    }
    // The exit policy of the command that ran (compare: 2, so that an error
    // is not taken for "different"); 1 if none got as far as running.
    return outcome.ran?.exit.error ?? 1;
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
