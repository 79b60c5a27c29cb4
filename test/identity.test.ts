import { test } from 'node:test';
import assert from 'node:assert/strict';
import { symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isBlockError } from '../src/core/errors.js';
import { fileIdentity, sameFile } from '../src/io/identity.js';
import { createImage } from '../src/ops/create.js';
import { tempDir } from './helpers/oracle.js';

test('file identity: a link and its target are one file; a name with no file is its resolved path', async () => {
  const d = tempDir();
  try {
    const target = join(d.dir, 'a.raw');
    writeFileSync(target, new Uint8Array(512));
    symlinkSync('a.raw', join(d.dir, 'link.raw'));
    assert.ok(await sameFile(join(d.dir, 'link.raw'), target));
    assert.ok(await sameFile(join(d.dir, 'sub', '..', 'a.raw'), target));
    assert.equal(await fileIdentity(join(d.dir, 'missing', '..', 'none.raw')), join(d.dir, 'none.raw'));
    assert.equal(await sameFile(join(d.dir, 'none.raw'), target), false);
  } finally {
    d.cleanup();
  }
});

test('add-cow refuses an image file that is its backing file under another name (a link), as the chain would see it', async () => {
  const d = tempDir();
  try {
    const base = join(d.dir, 'base.raw');
    await createImage({ path: base, format: 'raw', size: 64 * 1024 });
    symlinkSync('base.raw', join(d.dir, 'alias.raw'));
    await assert.rejects(
      createImage({ path: join(d.dir, 'top.add-cow'), format: 'add-cow', backing: { path: base, format: 'raw' }, options: { image_file: 'alias.raw' } }),
      (e: unknown) => isBlockError(e, 'invalid-argument') && /backing file/.test(e.message),
    );
  } finally {
    d.cleanup();
  }
});
