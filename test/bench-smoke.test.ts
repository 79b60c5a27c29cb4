import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/corpus.js';
import { requireTool, tempDir } from './helpers/oracle.js';

/**
 * The bench is never run by `npm test`; this only proves that its script
 * starts and that every case runs once on tiny inputs (or says, in words,
 * why it cannot yet). No timing is asserted.
 *
 * `--no-install`: `npm test` installs nothing. The bench itself installs its
 * peer vhd-lib into bench/.peers from the registry; here that peer runs only
 * if a bench run already put it there, and is otherwise skipped (the bench
 * marks its tools unavailable, with the reason).
 */

interface ToolResult {
  name: string;
  unavailable?: string;
  error?: string;
  seconds: number[];
}
interface CaseResult {
  id: string;
  unavailable?: string;
  tools: ToolResult[];
}

test('bench --smoke runs every case once on tiny inputs', { timeout: 180_000 }, async (t) => {
  if (!requireTool(t, 'qemu-img')) return;
  const { dir, cleanup } = tempDir('vdisk-bench-smoke-');
  t.after(cleanup);
  const out = join(dir, 'out');
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn(process.execPath, [join(REPO_ROOT, 'dist', 'bench', 'run.js'), '--smoke', '--no-install', '--work', join(dir, 'work'), '--results', out], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let so = '';
    let se = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (so += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (se += d));
    child.on('error', reject);
    child.on('close', (c) => resolve({ code: c, stdout: so, stderr: se }));
  });
  assert.equal(code, 0, `bench --smoke failed:\n${stdout}\n${stderr}`);

  const { results } = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as { results: CaseResult[] };
  const ids = results.map((r) => r.id);
  for (const want of ['ref-cp', 'ref-cat', 'convert-raw-vhd', 'convert-vhd-raw', 'convert-vhdx-raw', 'read-raw-seq-4k-qd1', 'read-vhd-rand-4k-qd16', 'chain-read-seq', 'memory-big-vhd', 'memory-open-huge-vhdx', 'nbd-vhdx-nbdcopy', 'nbd-vhd-16-clients', 'addcow-write-flush', 'addcow-read-rand-4k-qd1']) {
    assert.ok(ids.includes(want), `case ${want} missing from the results (${ids.join(', ')})`);
  }
  for (const r of results) {
    if (r.unavailable) {
      assert.match(r.unavailable, /not available yet|not built|could not/, `${r.id}: unexplained unavailability`);
      continue;
    }
    for (const tool of r.tools) {
      assert.equal(tool.error, undefined, `${r.id} / ${tool.name} failed: ${tool.error}`);
      if (!tool.unavailable) assert.equal(tool.seconds.length, 1, `${r.id} / ${tool.name} should have run exactly once`);
    }
  }
  // The human table names every case.
  const md = readFileSync(join(out, 'latest.md'), 'utf8');
  assert.match(md, /\| case \| tool \| median \| best \| MB\/s \| peak RSS \|/);
});
