import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

/*
 * The rule of docs/architecture: file-system access lives in src/io/ only.
 * No module outside it may import node:fs or node:path (static or dynamic
 * import); a CLI command that needs a folder or a file asks an io module.
 */
const SRC = join(fileURLToPath(import.meta.url), '..', '..', '..', 'src');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

test('no module outside src/io/ imports node:fs or node:path', () => {
  const files = sources(SRC);
  assert.ok(files.length > 50, `found only ${files.length} sources under ${SRC}`);
  const offenders = files
    .filter((f) => !relative(SRC, f).startsWith(`io${'/'}`))
    .filter((f) => /(?:from\s+|import\s*\(\s*)['"](?:node:)?(?:fs|fs\/promises|path)['"]/.test(readFileSync(f, 'utf8')))
    .map((f) => relative(SRC, f));
  assert.deepEqual(offenders, []);
});
