import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { openChain } from '../src/chain/open.js';
import { convert, type ConvertRequest } from '../src/ops/convert.js';
import { commitImage } from '../src/ops/commit.js';
import { createImage } from '../src/ops/create.js';
import type { NativeAddon } from '../src/io/native.js';
import type { Extent } from '../src/core/extent.js';
import { rng, randomBytes } from './helpers/random.js';
import { Journal } from '../src/formats/vhdx/journal.js';
import { vdisk } from './helpers/cli.js';
import { pyvhdiDigest, qemuImg, requireNativeAddon, requireTool, run, tempDir, vdiskDigest } from './helpers/oracle.js';

/*
 * The native copier writes dynamic VHD and VHDX targets (Image.fillBlocks,
 * native/copy.c copyToBlocks): the same disk, the same block layout, file
 * size and counts as the JavaScript path (convert's native: false), for any
 * source chain, buffer size, -S and block size.
 */

const MiB = 1 << 20;

/** Calls to copyToBlocks while `body` runs. */
async function watchBlocks<T>(addon: NativeAddon, body: () => Promise<T>): Promise<{ result: T; calls: number }> {
  const real = addon.copyToBlocks;
  let calls = 0;
  addon.copyToBlocks = (...args) => {
    calls++;
    return real.apply(addon, args);
  };
  try {
    return { result: await body(), calls };
  } finally {
    addon.copyToBlocks = real;
  }
}

/** The top layer's own map, with where each data extent lies in its file: the layout. */
async function layout(path: string): Promise<Extent[]> {
  const c = await openChain(path, { readOnly: true, layerOnly: true });
  try {
    return await c.top.blockStatus(0, c.size);
  } finally {
    await c.close();
  }
}

interface Write {
  layer: number;
  at: number;
  sectors: number;
  kind: number;
}

/** A chain of `depth` layers of one format (raw: one file) holding the given writes. */
async function makeSource(dir: string, format: 'raw' | 'vhd' | 'vhdx', depth: number, size: number, writes: Write[], seed: number): Promise<string> {
  const layers = format === 'raw' ? 1 : depth;
  let path = '';
  const r = rng(seed);
  for (let d = 0; d < layers; d++) {
    const name = join(dir, `src${d}.${format}`);
    const options: Record<string, string> = format === 'vhdx' ? { block_size: '1M' } : format === 'vhd' ? { block_size: String(256 * 1024), force_size: 'on' } : {};
    await createImage({ path: name, format, size, options, backing: d > 0 ? { path: path, format } : undefined });
    path = name;
    const c = await openChain(path, { backingFormats: [format] });
    try {
      for (const w of writes.filter((x) => x.layer % layers === d)) {
        const at = Math.min(w.at * 512, size - 512);
        const n = Math.min(w.sectors * 512, size - at);
        const data = w.kind === 0 ? new Uint8Array(n) : w.kind === 1 ? randomBytes(r, n) : new Uint8Array(n);
        if (w.kind === 2) data[Math.floor(r() * n)] = 1 + Math.floor(r() * 255);
        if (w.kind === 3) await c.writeZeroes(at, n);
        else await c.write(at, data);
      }
    } finally {
      await c.close();
    }
  }
  return path;
}

test('convert to dynamic VHD and VHDX through the native copier: same disk, layout, file size and counts as the JavaScript path', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  let nativeCalls = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom('raw', 'vhd', 'vhdx') as fc.Arbitrary<'raw' | 'vhd' | 'vhdx'>,
      fc.integer({ min: 1, max: 3 }),
      fc.array(fc.record({ layer: fc.nat(5), at: fc.nat(6 * 2048), sectors: fc.integer({ min: 1, max: 3000 }), kind: fc.integer({ min: 0, max: 3 }) }), { minLength: 0, maxLength: 8 }),
      fc.constantFrom('vhd', 'vhdx'),
      fc.constantFrom<Record<string, string>>({}, { block_size: '1M' }, { block_size: '2M' }, { block_size: String(64 * 1024) }),
      fc.constantFrom(512, 4096, 65536),
      fc.constantFrom(64 * 1024, MiB, 2 * MiB, 3 * MiB),
      fc.nat(),
      async (srcFormat, depth, writes, targetFormat, blockOption, sparseSize, bufferSize, seed) => {
        // (VHDX blocks are 1 MiB at least; a VHD keeps the exact size rather than a whole CHS geometry.)
        const options = targetFormat === 'vhdx' ? (blockOption.block_size === String(64 * 1024) ? {} : blockOption) : { ...blockOption, force_size: 'on' };
        const size = 6 * MiB + 512 * (seed % 5);
        const outJs = join(dir, `js.${targetFormat}`);
        const outNative = join(dir, `native.${targetFormat}`);
        let source = '';
        const req: ConvertRequest = { source, sourceOptions: { backingFormats: [srcFormat] }, target: outJs, targetFormat, options, sparseSize, bufferSize };
        try {
          req.source = source = await makeSource(dir, srcFormat, depth, size, writes, seed);
          const js = await convert({ ...req, native: false });
          const nat = await watchBlocks(addon, () => convert({ ...req, target: outNative }));
          nativeCalls += nat.calls;
          assert.deepEqual(nat.result, js, 'same size and bytes written');
          const want = await vdiskDigest(source, { backingFormats: [srcFormat] });
          assert.deepEqual(await vdiskDigest(outNative), want, 'the source disk');
          assert.deepEqual(await layout(outNative), await layout(outJs), 'same blocks in the same places');
          assert.equal(statSync(outNative).size, statSync(outJs).size, 'same file size');
        } catch (e) {
          if (process.env.DEBUG_PROP) writeFileSync(process.env.DEBUG_PROP, String((e as Error).stack));
          throw e;
        } finally {
          rmSync(outJs, { force: true });
          rmSync(outNative, { force: true });
          for (let d = 0; d < 3; d++) rmSync(join(dir, `src${d}.${srcFormat}`), { force: true });
        }
      },
    ),
    { numRuns: 60 },
  );
  assert.ok(nativeCalls > 20, `the native copier was used (${nativeCalls} calls)`);
});

