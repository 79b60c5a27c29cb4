import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openChain } from '../src/chain/open.js';
import { convert } from '../src/ops/convert.js';
import { FileStore, openFileStore } from '../src/io/file-store.js';
import { nativeAddon } from '../src/io/native.js';
import { BlockError } from '../src/core/errors.js';
import type { Store, StoreOpener } from '../src/io/store.js';
import { mapChain } from '../src/ops/map.js';
import { vdisk } from './helpers/cli.js';
import { REPO_ROOT } from './helpers/corpus.js';
import { pyvhdiDigest, requireNativeAddon, qemuDigest, qemuImg, qemuIo, requireTool, run, sha256File, tempDir, vdiskDigest } from './helpers/oracle.js';

const MiB = 1 << 20;

/** Bytes of the disk the top layer itself holds as data. */
async function topData(path: string): Promise<number> {
  const c = await openChain(path, { readOnly: true, backingFormats: ['raw'] });
  try {
    let n = 0;
    for await (const e of mapChain(c)) if (e.depth === 0 && e.present && e.data) n += e.length;
    return n;
  } finally {
    await c.close();
  }
}

/** base.vhd (made by qemu-img) and src.raw = the same disk with a few changes. */
function baseAndSource(dir: string): { base: string; src: string } {
  const base = join(dir, 'base.vhd');
  qemuImg('create', '-f', 'vpc', '-o', 'subformat=dynamic,force_size=on', base, '8M');
  qemuIo('vpc', base, 'write -P 0x5a 0 6M', 'write -P 0x6b 7M 1M');
  const src = join(dir, 'src.raw');
  qemuImg('convert', '-f', 'vpc', '-O', 'raw', base, src);
  qemuIo('raw', src, `write -P 0x01 ${MiB} 64k`, `write -z ${4 * MiB} 4k`, `write -P 0x02 ${6.5 * MiB} 8k`);
  return { base, src };
}

test('convert -B: a VHD child holding only the differences; vdisk, libvhdi and qemu-img agree', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io') || !requireTool(t, 'pyvhdi')) return;
  const { dir, cleanup } = tempDir();
  try {
    const { base, src } = baseAndSource(dir);
    const want = await qemuDigest(src, 'raw');
    const child = join(dir, 'child.vhd');
    const r = vdisk('convert', '-O', 'vhd', '-B', 'base.vhd', '-F', 'vhd', src, child);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(vdisk('info', '--output=json', child).stdout)['backing-filename'], 'base.vhd');
    assert.equal((await vdiskDigest(child)).digest, want.digest);
    assert.equal(pyvhdiDigest([child, base]).digest, want.digest);
    // Only the changed ranges: 64 KiB + 4 KiB of zeros + 8 KiB (zeros are data in a VHD child).
    assert.equal(await topData(child), 64 * 1024 + 4096 + 8192);
    assert.equal(vdisk('compare', src, child).status, 0);
  } finally {
    cleanup();
  }
});

test('convert -B with add-cow over raw, checked by the independent reader', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const { dir, cleanup } = tempDir();
  try {
    const { base, src } = baseAndSource(dir);
    const rawBase = join(dir, 'base.raw');
    qemuImg('convert', '-f', 'vpc', '-O', 'raw', base, rawBase);
    const child = join(dir, 'child.add-cow');
    const r = vdisk('convert', '-O', 'add-cow', '-B', 'base.raw', '-F', 'raw', src, child);
    assert.equal(r.status, 0, r.stderr);
    const want = await qemuDigest(src, 'raw');
    const [digest] = run('/usr/bin/python3', [join(REPO_ROOT, 'test', 'oracles', 'addcow_reader.py'), child]).stdout.trim().split(/\s+/);
    assert.equal(digest, want.digest);
    assert.equal(await topData(child), 64 * 1024 + 4096 + 8192);
  } finally {
    cleanup();
  }
});

