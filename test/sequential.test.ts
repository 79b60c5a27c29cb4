import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { convert } from '../src/ops/convert.js';
import { convertToSink, planSequentialConvert } from '../src/ops/sequential.js';
import { measureImage } from '../src/ops/measure.js';
import { createImage } from '../src/ops/create.js';
import { openChain } from '../src/chain/open.js';
import { fileSink } from '../src/io/file-sink.js';
import { streamSink } from '../src/io/stdio.js';
import { openFileStore } from '../src/io/file-store.js';
import type { ByteSink } from '../src/io/sink.js';
import type { Store, StoreOpener } from '../src/io/store.js';
import { isBlockError } from '../src/core/errors.js';
import { VDISK_BIN, vdisk } from './helpers/cli.js';
import { pyvhdiDigest, qemuImg, qemuIo, requireTool, run, sha256File, tempDir, vdiskDigest } from './helpers/oracle.js';
import { randInt, randomBytes, rng } from './helpers/random.js';

const MiB = 1 << 20;
const QEMU_NAME: Record<string, string> = { raw: 'raw', vhd: 'vpc', vhdx: 'vhdx' };

/** Run a shell pipeline; returns its status and stderr. */
function sh(script: string): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('bash', ['-c', script], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const VDISK = `${q(process.execPath)} ${q(VDISK_BIN)}`;

/**
 * A 40 MiB raw disk with data in a few places, a range of written zeros (a
 * data extent that holds only zeros: the stream must not allocate it) and
 * holes.
 */
function sourceDisk(dir: string): string {
  const src = join(dir, 'src.raw');
  qemuImg('create', '-f', 'raw', src, '40M');
  qemuIo('raw', src, 'write -P 0xab 1M 3M', 'write -P 0x00 8M 4M', 'write -P 0xcd 20M 512', 'write -P 0x17 39M 1M');
  return src;
}

/** qemu: false where qemu-img cannot open the result (its VHDX driver has no 4 KiB logical sectors). */
const TARGETS: Array<{ format: string; options: string[]; label: string; qemu?: false }> = [
  { format: 'raw', options: [], label: 'raw' },
  { format: 'vhd', options: ['-o', 'subformat=fixed'], label: 'fixed VHD' },
  { format: 'vhd', options: [], label: 'dynamic VHD' },
  { format: 'vhd', options: ['-o', 'block_size=512K'], label: 'dynamic VHD, 512 KiB blocks' },
  { format: 'vhdx', options: [], label: 'dynamic VHDX' },
  { format: 'vhdx', options: ['-o', 'block_size=1M,logical_sector_size=4096'], label: 'dynamic VHDX, 1 MiB blocks, 4 KiB sectors', qemu: false },
];

for (const t of TARGETS) {
  test(`convert -O ${t.format} SRC - through a real pipe: ${t.label} — qemu-img compare, libvhdi, check, measure --streamed`, async (tc) => {
    if (!requireTool(tc, 'qemu-img')) return;
    if (t.format !== 'raw' && !requireTool(tc, 'pyvhdi')) return;
    const { dir, cleanup } = tempDir();
    try {
      const src = sourceDisk(dir);
      const out = join(dir, `out.${t.format}`);
      const r = sh(`${VDISK} convert -O ${t.format} ${t.options.map(q).join(' ')} ${q(src)} - | cat > ${q(out)}; exit \${PIPESTATUS[0]}`);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, '');
      // The same disk as qemu-img reads it (qemu-img's vpc reads the CHS-rounded size: compare the source's bytes).
      if (t.qemu !== false) assert.match(qemuImg('compare', '-f', 'raw', '-F', QEMU_NAME[t.format], src, out), /Images are identical/);
      if (t.format === 'vhdx' && t.qemu !== false) assert.match(run('qemu-img', ['check', '-f', 'vhdx', out]).stdout, /No errors were found/);
      if (t.format !== 'raw') {
        const lib = pyvhdiDigest([out]);
        const raw = join(dir, 'lib.raw');
        writeFileSync(raw, new Uint8Array(lib.size));
        qemuImg('convert', '-f', 'raw', '-O', 'raw', '-n', src, raw); // the source padded to the image's size
        assert.equal(lib.digest, await sha256File(raw), 'libvhdi reads the same disk');
        assert.equal(vdisk('check', out).status, 0);
      }
      // measure --streamed gives the exact byte count before a byte is written.
      const m = vdisk('measure', '--streamed', '-O', t.format, ...t.options, src, '--output', 'json');
      assert.equal(m.status, 0, m.stderr);
      assert.equal(JSON.parse(m.stdout)['streamed-size'], statSync(out).size);
      // And it costs what the seekable convert's file costs: zero blocks (written zeros included) are left out.
      const seek = join(dir, `seek.${t.format}`);
      assert.equal(vdisk('convert', '-O', t.format, ...t.options, src, seek).status, 0);
      assert.equal(statSync(out).size, statSync(seek).size);
    } finally {
      cleanup();
    }
  });
}