test('native convert and flatten into VHD and VHDX: qemu-img check and compare agree, libvhdi reads the same disk', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const libvhdi = requireTool(t, 'pyvhdi');
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  // A raw disk with data, written zeros, holes and an odd tail; and a depth-5 VHDX chain over it.
  const raw = join(dir, 'src.raw');
  qemuImg('create', '-f', 'raw', raw, '70M');
  run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 1M 3M', '-c', 'write -P 0 8M 2M', '-c', 'write -P 0x22 20M 513k', '-c', 'write -P 0x33 40M 9M', '-c', 'write -P 0x44 69M 1M', raw]);
  const flat = join(dir, 'flat.raw');
  copyFileSync(raw, flat);
  // Depth 5: a VHDX base (qemu-img's) and four VHDX children (vdisk's; qemu-img makes no VHDX children).
  let parent = join(dir, 'layer1.vhdx');
  qemuImg('convert', '-f', 'raw', '-O', 'vhdx', raw, parent);
  for (let d = 2; d <= 5; d++) {
    const child = join(dir, `layer${d}.vhdx`);
    assert.equal(vdisk('create', '-f', 'vhdx', '-o', 'block_size=2M', '-b', parent, child).status, 0);
    const cmds = [`write -P ${0x50 + d} ${d * 7}M ${d * 300}k`, `write -z ${d * 11}M 64k`];
    assert.equal(vdisk('io', ...cmds.flatMap((c) => ['-c', c]), child).status, 0);
    run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), flat]);
    parent = child;
  }
  const top = parent;
  for (const [source, sourceFormat, reference] of [[raw, 'raw', raw], [top, 'vhdx', flat]] as const) {
    for (const [fmt, qfmt, opts] of [['vhd', 'vpc', []], ['vhdx', 'vhdx', []], ['vhdx', 'vhdx', ['-o', 'block_size=1M']]] as const) {
      const out = join(dir, `out.${fmt}`);
      const r = await watchBlocks(addon, () =>
        convert({ source, sourceOptions: { format: sourceFormat }, target: out, targetFormat: fmt, options: opts.length ? { block_size: '1M' } : {} }),
      );
      assert.ok(r.calls > 0, 'the native copier was used');
      const cmp = run('qemu-img', ['compare', '-f', 'raw', '-F', qfmt, reference, out], { allowFail: true });
      assert.equal(cmp.status, 0, `${sourceFormat} → ${fmt} ${opts.join(' ')}: ${cmp.stdout}`);
      if (libvhdi) assert.equal(pyvhdiDigest([out]).digest, (await vdiskDigest(out)).digest, `libvhdi reads ${fmt} as vdisk does`);
      if (fmt === 'vhdx') assert.equal(run('qemu-img', ['check', '-f', 'vhdx', out], { allowFail: true }).status, 0, `qemu-img check ${fmt}`);
      assert.equal(vdisk('check', out).status, 0, `vdisk check ${fmt}`);
      rmSync(out);
    }
  }
});

