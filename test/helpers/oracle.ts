import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { openChain, type ChainOpenOptions } from '../../src/chain/open.js';
import { nativeAddon, type NativeAddon } from '../../src/io/native.js';
import { REPO_ROOT } from './corpus.js';

/**
 * Outside oracles: qemu-img / qemu-io, libvhdi (pyvhdi under /usr/bin/python3)
 * and NBD clients. Locally a missing tool skips the test; under CI=true it
 * fails, so an oracle can never be silently absent where it matters.
 */
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';

function hasTool(cmd: string, args: string[] = ['--version']): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.status === 0;
}

function hasPyvhdi(): boolean {
  return spawnSync('/usr/bin/python3', ['-c', 'import pyvhdi'], { stdio: 'ignore' }).status === 0;
}

/**
 * Returns true when the tool is there. Otherwise fails the test under CI and
 * skips it elsewhere (returning false: the caller returns at once).
 */
export function requireTool(t: TestContext, name: 'qemu-img' | 'qemu-io' | 'pyvhdi' | 'nbdinfo' | 'nbdcopy' | 'qemu-nbd'): boolean {
  const ok = name === 'pyvhdi' ? hasPyvhdi() : hasTool(name);
  if (ok) return true;
  if (IN_CI) throw new Error(`${name} is required in CI but not installed (see .ci/run)`);
  t.skip(`${name} not installed`);
  return false;
}

/** Run a command, returning stdout; throws with stderr on a non-zero exit. */
export function run(
  cmd: string,
  args: string[],
  options: { input?: string | Buffer; allowFail?: boolean; /** Added to this process's environment. */ env?: Record<string, string> } = {},
): { stdout: string; stderr: string; status: number } {
  const env = options.env ? { ...process.env, ...options.env } : undefined;
  const r = spawnSync(cmd, args, { input: options.input, maxBuffer: 256 * 1024 * 1024, encoding: 'buffer', env });
  const out = { stdout: r.stdout?.toString() ?? '', stderr: r.stderr?.toString() ?? '', status: r.status ?? -1 };
  if (!options.allowFail && out.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${out.status}: ${out.stderr || out.stdout}`);
  }
  return out;
}

export function qemuImg(...args: string[]): string {
  return run('qemu-img', args).stdout;
}

export function qemuIo(format: string, file: string, ...commands: string[]): string {
  return run('qemu-io', ['-f', format, ...commands.flatMap((c) => ['-c', c]), file]).stdout;
}

export function tempDir(prefix = 'vdisk-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Digest of a whole disk as vdisk reads it (through its chain unless layerOnly). */
/** Open options for an add-cow over a raw backing: add-cow records no backing format, and raw is never probed (docs/security.md). */
export const RAW_BACKING: ChainOpenOptions = { backingFormats: ['raw'] };

export async function vdiskDigest(path: string, options: ChainOpenOptions = {}): Promise<{ digest: string; size: number }> {
  const chain = await openChain(path, { readOnly: true, ...options });
  try {
    const h = createHash('sha256');
    const chunk = 4 << 20;
    const buf = new Uint8Array(chunk);
    for (let off = 0; off < chain.size; off += chunk) {
      const n = Math.min(chunk, chain.size - off);
      const part = buf.subarray(0, n);
      await chain.read(off, part);
      h.update(part);
    }
    return { digest: h.digest('hex'), size: chain.size };
  } finally {
    await chain.close();
  }
}

/** A small disk's whole content as vdisk reads it (crash tests compare sectors of it). */
export async function readWholeDisk(path: string, options: ChainOpenOptions = {}): Promise<Uint8Array> {
  const c = await openChain(path, options);
  try {
    const out = new Uint8Array(c.size);
    await c.read(0, out);
    return out;
  } finally {
    await c.close();
  }
}

/** Digest of a disk as qemu-img reads it (converted to raw in a temporary folder). */
export async function qemuDigest(path: string, format: string): Promise<{ digest: string; size: number }> {
  const t = tempDir('vdisk-oracle-');
  try {
    const out = join(t.dir, 'out.raw');
    qemuImg('convert', '-f', format, '-O', 'raw', path, out);
    const size = Number(JSON.parse(qemuImg('info', '--output=json', '-f', 'raw', out))['virtual-size']);
    return { digest: await sha256File(out), size };
  } finally {
    t.cleanup();
  }
}

/**
 * Digest of a disk as libvhdi reads it. `chain` lists the files top first;
 * each child gets its parent through set_parent (how pyvhdi reads chains).
 * Works for VHD and VHDX (pyvhdi opens both).
 */
export function pyvhdiDigest(chain: string[]): { digest: string; size: number } {
  const script = `
import sys, hashlib, pyvhdi
paths = sys.argv[1:]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in range(len(files) - 1, 0, -1):
    files[i - 1].set_parent(files[i])
top = files[0]
size = top.get_media_size()
h = hashlib.sha256()
off = 0
while off < size:
    n = min(4 << 20, size - off)
    data = top.read_buffer_at_offset(n, off)
    if len(data) != n:
        raise SystemExit("short read at %d" % off)
    h.update(data)
    off += n
print(h.hexdigest(), size)
`;
  const out = run('/usr/bin/python3', ['-c', script, ...chain]).stdout.trim().split(/\s+/);
  return { digest: out[0], size: Number(out[1]) };
}

/** Read [offset, offset+length) through pyvhdi (top first, parents after). */
export function pyvhdiRead(chain: string[], offset: number, length: number): Buffer {
  const script = `
import sys, pyvhdi
off, n = int(sys.argv[1]), int(sys.argv[2])
files = []
for p in sys.argv[3:]:
    f = pyvhdi.file(); f.open(p); files.append(f)
for i in range(len(files) - 1, 0, -1):
    files[i - 1].set_parent(files[i])
sys.stdout.buffer.write(files[0].read_buffer_at_offset(n, off))
`;
  const r = spawnSync('/usr/bin/python3', ['-c', script, String(offset), String(length), ...chain], { maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`pyvhdi read failed: ${r.stderr}`);
  return r.stdout;
}

/**
 * Digest of a VHDX chain (files top first) as the reader written from the
 * VHDX specification reads it (test/oracles/vhdx_reader.py).
 */
export function vhdxReaderDigest(files: string[]): { digest: string; size: number } {
  const out = run('python3', [join(REPO_ROOT, 'test', 'oracles', 'vhdx_reader.py'), ...files]).stdout.trim().split(/\s+/);
  return { digest: out[0], size: Number(out[1]) };
}

/** vdisk's native addon, or a skip outside CI (in CI it must load: its paths are tested through it). */
export function requireNativeAddon(t: TestContext): NativeAddon | null {
  const a = nativeAddon();
  if (a) return a;
  if (IN_CI) throw new Error('the native addon is required in CI but did not load (npm run build: scripts/native.mjs)');
  t.skip('native addon not built');
  return null;
}