test('convert -O vhd/vhdx -B BASE SRC -: a differencing stream holding only what differs (libvhdi, vdisk compare, measure)', async (tc) => {
  if (!requireTool(tc, 'pyvhdi') || !requireTool(tc, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  try {
    for (const format of ['vhd', 'vhdx']) {
      const base = join(dir, `base.${format}`);
      assert.equal(vdisk('create', '-f', format, ...(format === 'vhd' ? ['-o', 'force_size=on'] : []), base, '40M').status, 0);
      assert.equal(vdisk('io', '-c', 'write -P 0x11 0 8M', '-c', 'write -P 0x22 30M 1M', base).status, 0);
      const src = join(dir, `src-${format}.raw`);
      assert.equal(vdisk('convert', '-O', 'raw', base, src).status, 0);
      // Changes: new data inside the backing's data, zeros over the backing's data, data where the backing has none.
      qemuIo('raw', src, 'write -P 0x33 2M 4k', 'write -z 30M 512', 'write -P 0x44 35M 1M');
      const out = join(dir, `child.${format}`);
      const r = sh(`cd ${q(dir)} && ${VDISK} convert -O ${format} -B base.${format} ${q(src)} - | cat > ${q(out)}; exit \${PIPESTATUS[0]}`);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(vdisk('compare', src, out).status, 0);
      assert.equal(vdisk('check', out).status, 0);
      assert.equal(pyvhdiDigest([out, base]).digest, (await vdiskDigest(src)).digest, `${format}: libvhdi reads the child over its parent as the source`);
      // Only what differs: the child is as small as the seekable convert's child, and measure says so first.
      const seek = join(dir, `seek.${format}`);
      assert.equal(vdisk('convert', '-O', format, '-B', base, src, seek).status, 0);
      assert.equal(statSync(out).size, statSync(seek).size);
      const m = sh(`cd ${q(dir)} && ${VDISK} measure --streamed -O ${format} -B base.${format} ${q(src)} --output json`);
      assert.equal(m.status, 0, m.stderr);
      assert.equal(JSON.parse(m.stdout)['streamed-size'], statSync(out).size);
      // Blocks the child left out read from the parent: the first 2 MiB block holds one changed 4 KiB run only.
      const map = await openChain(out, { readOnly: true });
      try {
        const own = (await map.blockStatus(0, 40 * MiB)).filter((e) => e.depth === 0 && e.kind === 'data').reduce((n, e) => n + e.length, 0);
        assert.equal(own, 4096 + 512 + MiB, `${format}: the child holds exactly the changed sectors`);
      } finally {
        await map.close();
      }
    }
  } finally {
    cleanup();
  }
});

test('convert SRC - | head -c 1000: EPIPE is one clear error and a non-zero exit, no hang', () => {
  const { dir, cleanup } = tempDir();
  try {
    const src = join(dir, 'src.raw');
    writeFileSync(src, randomBytes(rng(5), 24 * MiB));
    for (const format of ['raw', 'vhd', 'vhdx']) {
      const r = sh(`${VDISK} convert -O ${format} ${q(src)} - | head -c 1000 > /dev/null; exit \${PIPESTATUS[0]}`);
      assert.equal(r.status, 1, r.stderr);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], /^vdisk: stdout: the reading end of the pipe was closed \(EPIPE\)/);
    }
  } finally {
    cleanup();
  }
});