test('converting a chain flattens it into every writable format; qemu-img compares the results', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const { dir, cleanup } = tempDir();
  try {
    const { src } = baseAndSource(dir);
    const child = join(dir, 'child.vhd');
    assert.equal(vdisk('create', '-f', 'vhd', '-b', 'base.vhd', child).status, 0);
    assert.equal(vdisk('io', '-c', `write -P 0x01 ${MiB} 64k`, '-c', `write -z ${4 * MiB} 4k`, '-c', `write -P 0x02 ${6.5 * MiB} 8k`, child).status, 0);
    const want = await qemuDigest(src, 'raw');
    assert.equal((await vdiskDigest(child)).digest, want.digest);
    const qemuName: Record<string, string> = { raw: 'raw', vhd: 'vpc', vhdx: 'vhdx' };
    for (const fmt of ['raw', 'vhd', 'vhdx', 'add-cow']) {
      const out = join(dir, `flat.${fmt}`);
      const progress: number[][] = [];
      await convert({ source: child, target: out, targetFormat: fmt, onProgress: (d, n) => progress.push([d, n]) });
      assert.deepEqual(progress[progress.length - 1], [8 * MiB, 8 * MiB], `${fmt}: progress reaches the end`);
      const info = JSON.parse(vdisk('info', '--output=json', out).stdout);
      assert.equal(info['backing-filename'], undefined, `${fmt}: flattened`);
      // (A VHD is rounded up to whole CHS geometry: compare, not digests, allows the zero tail.)
      assert.equal(vdisk('compare', src, out).status, 0, `vdisk compare ${fmt}`);
      if (qemuName[fmt]) {
        assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', qemuName[fmt], src, out], { allowFail: true }).status, 0, `qemu-img compare ${fmt}`);
      }
    }
  } finally {
    cleanup();
  }
});

test('convert -n overwrites an existing image (stale data zeroed); zero detection keeps targets sparse', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const { dir, cleanup } = tempDir();
  try {
    const src = join(dir, 'src.raw');
    qemuImg('create', '-f', 'raw', src, '16M');
    // Allocated but zero data in the middle: 8 MiB of written zeros.
    qemuIo('raw', src, 'write -P 0x44 0 1M', `write -P 0 ${4 * MiB} 8M`, `write -P 0x45 ${15 * MiB} 1M`);
    const target = join(dir, 'old.vhdx');
    qemuImg('create', '-f', 'vhdx', target, '16M');
    qemuIo('vhdx', target, 'write -P 0x99 0 16M');
    let r = vdisk('convert', '-n', '-O', 'vhdx', src, target);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'vhdx', src, target], { allowFail: true }).status, 0);
    // The written zeros are not stored: a VHD of 2 MiB blocks holds only the two data blocks.
    const out = join(dir, 'out.vhd');
    r = vdisk('convert', '-O', 'vhd', src, out);
    assert.equal(r.status, 0, r.stderr);
    const blocks = (statSync(out).size - 512 - 1024 - 512 - 512) / (2 * MiB + 512);
    assert.equal(blocks, 2);
    assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', src, out], { allowFail: true }).status, 0);
    // -S 0 stores everything.
    const full = join(dir, 'full.vhd');
    assert.equal(vdisk('convert', '-S', '0', '-O', 'vhd', '-o', 'force_size=on', src, full).status, 0);
    assert.equal((statSync(full).size - 2560) / (2 * MiB + 512), 8);
    // -n with -B is refused; a target too small is refused and left alone.
    r = vdisk('convert', '-n', '-B', src, '-O', 'vhd', src, out);
    assert.equal(r.status, 1);
    const small = join(dir, 'small.raw');
    qemuImg('create', '-f', 'raw', small, '1M');
    r = vdisk('convert', '-n', '-O', 'raw', src, small);
    assert.equal(r.status, 1);
    assert.equal(statSync(small).size, MiB);
  } finally {
    cleanup();
  }
});

