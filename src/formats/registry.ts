import { BlockError } from '../core/errors.js';
import type { Format, ProbeInput } from './types.js';
import { rawFormat } from './raw/index.js';
import { vhdxFormat } from './vhdx/index.js';
import { vhdFormat } from './vhd/index.js';
import { addCowFormat } from './add-cow/index.js';

/**
 * Every format vdisk knows, as plain data (architecture rule 8). Adding a
 * format = a folder under formats/ and one line here
 * (docs/adding-a-format.md). Order matters only for ties in probing; raw is
 * last and probes lowest. Nothing under formats/ imports this module: a
 * format that must recognise another file is handed a probe by its caller
 * (CreateContext.probe).
 */
export const FORMATS: readonly Format[] = [
  vhdFormat,
  addCowFormat,
  vhdxFormat,
  rawFormat,
];

export function findFormat(name: string, formats: readonly Format[] = FORMATS): Format {
  const n = name.toLowerCase();
  const f = formats.find((x) => x.name === n || x.aliases.includes(n));
  if (!f) {
    throw new BlockError('invalid-argument', `unknown format '${name}' (known: ${formats.map((x) => x.name).join(', ')})`);
  }
  return f;
}

/** The format with the highest probe score (raw, at 1, when nothing else claims the file). */
export function probeFormat(input: ProbeInput, formats: readonly Format[] = FORMATS): Format {
  let best = rawFormat;
  let score = 0;
  for (const f of formats) {
    const s = f.probe(input);
    if (s > score) {
      best = f;
      score = s;
    }
  }
  return best;
}