test('convert --streamed to a file: the same image as through stdout; options that need a seekable target are refused', () => {
  const { dir, cleanup } = tempDir();
  try {
    const src = join(dir, 'src.raw');
    writeFileSync(src, randomBytes(rng(9), 6 * MiB));
    const piped = join(dir, 'piped.vhdx');
    assert.equal(sh(`${VDISK} convert -O vhdx ${q(src)} - > ${q(piped)}`).status, 0);
    const file = join(dir, 'file.vhdx');
    assert.equal(vdisk('convert', '--streamed', '-O', 'vhdx', src, file).status, 0);
    assert.equal(statSync(piped).size, statSync(file).size);
    assert.equal(vdisk('compare', piped, file).status, 0);
    // An existing target is refused unless --overwrite.
    const again = vdisk('convert', '--streamed', '-O', 'vhdx', src, file);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /already exists/);
    assert.equal(vdisk('convert', '--streamed', '--overwrite', '-O', 'raw', src, file).status, 0);
    assert.equal(statSync(file).size, 6 * MiB);
    for (const [args, why] of [
      [['-n'], /-n writes into an existing target/],
      [['-S', '0'], /-S does not apply/],
      [['-O', 'add-cow'], /cannot be written as a stream/],
      [['-o', 'subformat=fixed', '-O', 'vhdx'], /a fixed VHDX cannot be streamed/],
    ] as const) {
      const r = vdisk('convert', '-O', 'raw', ...args, src, '-');
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, why);
      assert.equal(r.stdout, '');
    }
    // A terminal as stdout is refused (script(1), from util-linux, gives the command a pseudo-terminal).
    const tty = spawnSync('script', ['-qec', `${VDISK} convert -O raw ${q(src)} -`, '/dev/null'], { encoding: 'utf8' });
    assert.equal(tty.status, 1, tty.stdout);
    assert.match(tty.stdout, /vdisk: stdout is a terminal: pipe or redirect the image/);
    assert.deepEqual(readdirSync(dir).filter((n) => n.includes('vdisk-tmp')), []);
  } finally {
    cleanup();
  }
});

/** A store whose reads fail when a range at or past `from` is read a second time (the stream's pass, after the plan's). */
function failingSecondPass(inner: Store, from: number): Store {
  const seen = new Set<number>();
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'read') {
        return async (offset: number, into: Uint8Array) => {
          if (offset >= from) {
            if (seen.has(offset)) throw new Error(`injected read failure at ${offset}`);
            seen.add(offset);
          }
          return target.read(offset, into);
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

test('a stream that fails half-way leaves nothing under the target name (file sink) and aborts the sink', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const src = join(dir, 'src.raw');
    writeFileSync(src, randomBytes(rng(3), 12 * MiB));
    const failing: StoreOpener = async (p, o) => {
      const s = await openFileStore(p, o);
      return p === src ? failingSecondPass(s, 8 * MiB) : s;
    };
    const target = join(dir, 'out.vhd');
    const sink = await fileSink(target);
    let aborted = 0;
    let written = 0;
    const counting: ByteSink = {
      location: sink.location,
      write: async (d) => {
        await sink.write(d);
        written += d.length;
      },
      finish: () => sink.finish(),
      abort: async (reason) => {
        aborted++;
        await sink.abort(reason);
      },
    };
    await assert.rejects(convertToSink({ source: src, targetFormat: 'vhd', openStore: failing, sink: counting }), /injected read failure/);
    assert.ok(written > 4 * MiB, 'the failure came half-way through the stream');
    assert.equal(aborted, 1);
    assert.equal(existsSync(target), false);
    assert.deepEqual(readdirSync(dir).sort(), ['src.raw']);
  } finally {
    cleanup();
  }
});