test('convert with several pieces in flight: odd-sized source, small buffers; raw and add-cow written at once, VHD in disk order', async () => {
  const { dir, cleanup } = tempDir();
  try {
    // 5 MiB + 1000 bytes: the last piece ends inside a sector and is copied alone.
    const size = 5 * MiB + 1000;
    const src = join(dir, 'src.raw');
    const content = new Uint8Array(size);
    let seed = 12345;
    const next = () => (seed = (seed * 1103515245 + 12345) >>> 0);
    for (let i = 0; i < 40; i++) {
      const len = 1 + (next() % 70000);
      const off = next() % (size - len);
      for (let j = 0; j < len; j++) content[off + j] = next() & 0xff;
    }
    content.fill(0x77, size - 300); // data up to the odd end
    const { writeFileSync, readFileSync } = await import('node:fs');
    writeFileSync(src, content);
    for (const [fmt, options] of [
      ['raw', {}],
      ['add-cow', { image_file: join(dir, 'out.add-cow.img') }],
      ['vhd', { subformat: 'dynamic', block_size: '512K' }],
    ] as const) {
      const out = join(dir, `out.${fmt}`);
      // Reads of every other 512 KiB piece (one VHD block) finish late, so
      // pieces complete out of disk order: fixed-layout targets take them
      // as they come, a VHD must still allocate its blocks in disk order.
      const openStore: StoreOpener = async (path, o) => {
        const store = await openFileStore(path, o);
        if (path !== src) return store;
        return Object.assign(Object.create(store) as Store, {
          read: async (offset: number, into: Uint8Array) => {
            if (Math.floor(offset / (512 * 1024)) % 2 === 0) await new Promise((r) => setTimeout(r, 5));
            return store.read(offset, into);
          },
        });
      };
      await convert({ source: src, target: out, targetFormat: fmt, options, bufferSize: 512 * 1024, openStore });
      const c = await openChain(out, { readOnly: true });
      try {
        const got = new Uint8Array(size);
        await c.read(0, got);
        assert.ok(Buffer.from(got).equals(content), `${fmt}: content`);
        if (fmt === 'vhd') {
          // Blocks allocated in the order of the disk: host offsets grow with disk offsets.
          let last = -1;
          for await (const e of mapChain(c)) {
            if (!e.data || e.offset === undefined) continue;
            assert.ok(e.offset > last, `vhd: extent at ${e.start} lies at ${e.offset}, before the previous one (${last})`);
            last = e.offset;
          }
        }
      } finally {
        await c.close();
      }
      if (fmt === 'raw') {
        // Whole sectors, as qemu-img convert makes them: the odd tail is padded with zeros.
        const file = readFileSync(out);
        assert.equal(file.length, Math.ceil(size / 512) * 512);
        assert.ok(file.subarray(0, size).equals(content) && file.subarray(size).every((b) => b === 0));
      }
    }
  } finally {
    cleanup();
  }
});