test('native convert into VHDX: the allocations of a window go into one group commit, not one log transaction per block', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const source = join(dir, 'src.raw');
  await createImage({ path: source, format: 'raw', size: 64 * MiB, options: {} });
  const c = await openChain(source, { backingFormats: ['raw'] });
  const r = rng(7);
  for (let b = 0; b < 64; b += 3) await c.write(b * MiB + 4096 * (b % 5), randomBytes(r, 70000));
  await c.close();
  const blocks = Math.ceil(64 / 3);
  const real = Journal.prototype.commit;
  let commits = 0;
  let sectors = 0;
  Journal.prototype.commit = function (this: Journal, updates, apply) {
    commits++;
    sectors += updates.size;
    return real.call(this, updates, apply);
  };
  try {
    const out = join(dir, 'out.vhdx');
    for (const native of [false, true]) {
      commits = 0;
      const w: { calls: number } = await watchBlocks(addon, () => convert({ source, target: out, targetFormat: 'vhdx', options: { block_size: '1M' }, native }));
      if (native) {
        assert.equal(w.calls, 1);
        assert.equal(commits, 1, 'one commit for the whole window');
      } else assert.equal(commits, blocks, 'the JavaScript path commits each allocation');
      assert.equal((await vdiskDigest(out)).digest, (await vdiskDigest(source, { backingFormats: ['raw'] })).digest);
      rmSync(out);
    }
  } finally {
    Journal.prototype.commit = real;
  }
  assert.ok(sectors > 0);
});

test('commit through the native copier: the same base disk and chain as the JavaScript path, VHD and VHDX, any writes', async (t) => {
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  let nativeCalls = 0;
  const write = fc.record({ at: fc.nat(6 * 2048), sectors: fc.integer({ min: 1, max: 3000 }), kind: fc.integer({ min: 0, max: 3 }) });
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom('vhd', 'vhdx') as fc.Arbitrary<'vhd' | 'vhdx'>,
      fc.array(write, { maxLength: 6 }),
      fc.array(write, { minLength: 1, maxLength: 8 }),
      fc.constantFrom(64 * 1024, MiB, 4 * MiB),
      fc.boolean(),
      fc.nat(),
      async (format, parentWrites, childWrites, bufferSize, keepTop, seed) => {
        const size = 6 * MiB;
        const digests: string[] = [];
        const results: unknown[] = [];
        try {
          for (const native of [false, true]) {
            const sub = join(dir, native ? 'n' : 'j');
            rmSync(sub, { recursive: true, force: true });
            mkdirSync(sub);
            const parent = join(sub, `parent.${format}`);
            const child = join(sub, `child.${format}`);
            await createImage({ path: parent, format, size, options: format === 'vhd' ? { force_size: 'on', block_size: String(512 * 1024) } : { block_size: '1M' } });
            await applyWrites(parent, parentWrites, seed);
            await createImage({ path: child, format, backing: { path: `parent.${format}`, format } });
            await applyWrites(child, childWrites, seed + 1);
            const before = await vdiskDigest(child);
            const w = await watchBlocks(addon, () => commitImage({ path: child, keepTop, bufferSize, native }));
            if (native) nativeCalls += w.calls;
            const { copied: _copied, top: _t, base: _b, ...rest } = w.result;
            results.push(rest);
            // The base now shows the whole disk by itself, and the chain still shows it.
            assert.deepEqual(await vdiskDigest(parent), before, `the base holds the disk (native ${native})`);
            assert.deepEqual(await vdiskDigest(child), before, 'the chain reads the same disk');
            digests.push((await vdiskDigest(parent)).digest);
            const check = await openChain(parent, { readOnly: true });
            try {
              assert.equal((await check.top.check!({})).problems.filter((p) => p.severity === 'corruption').length, 0);
            } finally {
              await check.close();
            }
          }
          assert.equal(digests[0], digests[1]);
          assert.deepEqual(results[1], results[0], 'same result but for the bytes count');
        } catch (e) {
          if (process.env.DEBUG_PROP) writeFileSync(process.env.DEBUG_PROP, String((e as Error).stack));
          throw e;
        }
      },
    ),
    { numRuns: 40 },
  );
  assert.ok(nativeCalls > 10, `the native copier was used (${nativeCalls} calls)`);
});

async function applyWrites(path: string, writes: { at: number; sectors: number; kind: number }[], seed: number): Promise<void> {
  const r = rng(seed);
  const c = await openChain(path);
  try {
    for (const w of writes) {
      const at = Math.min(w.at * 512, c.size - 512);
      const n = Math.min(w.sectors * 512, c.size - at);
      if (w.kind === 3) await c.writeZeroes(at, n);
      else {
        const data = w.kind === 1 ? randomBytes(r, n) : new Uint8Array(n);
        if (w.kind === 2) data[Math.floor(r() * n)] = 1 + Math.floor(r() * 255);
        await c.write(at, data);
      }
    }
  } finally {
    await c.close();
  }
}