/**
 * Property: for random disks (random data, written zeros, runs equal to the
 * backing), the sequential writer's image holds the same disk as the
 * seekable convert's, costs the same bytes, and is exactly as long as planned.
 */
test('property: sequential output = seekable output for random allocation maps (raw, VHD, VHDX, with and without -B)', async () => {
  const { dir, cleanup } = tempDir();
  try {
    for (let seed = 1; seed <= 12; seed++) {
      const r = rng(seed);
      const format = ['raw', 'vhd', 'vhdx'][seed % 3];
      const differencing = format !== 'raw' && seed % 2 === 0;
      const size = (format === 'vhdx' ? randInt(r, 3, 9) : randInt(r, 2, 9)) * MiB + randInt(r, 0, 7) * 512 * (format === 'vhd' ? 1 : 0);
      const options: Record<string, string> =
        format === 'vhd' ? { block_size: String([4096, 65536, 512 * 1024, 2 * MiB][randInt(r, 0, 3)]), force_size: 'on' } : format === 'vhdx' ? { block_size: '1M' } : {};
      const sub = join(dir, `s${seed}`);
      run('mkdir', ['-p', sub]);
      const base = join(sub, `base.${format}`);
      const src = join(sub, 'src.raw');
      const disk = new Uint8Array(size);
      if (differencing) {
        await createImage({ path: base, format, size, options: format === 'vhd' ? { force_size: 'on', block_size: options.block_size } : options });
        const b = await openChain(base);
        try {
          for (let i = 0; i < 6; i++) {
            const off = randInt(r, 0, size / 512 - 1) * 512;
            const len = Math.min(size - off, randInt(r, 1, 512) * 512);
            const data = randomBytes(r, len);
            await b.write(off, data);
            disk.set(data, off);
          }
        } finally {
          await b.close();
        }
      }
      // The source: the backing's disk (or zeros) changed here and there.
      for (let i = 0; i < 8; i++) {
        const off = randInt(r, 0, size / 512 - 1) * 512;
        const len = Math.min(size - off, randInt(r, 1, 1024) * 512);
        const kind = randInt(r, 0, 2);
        if (kind === 0) disk.set(randomBytes(r, len), off);
        else if (kind === 1) disk.fill(0, off, off + len);
        else disk.fill(randInt(r, 1, 255), off, off + len);
      }
      writeFileSync(src, disk);
      const backing = differencing ? { path: base } : undefined;
      const seek = join(sub, `seek.${format}`);
      await convert({ source: src, target: seek, targetFormat: format, options, backing });
      const seq = join(sub, `seq.${format}`);
      const plan = await planSequentialConvert({ source: src, targetFormat: format, options, backing, target: seq });
      const sink = await fileSink(seq);
      try {
        await plan.write(sink);
      } finally {
        await plan.close();
      }
      const what = `seed ${seed}: ${format}${differencing ? ' -B' : ''} ${JSON.stringify(options)} size ${size}`;
      assert.equal(statSync(seq).size, plan.length, `${what}: planned length`);
      assert.equal(statSync(seq).size, statSync(seek).size, `${what}: same cost as the seekable convert`);
      const a = await vdiskDigest(seq);
      assert.equal(a.digest, (await vdiskDigest(seek)).digest, `${what}: same disk`);
      if (format !== 'raw') {
        const m = await measureImage({ source: src, format, options, streamed: true, backing: differencing ? { path: base } : undefined });
        assert.equal(m['streamed-size'], plan.length, `${what}: measure`);
        assert.equal(vdisk('check', seq).status, 0, `${what}: check`);
      }
    }
  } finally {
    cleanup();
  }
});