test('convert skips, unread, the parts of a source block that are holes in its file (qemu-img-made VHDX)', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  // qemu-img allocates whole 8 MiB VHDX blocks but writes only what it is given: the rest is a hole.
  const src = join(dir, 'src.vhdx');
  qemuImg('create', '-f', 'vhdx', '-o', 'block_size=8M', src, '32M');
  qemuIo('vhdx', src, `write -P 0x33 ${MiB} 64k`, `write -P 0x44 ${9 * MiB} 4k`);

  const probe = await openFileStore(src, { readOnly: true });
  const holesKnown = (await probe.allocation?.(0, 4096)) !== undefined;
  await probe.close();
  if (!holesKnown) {
    // Hole detection needs the native addon (native/seek.c: SEEK_DATA/SEEK_HOLE).
    assert.ok(!process.env.CI, 'CI must be able to find holes (native addon built)');
    t.skip('this machine cannot ask the file system for holes');
    return;
  }
  const c = await openChain(src, { readOnly: true });
  try {
    const plain = await c.blockStatus(0, 16 * MiB);
    const dataPlain = plain.filter((e) => e.kind === 'data').reduce((n, e) => n + e.length, 0);
    assert.equal(dataPlain, 16 * MiB, 'without findZeroes both allocated blocks are data throughout');
    const found = await c.blockStatus(0, 16 * MiB, { findZeroes: true });
    const data = found.filter((e) => e.kind === 'data');
    assert.ok(data.reduce((n, e) => n + e.length, 0) <= 2 * MiB, `only what was written is data: ${JSON.stringify(data)}`);
    for (const at of [MiB, MiB + 65535, 9 * MiB]) assert.ok(data.some((e) => e.offset <= at && at < e.offset + e.length), `offset ${at} is data`);
  } finally {
    await c.close();
  }

  // The copy reads only the data, and the target matches.
  let bytesRead = 0;
  const counting: StoreOpener = async (path, o) => {
    const s = await openFileStore(path, o);
    if (path !== src) return s;
    return new Proxy(s, {
      get(target, k, recv) {
        if (k === 'read') return async (off: number, into: Uint8Array) => ((bytesRead += into.length), target.read(off, into));
        const v = Reflect.get(target, k, recv);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    }) as Store;
  };
  const out = join(dir, 'out.raw');
  // Through JavaScript, whose reads the proxy sees (the native copier reads
  // the file itself: the next test counts what it is given to read).
  await convert({ source: src, target: out, targetFormat: 'raw', openStore: counting, native: false });
  assert.ok(bytesRead < 4 * MiB, `convert read ${bytesRead} bytes of a file holding 68 KiB of data`);
  assert.equal(run('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', src, out]).status, 0);
});

/** Host data ranges of a file, as SEEK_DATA/SEEK_HOLE tell (undefined when this machine cannot). */
async function hostMap(path: string): Promise<string | undefined> {
  const s = (await openFileStore(path, { readOnly: true })) as FileStore;
  try {
    const r = await s.allocation(0, await s.size());
    return r && JSON.stringify(r);
  } finally {
    await s.close();
  }
}

/** Calls to the native copier, and the bytes of the ranges it was given, while `body` runs. */
async function watchNative<T>(body: () => Promise<T>): Promise<{ result: T; calls: number; planned: number }> {
  const addon = nativeAddon()!;
  const real = addon.copyRanges;
  let calls = 0;
  let planned = 0;
  addon.copyRanges = (target, plan, ...rest) => {
    calls++;
    for (let i = 3; i < plan.length; i += 4) planned += plan[i];
    return real.call(addon, target, plan, ...rest);
  };
  try {
    return { result: await body(), calls, planned };
  } finally {
    addon.copyRanges = real;
  }
}

