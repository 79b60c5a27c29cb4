import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { REPO_ROOT } from './helpers/corpus.js';
import { tempDir } from './helpers/oracle.js';

/*
 * The package as a user gets it (issue 17, item 5): `npm pack`, installed
 * into a fresh project, type-checked by a file that imports vdisk, and run.
 * Offline: the tarball is local, and the project's lock file is made from
 * the repository's own (the same dependency versions, whose tarballs the
 * repository's `npm ci` put in npm's cache), so npm needs no registry.
 * The build is not run again here (`npm test` has just built; a build now
 * would rewrite dist/ under the other tests): `npm pack --ignore-scripts`.
 */

function sh(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}): { out: string; status: number } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
  return { out: `${r.stdout}${r.stderr}`, status: r.status ?? -1 };
}

/** Every file under dir, relative to it. */
function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

type LockEntry = { version: string; resolved?: string; integrity?: string; dependencies?: Record<string, string>; [k: string]: unknown };

/** Lock entries of `names` and everything they depend on, from the repository's lock (hoisted at the top, as npm laid them out). */
function closure(lock: Record<string, LockEntry>, names: string[]): Record<string, LockEntry> {
  const out: Record<string, LockEntry> = {};
  const todo = [...names];
  while (todo.length) {
    const name = todo.pop()!;
    const key = `node_modules/${name}`;
    if (out[key]) continue;
    const e = lock[key];
    assert.ok(e, `${name} is in package-lock.json`);
    const { dev: _d, optional: _o, devOptional: _x, peer: _p, ...rest } = e;
    out[key] = rest as LockEntry;
    todo.push(...Object.keys(e.dependencies ?? {}));
  }
  return out;
}

test('npm pack → install into a fresh TypeScript project: no script warnings, LICENSE shipped, types check without @types/node, the CLI runs without writing into node_modules', (t) => {
  const d = tempDir('vdisk-pack-');
  try {
    const packed = sh('npm', ['pack', '--ignore-scripts', '--pack-destination', d.dir], REPO_ROOT);
    assert.equal(packed.status, 0, packed.out);
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string; dependencies: Record<string, string> };
    const tgz = `vdisk-${pkg.version}.tgz`;

    const proj = join(d.dir, 'proj');
    mkdirSync(proj);
    const repoLock = JSON.parse(readFileSync(join(REPO_ROOT, 'package-lock.json'), 'utf8')).packages as Record<string, LockEntry>;
    const integrity = `sha512-${createHash('sha512').update(readFileSync(join(d.dir, tgz))).digest('base64')}`;
    writeFileSync(join(proj, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module', dependencies: { vdisk: `file:../${tgz}` } }));
    writeFileSync(
      join(proj, 'package-lock.json'),
      JSON.stringify({
        name: 'consumer',
        version: '1.0.0',
        lockfileVersion: 3,
        requires: true,
        packages: {
          '': { name: 'consumer', version: '1.0.0', dependencies: { vdisk: `file:../${tgz}` } },
          'node_modules/vdisk': { version: pkg.version, resolved: `file:../${tgz}`, integrity, license: 'MIT', dependencies: pkg.dependencies, bin: { vdisk: 'bin/vdisk.cjs' } },
          ...closure(repoLock, Object.keys(pkg.dependencies)),
        },
      }),
    );
    const installed = sh('npm', ['ci', '--offline', '--no-audit', '--no-fund'], proj);
    assert.equal(installed.status, 0, installed.out);
    assert.doesNotMatch(installed.out, /install.scripts|allowScripts|warn/i, 'npm 11 asks nothing about scripts');

    const root = join(proj, 'node_modules', 'vdisk');
    const shipped = files(root);
    assert.ok(shipped.includes('LICENSE'));
    assert.match(readFileSync(join(root, 'LICENSE'), 'utf8'), /^MIT License/);
    assert.ok(!shipped.some((f) => f.startsWith('src/') || f.startsWith('test/') || f.startsWith('dist/test/')), 'sources and tests stay out');
    assert.ok(!existsIn(join(proj, 'node_modules'), '@types/node'), 'the consumer has no @types/node');

    // A consumer's file, checked by the repository's TypeScript with no @types at all.
    writeFileSync(
      join(proj, 'use.ts'),
      [
        "import { openChain, createImage, convert, checkImage, startNbdServer, BlockError, type Chain } from 'vdisk';",
        'export async function copy(src: string, dst: string): Promise<number> {',
        "  await createImage({ path: dst + '.new', format: 'vhdx', size: 1 << 20 });",
        '  const chain: Chain = await openChain(src, { readOnly: true });',
        '  try {',
        '    const buf = new Uint8Array(4096);',
        '    await chain.read(0, buf);',
        '    return buf[0];',
        '  } catch (e) {',
        "    if (e instanceof BlockError && e.kind === 'not-found') return -1;",
        '    throw e;',
        '  } finally {',
        '    await chain.close();',
        '  }',
        '}',
        'export const used = [convert, checkImage, startNbdServer];',
        '',
      ].join('\n'),
    );
    writeFileSync(
      join(proj, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { strict: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', noEmit: true, types: [] }, files: ['use.ts'] }),
    );
    const tsc = sh(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', proj], proj);
    assert.equal(tsc.status, 0, tsc.out);

    // The CLI runs from the install; its first runs write nothing into node_modules
    // (the shipped code cache is taken as is; another Node's would go to XDG_CACHE_HOME).
    const cache = join(d.dir, 'xdg-cache');
    const before = files(join(proj, 'node_modules'));
    for (let i = 0; i < 2; i++) {
      const r = sh(process.execPath, [join(proj, 'node_modules', '.bin', 'vdisk'), '--version'], proj, { XDG_CACHE_HOME: cache });
      assert.equal(r.status, 0, r.out);
      assert.equal(r.out.trim(), pkg.version);
    }
    const img = join(d.dir, 'x.vhdx');
    const r = sh(process.execPath, [join(root, 'bin', 'vdisk.cjs'), 'create', '-f', 'vhdx', img, '1M'], proj, { XDG_CACHE_HOME: cache });
    assert.equal(r.status, 0, r.out);
    assert.deepEqual(files(join(proj, 'node_modules')), before, 'nothing written into node_modules');
    t.diagnostic(`user cache files: ${existsIn(d.dir, 'xdg-cache') ? files(cache).join(', ') || 'none' : 'none'}`);
  } finally {
    d.cleanup();
  }
});

function existsIn(dir: string, name: string): boolean {
  try {
    readdirSync(join(dir, name));
    return true;
  } catch {
    return false;
  }
}