test('planSequentialConvert: a wrong request fails before anything is written', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const src = join(dir, 'src.raw');
    writeFileSync(src, new Uint8Array(MiB));
    await assert.rejects(planSequentialConvert({ source: src, targetFormat: 'add-cow' }), (e) => isBlockError(e, 'unsupported'));
    await assert.rejects(planSequentialConvert({ source: join(dir, 'missing'), targetFormat: 'vhd' }), (e) => isBlockError(e, 'not-found'));
  } finally {
    cleanup();
  }
});

/** Nothing but `keep` in `dir`: no output, no temporary file. */
function onlyThese(dir: string, keep: string[]): void {
  assert.deepEqual(readdirSync(dir).sort(), [...keep].sort());
}

test('stdin raw with --size: exact stream converted; a short or a long stream is one clear error and leaves nothing', (tc) => {
  if (!requireTool(tc, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  try {
    const src = sourceDisk(dir);
    const out = join(dir, 'out.vhdx');
    let r = sh(`cat ${q(src)} | ${VDISK} convert -f raw --size 40M -O vhdx - ${q(out)}`);
    assert.equal(r.status, 0, r.stderr);
    assert.match(qemuImg('compare', '-f', 'raw', '-F', 'vhdx', src, out), /Images are identical/);
    // Raw in, raw out: stdin to stdout.
    const copy = join(dir, 'copy.raw');
    r = sh(`cat ${q(src)} | ${VDISK} convert -f raw --size 40M -O raw - - | cat > ${q(copy)}; exit \${PIPESTATUS[1]}`);
    assert.equal(r.status, 0, r.stderr);
    assert.match(qemuImg('compare', '-f', 'raw', '-F', 'raw', src, copy), /Images are identical/);
    const bad = join(dir, 'bad.vhd');
    for (const [feed, why] of [
      [`head -c 1000000 ${q(src)}`, /^vdisk: stdin: the stream ended after 1000000 bytes, but --size gives 41943040/],
      [`cat ${q(src)} ${q(src)}`, /^vdisk: stdin: the stream holds more than the 41943040 bytes --size gives/],
      [`{ cat ${q(src)}; printf x; }`, /^vdisk: stdin: the stream holds more than the 41943040 bytes --size gives/],
    ] as const) {
      r = sh(`${feed} | ${VDISK} convert -f raw --size 40M -O vhd - ${q(bad)}`);
      assert.equal(r.status, 1, feed);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, why);
      onlyThese(dir, ['src.raw', 'out.vhdx', 'copy.raw']);
    }
    for (const [args, why] of [
      [['-f', 'raw'], /a raw stream from stdin needs --size N/],
      [['--size', '40M'], /--size applies to a raw stream \(-f raw\)/],
    ] as const) {
      r = sh(`cat ${q(src)} | ${VDISK} convert ${args.join(' ')} -O vhd - ${q(bad)}`);
      assert.equal(r.status, 1);
      assert.match(r.stderr, why);
    }
    onlyThese(dir, ['src.raw', 'out.vhdx', 'copy.raw']);
  } finally {
    cleanup();
  }
});

test('stdin VHD and VHDX streams (from the sequential writers and from qemu-img) read in file order', (tc) => {
  if (!requireTool(tc, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  try {
    const src = sourceDisk(dir);
    for (const format of ['vhd', 'vhdx']) {
      // One vdisk writes the stream, another reads it: nothing touches a file in between.
      const out = join(dir, `piped-${format}.raw`);
      const r = sh(`${VDISK} convert -O ${format} ${q(src)} - | ${VDISK} convert -O raw - ${q(out)}; exit \${PIPESTATUS[1]}`);
      assert.equal(r.status, 0, r.stderr);
      assert.match(qemuImg('compare', '-f', 'raw', '-F', 'raw', src, out), /Images are identical/);
      // Stdin to stdout: a VHD/VHDX stream in, the raw disk out (its end checked before the stream is complete).
      const through = join(dir, `through-${format}.raw`);
      const rt = sh(`${VDISK} convert -O ${format} ${q(src)} - | ${VDISK} convert -O raw - - > ${q(through)}; exit \${PIPESTATUS[1]}`);
      assert.equal(rt.status, 0, rt.stderr);
      assert.match(qemuImg('compare', '-f', 'raw', '-F', 'raw', src, through), /Images are identical/);
      const made = join(dir, `qemu.${format}`);
      qemuImg('convert', '-f', 'raw', '-O', QEMU_NAME[format], src, made);
      const out2 = join(dir, `qemu-${format}.raw`);
      const r2 = sh(`cat ${q(made)} | ${VDISK} convert -f ${format} -O raw - ${q(out2)}`);
      assert.equal(r2.status, 0, r2.stderr);
      assert.match(qemuImg('compare', '-f', 'raw', '-F', 'raw', src, out2), /Images are identical/);
    }
    // A VHD child holding more than the stream's 64 MiB buffer: its bitmaps are read just before their blocks (a small map window).
    const big = join(dir, 'big.raw');
    writeFileSync(big, randomBytes(rng(21), 96 * MiB));
    const bigBase = join(dir, 'bigbase.vhd');
    assert.equal(vdisk('create', '-f', 'vhd', '-o', 'force_size=on', bigBase, '96M').status, 0);
    assert.equal(vdisk('io', '-c', 'write -P 0x11 0 8M', bigBase).status, 0);
    const bigOut = join(dir, 'big-out.raw');
    const rb = sh(`cd ${q(dir)} && ${VDISK} convert -O vhd -B bigbase.vhd big.raw - | ${VDISK} convert -O raw - big-out.raw; exit \${PIPESTATUS[1]}`);
    assert.equal(rb.status, 0, rb.stderr);
    assert.match(qemuImg('compare', '-f', 'raw', '-F', 'raw', big, bigOut), /Images are identical/);
    // A differencing stream reads its parent (named relative to the current folder) while the child streams by.
    const base = join(dir, 'base.vhdx');
    assert.equal(vdisk('create', '-f', 'vhdx', base, '40M').status, 0);
    assert.equal(vdisk('io', '-c', 'write -P 0x11 0 8M', base).status, 0);
    const r3 = sh(`cd ${q(dir)} && ${VDISK} convert -O vhdx -B base.vhdx src.raw - | ${VDISK} convert -O raw - child.raw; exit \${PIPESTATUS[1]}`);
    assert.equal(r3.status, 0, r3.stderr);
    assert.match(qemuImg('compare', '-f', 'raw', '-F', 'raw', src, join(dir, 'child.raw')), /Images are identical/);
  } finally {
    cleanup();
  }
});

test('stdin streams that cannot be read in order: a backward seek past the buffer, a truncated stream, a fixed VHD, two passes', (tc) => {
  if (!requireTool(tc, 'qemu-img')) return;
  const { dir, cleanup } = tempDir();
  try {
    // Blocks written last to first: the file holds them in reverse disk order, 32 MiB apart.
    const rev = join(dir, 'rev.vhdx');
    assert.equal(vdisk('create', '-f', 'vhdx', rev, '128M').status, 0);
    assert.equal(vdisk('io', '-c', 'write -P 3 96M 1M', '-c', 'write -P 2 64M 1M', '-c', 'write -P 1 32M 1M', '-c', 'write -P 9 0 1M', rev).status, 0);
    const src = sourceDisk(dir);
    const fixed = join(dir, 'fixed.vhd');
    assert.equal(vdisk('convert', '-O', 'vhd', '-o', 'subformat=fixed', src, fixed).status, 0);
    const dyn = join(dir, 'dyn.vhd');
    assert.equal(vdisk('convert', '-O', 'vhd', src, dyn).status, 0);
    const keep = ['rev.vhdx', 'src.raw', 'fixed.vhd', 'dyn.vhd'];
    const out = join(dir, 'out.raw');
    for (const [feed, args, why] of [
      [`cat ${q(rev)}`, [], /^vdisk: stdin: bytes at offset \d+ were needed after offset \d+ had passed \(a stream keeps only its last 64 MiB\); a stream must hold its blocks in file order/],
      [`head -c 3000000 ${q(dyn)}`, [], /^vdisk: stdin: the stream ended after 3000000 bytes, but the image needs bytes up to offset \d+ \(the stream is truncated\)/],
      [`{ cat ${q(dyn)}; printf x; }`, [], /^vdisk: stdin: the VHD stream \(\d+ bytes\) does not end with its footer/],
      [`head -c ${statSync(dyn).size - 512} ${q(dyn)}`, [], /^vdisk: stdin: the VHD stream \(\d+ bytes\) does not end with its footer/],
      [`cat ${q(fixed)}`, [], /^vdisk: stdin: not a VHD or VHDX stream that can be read from its start \(a fixed VHD's only footer is at its end/],
      [`cat ${q(fixed)}`, ['-f', 'vhd'], /^vdisk: stdin: not a vhd stream/],
      [`cat ${q(dyn)}`, ['-f', 'vhdx'], /^vdisk: stdin: not a vhdx stream/],
    ] as const) {
      const r = sh(`${feed} | ${VDISK} convert ${args.join(' ')} -O raw - ${q(out)}`);
      assert.equal(r.status, 1, `${feed}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, why);
      onlyThese(dir, keep);
    }
    const r = sh(`cat ${q(dyn)} | ${VDISK} convert -O vhd - -`);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /can be streamed out as raw only/);
    assert.equal(r.stdout, '');
  } finally {
    cleanup();
  }
});

test('library: planSequentialConvert gives the length first, then streams exactly that many bytes into any Writable (an uploader)', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const src = join(dir, 'src.raw');
    const disk = new Uint8Array(5 * MiB);
    disk.set(randomBytes(rng(11), MiB), 3 * MiB);
    writeFileSync(src, disk);
    const plan = await planSequentialConvert({ source: src, targetFormat: 'vhdx', options: { block_size: '1M' } });
    const announced = plan.length; // what a Content-Length header would carry
    const chunks: Buffer[] = [];
    let ended = false;
    const upload = new Writable({
      write(chunk: Buffer, _enc, cb) {
        chunks.push(Buffer.from(chunk));
        setImmediate(cb); // a slow consumer: every write waits for it
      },
      final(cb) {
        ended = true;
        cb();
      },
    });
    try {
      await plan.write(streamSink(upload, 'upload'));
    } finally {
      await plan.close();
    }
    assert.ok(ended, 'the sink ended the stream');
    const body = Buffer.concat(chunks);
    assert.equal(body.length, announced);
    const file = join(dir, 'up.vhdx');
    writeFileSync(file, body);
    assert.equal((await vdiskDigest(file)).digest, (await vdiskDigest(src)).digest);
    assert.equal(plan.blocks, 1);
    // An upload that fails: the write rejects with one BlockError naming the sink, and the plan aborts it.
    const plan2 = await planSequentialConvert({ source: src, targetFormat: 'raw' });
    const broken = new Writable({
      write(_chunk, _enc, cb) {
        cb(new Error('connection reset'));
      },
    });
    try {
      await assert.rejects(plan2.write(streamSink(broken, 'upload')), (e) => isBlockError(e, 'io') && /^upload: writing failed \(connection reset\) after 0 bytes$/.test((e as Error).message));
      assert.ok(broken.destroyed);
      await assert.rejects(plan2.write(streamSink(broken, 'upload')), /written once/);
    } finally {
      await plan2.close();
    }
  } finally {
    cleanup();
  }
});