test('convert to raw copies file to file through the native addon: the same file, holes and counts as the JavaScript path', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  if (!requireNativeAddon(t)) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const { base } = baseAndSource(dir);
  // A chain (two files in one copy), a VHDX with holes in its blocks, a
  // sparse raw file with a written run of zeros, and an add-cow layer.
  const child = join(dir, 'child.vhd');
  assert.equal(vdisk('create', '-f', 'vhd', '-b', 'base.vhd', child).status, 0);
  assert.equal(vdisk('io', '-c', `write -P 0x01 ${MiB + 512} 65000`, '-c', `write -z ${4 * MiB} 4k`, '-c', `write -P 0x02 ${6.5 * MiB} 8k`, child).status, 0);
  const vhdx = join(dir, 'src.vhdx');
  qemuImg('create', '-f', 'vhdx', '-o', 'block_size=1M', vhdx, '12M');
  qemuIo('vhdx', vhdx, `write -P 0x33 ${MiB + 4096} 64k`, `write -z ${3 * MiB} 1M`, `write -P 0x44 ${9 * MiB} 1536k`);
  const sparse = join(dir, 'sparse.raw');
  qemuImg('create', '-f', 'raw', sparse, '10M');
  qemuIo('raw', sparse, `write -P 0x55 0 3M`, `write -P 0 ${4 * MiB} 2M`, `write -P 0x66 ${8 * MiB + 512} 700k`);
  const cow = join(dir, 'top.add-cow');
  assert.equal(vdisk('create', '-f', 'add-cow', '-b', 'sparse.raw', '-F', 'raw', cow).status, 0);
  assert.equal(vdisk('io', '--backing-as', 'raw', '-c', `write -P 0x77 ${2 * MiB} 3M`, cow).status, 0);

  for (const [source, fmt] of [[base, 'vhd'], [child, 'vhd'], [vhdx, 'vhdx'], [sparse, 'raw'], [cow, 'add-cow']] as const) {
    const outJs = join(dir, 'js.raw');
    const outNative = join(dir, 'native.raw');
    const progressJs: number[][] = [];
    const progressNative: number[][] = [];
    const sourceOptions = fmt === 'add-cow' ? { backingFormats: ['raw'] } : {};
    const js = await convert({ source, sourceOptions, target: outJs, targetFormat: 'raw', native: false, onProgress: (d, n) => progressJs.push([d, n]) });
    const nat = await watchNative(() => convert({ source, sourceOptions, target: outNative, targetFormat: 'raw', onProgress: (d, n) => progressNative.push([d, n]) }));
    assert.ok(nat.calls >= 1 && nat.planned > 0, `${fmt}: the native copier was used`);
    assert.deepEqual(nat.result, js, `${fmt}: same size and bytes written`);
    assert.equal(await sha256File(outNative), await sha256File(outJs), `${fmt}: same contents`);
    // qemu-img reads no VHD parent and no add-cow: it checks the single files.
    if (source !== child && fmt !== 'add-cow') {
      assert.equal(run('qemu-img', ['compare', '-f', fmt === 'vhd' ? 'vpc' : fmt, '-F', 'raw', source, outNative], { allowFail: true }).status, 0, fmt);
    }
    assert.equal(vdisk('compare', ...(fmt === 'add-cow' ? ['--backing-as', 'raw'] : []), source, outNative).status, 0, fmt);
    assert.equal(await hostMap(outNative), await hostMap(outJs), `${fmt}: same holes`);
    assert.deepEqual(progressNative.at(-1), progressJs.at(-1), `${fmt}: progress reaches the end`);
    for (let i = 1; i < progressNative.length; i++) assert.ok(progressNative[i][0] >= progressNative[i - 1][0], `${fmt}: progress only grows`);
    rmSync(outJs);
    rmSync(outNative);
  }
  // A fixed VHD target is its file's first bytes too (the cloud-upload case): the same copy, the footer left alone.
  for (const [source, fmt] of [[child, 'vhd'], [vhdx, 'vhdx'], [sparse, 'raw']] as const) {
    const outJs = join(dir, 'js.vhd');
    const outNative = join(dir, 'native.vhd');
    const options = { subformat: 'fixed' };
    const js = await convert({ source, target: outJs, targetFormat: 'vhd', options, native: false });
    const nat = await watchNative(() => convert({ source, target: outNative, targetFormat: 'vhd', options }));
    assert.ok(nat.calls >= 1 && nat.planned > 0, `${fmt} → fixed VHD: the native copier was used`);
    assert.deepEqual(nat.result, js, `${fmt} → fixed VHD: same size and bytes written`);
    assert.equal(vdisk('compare', outJs, outNative).status, 0, `${fmt} → fixed VHD: same disk`);
    assert.equal(vdisk('compare', source, outNative).status, 0, `${fmt} → fixed VHD: the source's disk`);
    assert.equal(JSON.parse(vdisk('info', '--output=json', outNative).stdout)['format-specific'].data['disk-type'], 'fixed');
    if (source !== child) assert.equal(run('qemu-img', ['compare', '-f', fmt === 'raw' ? 'raw' : fmt, '-F', 'vpc', source, outNative], { allowFail: true }).status, 0, fmt);
    rmSync(outJs);
    rmSync(outNative);
  }
  // Only what the VHDX's file holds is given to the copier: of its four
  // 1 MiB blocks, 64 KiB, 1 MiB (of zeros: qemu writes them) and 1.5 MiB;
  // the rest are holes in its file. The zeros are read but not written.
  const outVhdx = join(dir, 'vhdx.raw');
  const w = await watchNative(() => convert({ source: vhdx, target: outVhdx, targetFormat: 'raw' }));
  if ((await hostMap(vhdx)) === undefined) assert.ok(w.planned <= 4 * MiB, `planned ${w.planned}`);
  else assert.equal(w.planned, 64 * 1024 + MiB + 1536 * 1024);
  assert.equal(w.result.written, 64 * 1024 + 1536 * 1024);
});

