import { BlockError } from '../core/errors.js';

/** Parse `a=1,b=2` (a doubled comma stands for a literal comma, as in qemu-img). */
export function parseOptions(text: string | string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  const parts = Array.isArray(text) ? text : text ? [text] : [];
  for (const t of parts) {
    for (const item of t.replace(/,,/g, '\u0000').split(',')) {
      if (!item) continue;
      const eq = item.indexOf('=');
      const key = (eq < 0 ? item : item.slice(0, eq)).trim();
      const value = (eq < 0 ? 'on' : item.slice(eq + 1)).replace(/\u0000/g, ',');
      if (!key) throw new BlockError('invalid-argument', `malformed option '${item}'`);
      out[key] = value;
    }
  }
  return out;
}
