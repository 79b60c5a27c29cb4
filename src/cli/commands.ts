import type { Command } from 'commander';
import { opsCommands } from './ops-commands.js';
import { registerServe } from './serve.js';

/**
 * Commands contributed by other modules (serve, check, commit, ...): each
 * entry adds itself to the program. Kept as a plain list (architecture rule 8).
 */
export type RegisterCommand = (program: Command, print: (s: string) => void) => void;

/** A command by name, so that a run can define only the command it runs. */
export interface CommandEntry {
  name: string;
  register: RegisterCommand;
}

export const extraCommands: CommandEntry[] = [
  ...opsCommands,
  { name: 'serve', register: registerServe },
];