test('a failed native copy is a BlockError naming the file and offset, and the new target is removed', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const addon = requireNativeAddon(t);
  if (!addon) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const { base } = baseAndSource(dir);
  const out = join(dir, 'out.raw');
  const real = addon.copyRanges;
  addon.copyRanges = (_target, plan) =>
    Promise.reject(Object.assign(new Error('read failed at offset 1536: Input/output error'), { code: 'EIO', syscall: 'read', fd: plan[0], offset: 1536 }));
  try {
    await assert.rejects(convert({ source: base, target: out, targetFormat: 'raw' }), (e: unknown) => {
      assert.ok(e instanceof BlockError);
      assert.equal(e.kind, 'io');
      assert.equal(e.context.path, base);
      assert.equal(e.context.offset, 1536);
      assert.equal(e.context.operation, 'read');
      return true;
    });
  } finally {
    addon.copyRanges = real;
  }
  assert.equal(existsSync(out), false, 'the half-made target is removed');
});

test('convert checks its buffer size; pieces larger than the native addon takes go through JavaScript', async (t) => {
  if (!requireTool(t, 'qemu-img') || !requireTool(t, 'qemu-io')) return;
  const { dir, cleanup } = tempDir();
  t.after(cleanup);
  const { base } = baseAndSource(dir);
  for (const bufferSize of [0, -512, 1000, 2 ** 31, 0.5]) {
    await assert.rejects(convert({ source: base, target: join(dir, `bad.raw`), targetFormat: 'raw', bufferSize }), (e: unknown) => e instanceof BlockError && e.kind === 'invalid-argument', String(bufferSize));
    assert.equal(existsSync(join(dir, 'bad.raw')), false);
  }
  const out = join(dir, 'big-pieces.raw');
  const r = nativeAddon() ? await watchNative(() => convert({ source: base, target: out, targetFormat: 'raw', bufferSize: 128 * MiB })) : undefined;
  if (r) assert.equal(r.calls, 0, 'pieces of 128 MiB are not given to the addon');
  else await convert({ source: base, target: out, targetFormat: 'raw', bufferSize: 128 * MiB });
  assert.equal(run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', base, out], { allowFail: true }).status, 0);
});

test('convert -S 0 through the JavaScript path counts every byte it writes, with its lanes in flight together', async () => {
  // `written += await write(...)` read `written` before the write and dropped what other lanes added meanwhile.
  const { dir, cleanup } = tempDir();
  try {
    const src = join(dir, 'src.raw');
    const size = 64 << 20;
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i += 4096) data[i] = (i >> 12) % 251 || 1;
    writeFileSync(src, data);
    const r = await convert({ source: src, target: join(dir, 'out.raw'), targetFormat: 'raw', sparseSize: 0, native: false });
    assert.equal(r.written, size);
  } finally {
    cleanup();
  }
});
