import { CommanderError } from 'commander';
import { parseOptions } from '../ops/options.js';
import type { CreateOption } from '../formats/types.js';
import type { Print } from './options.js';

/*
 * `-o help` (or `-o ?`) on create and convert, the qemu-img habit: list the
 * creation options of a format — name, kind of value, meaning, default —
 * from the format's own table (createOptions), so the list cannot drift
 * from what create accepts.
 */

/** The -o values ask for the option list. */
export function wantsOptionHelp(options: string[] | undefined): boolean {
  if (!options?.length) return false;
  const keys = Object.keys(parseOptions(options));
  return keys.includes('help') || keys.includes('?');
}

export async function printCreateOptions(formatName: string, print: Print): Promise<void> {
  const { findFormat } = await import('../formats/registry.js');
  const format = findFormat(formatName);
  if (format.createOptions.length === 0) {
    print(`Format ${format.name} has no creation options.`);
    return;
  }
  const extra = [
    { left: 'backing_file=<str>', right: 'the backing file, as -b' },
    { left: 'backing_fmt=<str>', right: 'its format, as -F' },
  ];
  printOptionTable(`Supported options for ${format.name} (-o NAME=VALUE,...):`, format.createOptions, print, extra);
}

/** A table of options: name=value, meaning, default. */
export function printOptionTable(title: string, specs: readonly CreateOption[], print: Print, extra: { left: string; right: string }[] = []): void {
  const rows = specs.map((o) => {
    const value = o.type === 'enum' && o.values ? o.values.join('|') : o.type === 'bool' ? 'on|off' : `<${o.type === 'string' ? 'str' : o.type}>`;
    return { left: `${o.name}=${value}`, right: `${o.description}${o.default !== undefined ? ` [default: ${o.default}]` : ''}` };
  });
  rows.push(...extra);
  const width = Math.max(...rows.map((r) => r.left.length));
  print(title);
  for (const r of rows) print(`  ${r.left.padEnd(width)}  - ${r.right}`);
}

/** A missing argument found by the handler (arguments optional for `-o help`): a usage error, exit 2, as commander's own. */
export function missingArgument(name: string): never {
  console.error(`vdisk: missing required argument '${name}'`);
  throw new CommanderError(2, 'commander.missingArgument', `missing required argument '${name}'`);
}
