import { join } from 'node:path';
import { FORMATS } from '../src/formats/registry.js';
import type { Inputs, LargeInputs } from './inputs.js';
import { formatAvailable, vdiskBin, workerJs } from './peers.js';

/**
 * The case table (plain data, like the CLI's command table). A case runs
 * each of its tools several times, alternating; the subject tools (role
 * 'vdisk') are compared with every 'peer' tool of the same case.
 */

export type Role = 'vdisk' | 'peer';

export interface Tool {
  name: string;
  role: Role;
  /** Why this tool cannot run here (not installed, feature not landed yet...). */
  unavailable?: string;
  argv: string[];
  /** Run (untimed) before each run, after `outputs` are deleted: puts a fresh input in place for a tool that changes its input (compact). */
  prepare?: string[];
  /** Files to delete before and after each run (targets). */
  outputs?: string[];
  /** Virtual bytes this tool handles, when not the case's. */
  bytes?: number;
  /** Take the process's own timing (open excluded) instead of its wall time. */
  inner?: boolean;
  /**
   * A server started before the case's runs and stopped after them (NBD);
   * argv is then the client. The tool's peak RSS is the server's (VmHWM).
   */
  server?: { argv: string[]; socket: string };
  /** Run before each measured run, untimed (fresh copies of the files a commit changes). */
  setup?: string[];
}

export interface Case {
  id: string;
  group: 'reference' | 'convert' | 'commit' | 'read' | 'chain' | 'memory' | 'add-cow' | 'nbd' | 'compact';
  title: string;
  /** Virtual bytes handled per run (for MB/s). */
  bytes: number;
  /** Part of the --quick subset. */
  quick?: boolean;
  /** Fewer runs than asked (long cases). */
  maxRuns?: number;
  /** The whole case cannot run (its feature has not landed yet). */
  unavailable?: string;
  tools: Tool[];
  /** Most peak RSS a vdisk run may use (bytes); over it the case is flagged. */
  rssLimit?: number;
  /** What the numbers must show, in words. */
  goal?: string;
  /** Most a time-per-byte ratio `subject/peer` may be (`vdisk/cp` compares with the ref-cp case). */
  limits?: Record<string, number>;
  note?: string;
  /** Drop the page cache (sync; echo 3 > /proc/sys/vm/drop_caches) before each run: the source is read from the disk. */
  cold?: boolean;
  /** The reference case whose cp time `vdisk/cp` is judged against (default ref-cp). */
  cpRef?: string;
}

export interface CaseOptions {
  /** Read requests per read case run, by request size. */
  readCount: (bs: number) => number;
  /** Chain reads cover every block of the disk (full runs), not readCount requests. */
  chainWholeDisk?: boolean;
  /** Bytes the add-cow write case writes (flush every 1 MiB / every write). */
  addCowWrite: { batched: number; perWrite: number };
}

const node = process.execPath;
const vdiskCli = (...args: string[]) => [node, vdiskBin(), ...args];
const worker = (op: string, job: object) => [node, workerJs(), op, JSON.stringify(job)];

/** Only the create options a vdisk format declares (so a case keeps working while a format grows). */
function vdiskOptions(format: string, wanted: Record<string, string>): string[] {
  const f = FORMATS.find((x) => x.name === format);
  const known = new Set(f?.createOptions.map((o) => o.name) ?? []);
  const kv = Object.entries(wanted).filter(([k]) => known.has(k));
  return kv.length ? ['-o', kv.map(([k, v]) => `${k}=${v}`).join(',')] : [];
}

/** qemu-img's name for a vdisk format. */
const QEMU_FMT: Record<string, string> = { raw: 'raw', vhd: 'vpc', vhdx: 'vhdx' };
/** Target options, the same for both tools: dynamic images, VHD size kept exact. */
const TARGET_OPTS: Record<string, Record<string, string>> = {
  raw: {},
  vhd: { subformat: 'dynamic', force_size: 'on' },
  vhdx: { subformat: 'dynamic' },
};

/**
 * How converts treat the target's durability, the same for every tool of a
 * case: 'unsafe' = no sync (qemu-img convert's default, and vdisk's once its
 * convert has `-t`); 'writeback' = one fdatasync at the end (what vdisk
 * convert did before it had `-t`).
 */
export type CacheMode = 'unsafe' | 'writeback';

function qemuConvert(src: string, srcFmt: string, dst: string, dstFmt: string, cache: CacheMode): Tool {
  const opts = Object.entries(TARGET_OPTS[dstFmt]).map(([k, v]) => `${k}=${v}`);
  return {
    name: 'qemu-img',
    role: 'peer',
    argv: ['qemu-img', 'convert', '-t', cache, '-f', QEMU_FMT[srcFmt], '-O', QEMU_FMT[dstFmt], ...(opts.length ? ['-o', opts.join(',')] : []), src, dst],
    outputs: [dst],
  };
}

function vdiskConvert(src: string, srcFmt: string, dst: string, dstFmt: string, cache: CacheMode, hasCacheOption: boolean): Tool {
  const missing = formatAvailable(srcFmt) ?? formatAvailable(dstFmt, true);
  return {
    name: 'vdisk',
    role: 'vdisk',
    unavailable: missing ?? undefined,
    argv: vdiskCli('convert', ...(hasCacheOption ? ['-t', cache] : []), '-f', srcFmt, '-O', dstFmt, ...vdiskOptions(dstFmt, TARGET_OPTS[dstFmt]), src, dst),
    outputs: [dst],
  };
}

/**
 * The same CLI run with the native addon turned off (VDISK_NATIVE=0):
 * converts to raw copy file to file through it, and this shows what it
 * buys. `env` adds an exec of ~1 ms.
 */
function withoutAddon(t: Tool): Tool {
  return { ...t, name: 'vdisk, no addon', argv: ['env', 'VDISK_NATIVE=0', ...t.argv] };
}

/** convert() through the library in one worker, timed inside (Node start-up and module loading excluded). */
function vdiskLibConvert(src: string, srcFmt: string, dst: string, dstFmt: string, cache: CacheMode): Tool {
  const missing = formatAvailable(srcFmt) ?? formatAvailable(dstFmt, true);
  const opts = Object.fromEntries(Object.entries(TARGET_OPTS[dstFmt]).filter(([k]) => vdiskOptions(dstFmt, { [k]: '' }).length));
  return {
    name: 'vdisk lib',
    role: 'vdisk',
    unavailable: missing ?? undefined,
    inner: true,
    argv: worker('convert', { src, srcFormat: srcFmt, dst, dstFormat: dstFmt, options: opts, cache }),
    outputs: [dst],
  };
}

export interface Environment {
  vhdLibMissing: string | null;
  serveMissing: string | null;
  /** vdisk convert accepts `-t unsafe|writeback`. */
  convertCache: boolean;
}

/** Issue 21's goals: every convert at most 0.8x qemu-img's time and 1.2x cp's for the same data. */
const CONVERT_GOAL = 'vdisk/qemu-img <= 0.8, vdisk/vhd-lib <= 0.5, vdisk/cp <= 1.2; peak RSS < 256 MiB';
const CONVERT_LIMITS = { 'vdisk/qemu-img': 0.8, 'vdisk/vhd-lib': 0.5, 'vdisk/cp': 1.2 };
const FLATTEN_GOAL = 'vdisk/cp <= 1.3; peak RSS < 256 MiB';
const FLATTEN_LIMITS = { 'vdisk/cp': 1.3 };
/** A flatten into a dynamic VHD is a flatten (1.3x cp), still held to the converts' limit against vhd-lib, its one peer. */
const FLATTEN_VHD_GOAL = 'vdisk/cp <= 1.3, vdisk/vhd-lib <= 0.5; peak RSS < 256 MiB';
const FLATTEN_VHD_LIMITS = { ...FLATTEN_LIMITS, 'vdisk/vhd-lib': CONVERT_LIMITS['vdisk/vhd-lib'] };

/**
 * `--large`: the 4 GiB cases (inputs: buildLargeInputs), warm and cold.
 * Cold runs drop the page cache before each run, so the source is read from
 * the disk as it is on a real host; `dropCaches` is null when this machine
 * lets the bench do that, else why not (the cold cases are then skipped).
 */
export function buildLargeCases(L: LargeInputs, env: Environment & { dropCaches: string | null }): Case[] {
  const cache: CacheMode = env.convertCache ? 'unsafe' : 'writeback';
  const sync = cache === 'writeback';
  const w = (name: string) => join(L.dir, name);
  const cases: Case[] = [];
  for (const cold of [false, true]) {
    const tag = cold ? '-cold' : '';
    const cpOut = w(`out-cp${tag}.raw`);
    cases.push({
      id: `ref-cp-4g${tag}`,
      group: 'reference',
      title: `cp --sparse=always 4 GiB in.raw${cold ? ', cold cache' : ''}`,
      bytes: L.size,
      cold,
      unavailable: cold ? (env.dropCaches ?? undefined) : undefined,
      note: 'half of its 2 MiB blocks data (2 GiB), the rest holes',
      tools: [{ name: 'cp', role: 'peer', argv: ['sh', '-c', `cp --sparse=always "$1" "$2"${sync ? ' && sync -d "$2"' : ''}`, 'sh', L.raw, cpOut], outputs: [cpOut] }],
    });
  }
  const denseOut = w('out-cp-dense.raw');
  cases.push({
    id: 'ref-cp-1g-dense',
    group: 'reference',
    title: 'cp 1 GiB of data (no holes)',
    bytes: 2 ** 30,
    note: 'the reference for committing a child that holds 1 GiB of data',
    tools: [{ name: 'cp', role: 'peer', argv: ['sh', '-c', `cp --sparse=always "$1" "$2"${sync ? ' && sync -d "$2"' : ''}`, 'sh', L.dense, denseOut], outputs: [denseOut] }],
  });
  const pairs: [string, string, string][] = [
    ['raw', L.raw, 'vhd'],
    ['raw', L.raw, 'vhdx'],
    ['vhd', L.vhd, 'vhdx'],
    ['vhdx', L.vhdx, 'vhd'],
  ];
  for (const cold of [false, true]) {
    for (const [sf, src, df] of pairs) {
      const dst = w(`out-convert.${df}`);
      const tag = cold ? '-cold' : '';
      cases.push({
        id: `convert4g-${sf}-${df}${tag}`,
        group: 'convert',
        title: `convert 4 GiB ${sf} → ${df}${cold ? ', cold cache' : ''}`,
        bytes: L.size,
        cold,
        cpRef: `ref-cp-4g${tag}`,
        unavailable: cold ? (env.dropCaches ?? undefined) : undefined,
        goal: CONVERT_GOAL,
        limits: CONVERT_LIMITS,
        rssLimit: 256 << 20,
        tools: [vdiskConvert(src, sf, dst, df, cache, env.convertCache), qemuConvert(src, sf, dst, df, cache)],
      });
    }
  }
  const flat = w('out-chain.vhdx');
  cases.push({
    id: 'convert4g-chain5-vhdx',
    group: 'convert',
    title: 'flatten 4 GiB depth-5 VHD chain → dynamic VHDX',
    bytes: L.size,
    cpRef: 'ref-cp-4g',
    unavailable: L.missing.chain,
    goal: FLATTEN_GOAL,
    limits: FLATTEN_LIMITS,
    rssLimit: 256 << 20,
    note: 'no peer follows a VHD chain into a VHDX; judged against cp of the same amount of disk',
    tools: [{ name: 'vdisk', role: 'vdisk', argv: vdiskCli('convert', ...(env.convertCache ? ['-t', cache] : []), '-O', 'vhdx', L.chain5 ?? '', flat), outputs: [flat] }],
  });
  // Commit: each run gets fresh copies of the pair (untimed), as a commit changes its parent.
  const master = L.commitDir ?? '';
  const runDir = w('commit-run');
  const fresh = ['sh', '-c', 'rm -rf "$2" && mkdir -p "$2" && cp --sparse=always -p "$1/parent.vhd" "$1/child.vhd" "$2/"', 'sh', master, runDir];
  cases.push({
    id: 'commit4g-1g-child',
    group: 'commit',
    title: 'commit a VHD child holding 1 GiB into its 4 GiB parent',
    bytes: L.commitChildBytes,
    cpRef: 'ref-cp-1g-dense',
    unavailable: L.missing.commit,
    goal: 'vdisk/cp <= 1.3 (cp of 1 GiB of data), vdisk/vhd-lib <= 0.3; peak RSS < 256 MiB',
    limits: { 'vdisk/cp': 1.3, 'vdisk/vhd-lib': 0.3 },
    rssLimit: 256 << 20,
    note: 'vdisk commit -d -t unsafe (the child keeps its data, as vhd-lib\'s merge leaves it; no syncs, as neither vhd-lib\'s merge nor cp syncs); vdisk, writeback: its default, which waits for the device at the end; vhd-lib: mergeVhd(parent, child); the copies are made before each run, untimed',
    tools: [
      { name: 'vdisk', role: 'vdisk', setup: fresh, argv: vdiskCli('commit', '-q', '-d', '-t', 'unsafe', join(runDir, 'child.vhd')), outputs: [runDir] },
      { name: 'vdisk, writeback', role: 'vdisk', setup: fresh, argv: vdiskCli('commit', '-q', '-d', '-t', 'writeback', join(runDir, 'child.vhd')), outputs: [runDir] },
      { name: 'vhd-lib', role: 'peer', setup: fresh, unavailable: env.vhdLibMissing ?? undefined, argv: worker('vhdlib-merge', { parent: join(runDir, 'parent.vhd'), child: join(runDir, 'child.vhd') }), outputs: [runDir] },
    ],
  });
  cases.push(...compactCases(w, L.raw, L.size, '-4g'));
  return cases;
}

/**
 * Issue 20's compact cases on a disk of `size` bytes made from `raw` (half
 * of its 2 MiB blocks data): the bench's scale, and with `--large` the
 * 4 GiB the issue names (`tag` -4g). Each vdisk run compacts a fresh copy
 * in place (made untimed); qemu-img copies out the same file.
 */
function compactCases(w: (name: string) => string, raw: string, size: number, tag: string): Case[] {
  const out: Case[] = [];
  // A VHD with every block allocated, half of them zero-filled: in.raw converted with -S 0 (zeros written).
  const zeroed = w(`compact-zeroed${tag}.vhd`);
  const work = w(`compact-work${tag}.vhd`);
  const qOut = w(`out-compact-qemu${tag}.vhd`);
  const make = ['sh', '-c', '[ -f "$1" ] || qemu-img convert -q -S 0 -f raw -O vpc -o subformat=dynamic,force_size=on "$2" "$1"', 'sh', zeroed, raw];
  out.push({
    id: `compact-zero-vhd${tag}`,
    group: 'compact',
    title: `compact --mode zero: ${size / 2 ** 30} GiB VHD, half its blocks zero-filled, vs qemu-img convert -O vpc`,
    bytes: size,
    goal: 'vdisk/qemu-img <= 0.5, same size or smaller',
    limits: { 'vdisk/qemu-img': 0.5 },
    note: 'vdisk compacts a fresh full copy (cp --sparse=never, then sync of that file: both untimed) in place, -t unsafe (no syncs, as qemu-img convert, whose only sync is of the empty file it creates); vdisk, writeback: its default, which flushes before each change of the block table; qemu-img copies out the same file',
    tools: [
      { name: 'vdisk', role: 'vdisk', prepare: ['sh', '-c', `${make[2]} && cp --sparse=never "$1" "$3" && sync "$3"`, 'sh', zeroed, raw, work], argv: vdiskCli('compact', '-q', '-t', 'unsafe', '--mode', 'zero', work), outputs: [work] },
      { name: 'vdisk, writeback', role: 'vdisk', prepare: ['sh', '-c', `${make[2]} && cp --sparse=never "$1" "$3" && sync "$3"`, 'sh', zeroed, raw, work], argv: vdiskCli('compact', '-q', '--mode', 'zero', work), outputs: [work] },
      { name: 'qemu-img', role: 'peer', prepare: make, argv: ['qemu-img', 'convert', '-f', 'vpc', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', zeroed, qOut], outputs: [qOut] },
    ],
  });
  // An ext4 filling the disk to ~80% with 16 files, half of them then deleted with debugfs (not zeroed), in a dynamic VHDX with 1 MiB blocks (as WSL's ext4.vhdx).
  const ext = w(`compact-ext4${tag}.vhdx`);
  const extWork = w(`compact-ext4-work${tag}.vhdx`);
  const extOut = w(`out-compact-qemu${tag}.vhdx`);
  const fileMiB = Math.floor((size / 2 ** 20) * 0.8 / 16);
  const build = [
    'sh', '-c',
    'set -e; if [ ! -f "$1" ]; then d="$1.d"; rm -rf "$d"; mkdir -p "$d/src"; for i in $(seq 1 16); do head -c $(($3 * 1048576 + 4096)) /dev/urandom > "$d/src/f$i"; done; ' +
      'truncate -s "$2" "$d/fs.raw"; PATH="$PATH:/usr/sbin:/sbin"; mkfs.ext4 -q -F -b 4096 -d "$d/src" "$d/fs.raw"; ' +
      'for i in $(seq 1 2 16); do debugfs -w -R "rm /f$i" "$d/fs.raw" >/dev/null 2>&1; done; ' +
      `"$4" "$5" convert -f raw -O vhdx -o block_size=1M "$d/fs.raw" "$1" > /dev/null; rm -rf "$d"; fi`,
    'sh', ext, String(size), String(fileMiB), node, vdiskBin(),
  ];
  out.push({
    id: `compact-fs-ext4-vhdx${tag}`,
    group: 'compact',
    title: `compact --mode fs: ${size / 2 ** 30} GiB VHDX, ext4 with half its data deleted, vs qemu-img convert -O vhdx`,
    bytes: size,
    unavailable: formatAvailable('vhdx') ?? undefined,
    goal: 'vdisk/qemu-img <= 0.5; the file ends within 5% of the data the file system still uses (qemu-img cannot drop the deleted data)',
    limits: { 'vdisk/qemu-img': 0.5 },
    note: 'vdisk compacts a fresh copy (cp --sparse=always, untimed) in place; qemu-img copies out the same file',
    tools: [
      { name: 'vdisk', role: 'vdisk', prepare: ['sh', '-c', `${build[2]}; cp --sparse=always "$1" "$6"`, 'sh', ext, String(size), String(fileMiB), node, vdiskBin(), extWork], argv: vdiskCli('compact', '-q', '--mode', 'fs', extWork), outputs: [extWork] },
      { name: 'qemu-img', role: 'peer', prepare: build, argv: ['qemu-img', 'convert', '-f', 'vhdx', '-O', 'vhdx', '-o', 'block_size=1M', ext, extOut], outputs: [extOut] },
    ],
  });
  return out;
}

export function buildCases(inp: Inputs, o: CaseOptions, env: Environment): Case[] {
  const { vhdLibMissing, serveMissing } = env;
  // Before vdisk convert had -t it always synced the target once: then everyone syncs.
  const cache: CacheMode = env.convertCache ? 'unsafe' : 'writeback';
  const sync = cache === 'writeback';
  const w = (name: string) => join(inp.dir, name);
  const size = inp.scale.size;
  const cases: Case[] = [];

  // --- physical-limit references --------------------------------------------
  const cpOut = w('out-cp.raw');
  cases.push({
    id: 'ref-cp',
    group: 'reference',
    title: `cp --sparse=always in.raw${sync ? ' (+ sync -d)' : ''}`,
    bytes: size,
    quick: true,
    note: `copies the half-full 1 GiB raw file keeping holes${sync ? ', then fdatasync' : ''}: what the disk and page cache allow for a convert`,
    tools: [{ name: 'cp', role: 'peer', argv: ['sh', '-c', `cp --sparse=always "$1" "$2"${sync ? ' && sync -d "$2"' : ''}`, 'sh', inp.raw, cpOut], outputs: [cpOut] }],
  });
  cases.push({
    id: 'ref-cat',
    group: 'reference',
    title: 'cat in.raw > /dev/null',
    bytes: size,
    quick: true,
    note: 'reads the whole raw file from the page cache: the ceiling for reads',
    tools: [{ name: 'cat', role: 'peer', argv: ['sh', '-c', 'cat "$1" > /dev/null', 'sh', inp.raw] }],
  });

  // --- convert ---------------------------------------------------------------
  const convertGoal = CONVERT_GOAL;
  const convertLimits = CONVERT_LIMITS;
  const pairs: [string, string, string, string, boolean][] = [
    ['raw', inp.raw, 'vhd', 'in.raw', true],
    ['raw', inp.raw, 'vhdx', 'in.raw', false],
    ['vhd', inp.vhd!, 'raw', 'in.vhd', true],
    ['vhdx', inp.vhdx!, 'raw', 'in.vhdx', true],
    ['raw', inp.raw, 'raw', 'in.raw', false],
    ['vhd', inp.vhd!, 'vhdx', 'in.vhd', false],
    ['vhdx', inp.vhdx!, 'vhd', 'in.vhdx', false],
  ];
  for (const [sf, src, df, label, quick] of pairs) {
    const dst = w(`out-convert.${df}`);
    const tools = [vdiskConvert(src, sf, dst, df, cache, env.convertCache), vdiskLibConvert(src, sf, dst, df, cache), qemuConvert(src, sf, dst, df, cache)];
    if (df === 'raw') tools.push(withoutAddon(tools[0]));
    if (sf === 'raw' && df === 'vhd') {
      tools.push({ name: 'vhd-lib', role: 'peer', unavailable: vhdLibMissing ?? undefined, argv: worker('vhdlib-from-raw', { src, dst, sync }), outputs: [dst] });
    }
    if (sf === 'vhd' && df === 'raw') {
      tools.push({ name: 'vhd-lib', role: 'peer', unavailable: vhdLibMissing ?? undefined, argv: worker('vhdlib-to-raw', { src, dst, sync }), outputs: [dst] });
    }
    cases.push({ id: `convert-${sf}-${df}`, group: 'convert', title: `convert ${label} → ${df}`, bytes: size, quick, goal: convertGoal,
      limits: convertLimits, rssLimit: 256 << 20, tools });
  }
  {
    const depth = Math.min(5, inp.chain.length);
    const top = inp.chain[depth - 1];
    const noChain = inp.missing.chain ?? (inp.chain.length < 5 ? 'chain inputs missing' : undefined);
    const dstRaw = w('out-chain.raw');
    const flatten: Tool = { name: 'vdisk', role: 'vdisk', argv: vdiskCli('convert', ...(env.convertCache ? ['-t', cache] : []), '-O', 'raw', top ?? '', dstRaw), outputs: [dstRaw] };
    cases.push({
      id: 'convert-chain5-raw',
      group: 'convert',
      title: 'convert depth-5 VHD chain → raw',
      bytes: size,
      quick: true,
      unavailable: noChain,
      goal: convertGoal,
      limits: convertLimits,
      note: 'qemu-img does not follow VHD parents (it reads a differencing VHD as a standalone disk); vhd-lib 0.7.2 has no chain-to-raw, see the next case',
      tools: [flatten, withoutAddon(flatten)],
    });
    const dstVhd = w('out-chain.vhd');
    cases.push({
      id: 'convert-chain5-vhd',
      group: 'convert',
      title: 'flatten depth-5 VHD chain → dynamic VHD',
      bytes: size,
      unavailable: noChain,
      goal: FLATTEN_VHD_GOAL,
      limits: FLATTEN_VHD_LIMITS,
      tools: [
        { name: 'vdisk', role: 'vdisk', argv: vdiskCli('convert', ...(env.convertCache ? ['-t', cache] : []), '-O', 'vhd', ...vdiskOptions('vhd', TARGET_OPTS.vhd), top ?? '', dstVhd), outputs: [dstVhd] },
        { name: 'vhd-lib', role: 'peer', unavailable: vhdLibMissing ?? undefined, argv: worker('vhdlib-flatten', { src: top, dst: dstVhd, sync }), outputs: [dstVhd] },
      ],
    });
    const dstVhdx = w('out-chain.vhdx');
    cases.push({
      id: 'convert-chain5-vhdx',
      group: 'convert',
      title: 'flatten depth-5 VHD chain → dynamic VHDX',
      bytes: size,
      unavailable: noChain,
      goal: FLATTEN_GOAL,
      limits: FLATTEN_LIMITS,
      note: 'no peer follows a VHD chain into a VHDX; judged against cp of the same amount of disk',
      tools: [{ name: 'vdisk', role: 'vdisk', argv: vdiskCli('convert', ...(env.convertCache ? ['-t', cache] : []), '-O', 'vhdx', top ?? '', dstVhdx), outputs: [dstVhdx] }],
    });
  }

  // --- reads through the library vs qemu-img bench -------------------------
  // Strided "random" reads: qemu-img bench can only step, so both tools use
  // offset_i = i * step mod size with an odd multiple of the request size (a
  // permutation of all slots that defeats read-ahead).
  const STRIDE: Record<number, number> = { 4096: 40503, 65536: 2531 };
  for (const [fmt, path] of [['raw', inp.raw], ['vhd', inp.vhd!], ['vhdx', inp.vhdx!]] as const) {
    for (const bs of [4096, 65536]) {
      for (const pattern of ['seq', 'rand'] as const) {
        for (const depth of [1, 16]) {
          const count = o.readCount(bs);
          const step = pattern === 'seq' ? bs : bs * STRIDE[bs];
          const quick = (fmt === 'raw' && bs === 4096 && depth === 1) || (fmt === 'vhd' && pattern === 'rand' && bs === 4096 && depth === 16) || (fmt === 'vhdx' && pattern === 'seq' && bs === 65536 && depth === 1);
          cases.push({
            id: `read-${fmt}-${pattern}-${bs / 1024}k-qd${depth}`,
            group: 'read',
            title: `read ${fmt} ${pattern === 'seq' ? 'sequential' : 'strided'} ${bs / 1024} KiB qd${depth}`,
            bytes: count * bs,
            quick,
            goal: 'vdisk/qemu-img <= 1.0',
            limits: { 'vdisk/qemu-img': 1.0 },
            tools: [
              { name: 'vdisk', role: 'vdisk', unavailable: formatAvailable(fmt) ?? undefined, inner: true, argv: worker('read', { path, format: fmt, count, bs, step, depth }) },
              {
                name: 'qemu-img',
                role: 'peer',
                inner: true,
                argv: ['qemu-img', 'bench', '-f', QEMU_FMT[fmt], '-t', 'writeback', '-c', String(count), '-d', String(depth), '-s', String(bs), '-S', String(step), path],
              },
            ],
          });
        }
      }
    }
  }

  // --- chain depth ------------------------------------------------------------
  for (const [kind, bs, step, depth] of [
    ['sequential 1 MiB qd1', 1 << 20, 1 << 20, 1],
    ['strided 4 KiB qd16', 4096, 4096 * STRIDE[4096], 16],
  ] as const) {
    // Every block of the disk once (at full scale: 1024 x 1 MiB, 262144 x
    // 4 KiB). With 65536 strided reads a run took ~0.15 s, of which the
    // JIT's first compilations of the deeper read path were a large,
    // fixed share: depth 5 measured 2.0-2.1x depth 1 there, 1.05x over
    // every page (same build, same files).
    const count = bs === 1 << 20 || o.chainWholeDisk ? size / bs : o.readCount(bs);
    const tools: Tool[] = [1, 5, 20].map((d) => ({
      name: `depth ${d}`,
      role: d === 1 ? 'peer' : 'vdisk',
      unavailable: inp.chain.length >= d ? undefined : (inp.missing.chain ?? `chain of depth ${d} not built (smoke scale)`),
      inner: true,
      argv: worker('read', { path: inp.chain[d - 1] ?? '', format: 'vhd', count, bs, step, depth }),
    }));
    cases.push({
      id: `chain-read-${bs === 1 << 20 ? 'seq' : 'rand'}`,
      group: 'chain',
      title: `read VHD chains, ${kind}`,
      bytes: count * bs,
      quick: bs === 1 << 20,
      unavailable: inp.missing.chain,
      goal: 'depth 5/depth 1 <= 2.0 (at least half the speed of a single dynamic disk)',
      limits: { 'depth 5/depth 1': 2.0 },
      note: 'depth 1 is in.vhd alone; every child layer adds 8 whole 2 MiB blocks and 32 scattered 64 KiB pieces',
      tools,
    });
  }

  // --- memory ---------------------------------------------------------------
  for (const df of ['vhd', 'vhdx', 'raw']) {
    const dst = w(`out-big.${df}`);
    cases.push({
      id: `memory-big-${df}`,
      group: 'memory',
      title: `convert ${inp.scale.bigSize / 2 ** 30} GiB sparse raw → ${df}`,
      bytes: inp.scale.bigSize,
      quick: df === 'vhd',
      rssLimit: 256 << 20,
      goal: 'vdisk peak RSS < 256 MiB',
      tools: [vdiskConvert(inp.bigRaw, 'raw', dst, df, cache, env.convertCache), qemuConvert(inp.bigRaw, 'raw', dst, df, cache)],
    });
  }
  cases.push({
    id: 'memory-open-huge-vhdx',
    group: 'memory',
    title: `open ${inp.scale.hugeSize / 2 ** 40} TiB dynamic VHDX (info)`,
    bytes: 0,
    rssLimit: 256 << 20,
    goal: 'well under a second, bounded memory',
    tools: [
      { name: 'vdisk', role: 'vdisk', unavailable: formatAvailable('vhdx') ?? undefined, argv: vdiskCli('info', '-f', 'vhdx', inp.hugeVhdx ?? '') },
      { name: 'qemu-img', role: 'peer', argv: ['qemu-img', 'info', '-f', 'vhdx', inp.hugeVhdx ?? ''] },
    ],
  });

  // --- compact: in place, against the copy-out alternative ----------------------
  cases.push(...compactCases(w, inp.raw, size, ''));

  // --- NBD: nbdcopy through vdisk serve vs qemu-nbd ------------------------
  for (const [fmt, path] of [['vhdx', inp.vhdx!], ['vhd', inp.vhd!]] as const) {
    for (const clients of [1, 16]) {
      const sock = (who: string) => w(`nbd-${who}-${fmt}-${clients}.sock`);
      const uri = (who: string) => `nbd+unix:///?socket=${sock(who)}`;
      // One nbdcopy (its default: up to 4 connections when the server offers
      // multi-conn), or 16 at once with one connection each (the servers take
      // 16 clients), each waited for so that a failing client fails the run.
      const client = (who: string) =>
        clients === 1
          ? ['nbdcopy', uri(who), 'null:']
          : ['sh', '-c', `pids=; for i in $(seq ${clients}); do nbdcopy -C 1 "$1" null: & pids="$pids $!"; done; for p in $pids; do wait $p || exit 1; done`, 'sh', uri(who)];
      cases.push({
        id: `nbd-${fmt}-${clients === 1 ? 'nbdcopy' : `${clients}-clients`}`,
        group: 'nbd',
        title: clients === 1 ? `nbdcopy ← ${fmt} server → null:` : `${clients} parallel nbdcopy ← ${fmt} server`,
        bytes: size * clients,
        quick: clients === 1 && fmt === 'vhdx',
        maxRuns: clients === 1 ? undefined : 2,
        unavailable: serveMissing ?? formatAvailable(fmt) ?? undefined,
        goal: clients === 1 ? 'vdisk/qemu-nbd <= 0.8' : 'server peak RSS bounded (< 256 MiB)',
        limits: clients === 1 ? { 'vdisk serve/qemu-nbd': 0.8 } : undefined,
        rssLimit: clients === 1 ? undefined : 256 << 20,
        note: 'both servers read-only, persistent, 16 clients allowed (multi-conn); peak RSS is the server\'s',
        tools: [
          { name: 'vdisk serve', role: 'vdisk', argv: client('vdisk'), server: { socket: sock('vdisk'), argv: vdiskCli('serve', '-f', fmt, '-r', '-t', '-e', '16', '-k', sock('vdisk'), path) } },
          { name: 'qemu-nbd', role: 'peer', argv: client('qemu'), server: { socket: sock('qemu'), argv: ['qemu-nbd', '-f', QEMU_FMT[fmt], '-r', '-t', '-e', '16', '-k', sock('qemu'), path] } },
        ],
      });
    }
  }

  // --- NBD writes: nbdcopy of in.raw into a fresh dynamic VHD behind each server ---
  {
    const target = (who: string) => w(`nbd-write-${who}.vhd`);
    const sock = (who: string) => w(`nbd-write-${who}.sock`);
    // Create the image, start the server (it exits when its last client
    // leaves), wait for its socket, copy with a final flush, wait for the
    // server's exit: timed end to end, the same steps for both.
    const quote = (argv: string[]) => argv.map((x) => `'${x}'`).join(' ');
    const run = (who: string, create: string[], serve: string[]) => [
      'env',
      `T=${target(who)}`,
      `S=${sock(who)}`,
      `SRC=${inp.raw}`,
      'sh',
      '-c',
      [
        'set -e',
        'rm -f "$T" "$S"',
        quote(create),
        `${quote(serve)} & pid=$!`,
        'i=0; while [ ! -S "$S" ]; do i=$((i+1)); [ $i -lt 1000 ] || exit 1; sleep 0.01; done',
        'nbdcopy --flush "$SRC" "nbd+unix:///?socket=$S"',
        'wait $pid',
      ].join('\n'),
    ];
    cases.push({
      id: 'nbd-write-vhd',
      group: 'nbd',
      title: 'nbdcopy in.raw → fresh dynamic VHD behind the server',
      bytes: size,
      unavailable: serveMissing ?? formatAvailable('vhd') ?? undefined,
      goal: 'vdisk/qemu-nbd <= 1.25 (at least 0.8x the speed)',
      limits: { 'vdisk serve/qemu-nbd': 1.25 },
      note: 'timed end to end: create the image, start the server (8 clients allowed), nbdcopy with a final flush, server exit; peak RSS is the whole script\'s largest process',
      tools: [
        {
          name: 'vdisk serve',
          role: 'vdisk',
          outputs: [target('vdisk')],
          argv: run('vdisk', vdiskCli('create', '-q', '-f', 'vhd', '-o', 'subformat=dynamic,force_size=on', target('vdisk'), String(size)), vdiskCli('serve', '-f', 'vhd', '-e', '8', '-k', sock('vdisk'), target('vdisk'))),
        },
        {
          name: 'qemu-nbd',
          role: 'peer',
          outputs: [target('qemu')],
          argv: run('qemu', ['qemu-img', 'create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic,force_size=on', target('qemu'), String(size)], ['qemu-nbd', '-f', 'vpc', '-e', '8', '-k', sock('qemu'), target('qemu')]),
        },
      ],
    });
  }

  // --- add-cow ----------------------------------------------------------------
  const addCow = formatAvailable('add-cow', true);
  const acDir = w('addcow-write');
  cases.push({
    id: 'addcow-write-flush',
    group: 'add-cow',
    title: 'add-cow sequential 4 KiB writes: flush every 1 MiB vs after every write',
    bytes: o.addCowWrite.batched,
    unavailable: addCow ?? undefined,
    goal: 'flush/1MiB ÷ flush/write <= 0.1 (time per byte: at least 10x faster)',
    limits: { 'flush/1MiB/flush/write': 0.1 },
    note: 'both over in.raw as backing; the per-write variant writes less (it is slow), ratios compare time per byte',
    tools: [
      { name: 'flush/1MiB', role: 'vdisk', inner: true, argv: worker('addcow-write', { dir: acDir, backing: inp.raw, total: o.addCowWrite.batched, bs: 4096, flushEvery: 1 << 20 }) },
      { name: 'flush/write', role: 'peer', inner: true, bytes: o.addCowWrite.perWrite, argv: worker('addcow-write', { dir: acDir, backing: inp.raw, total: o.addCowWrite.perWrite, bs: 4096, flushEvery: 4096 }) },
    ],
  });
  for (const depth of [1, 16]) {
    const count = o.readCount(4096);
    const step = 4096 * STRIDE[4096];
    cases.push({
      id: `addcow-read-rand-4k-qd${depth}`,
      group: 'add-cow',
      title: `add-cow strided 4 KiB reads qd${depth}, half written, vs its raw image file`,
      bytes: count * 4096,
      quick: depth === 1,
      unavailable: addCow ?? inp.missing.addCow,
      goal: 'add-cow/raw image file <= 1.5',
      limits: { 'add-cow/raw image file': 1.5 },
      tools: [
        { name: 'add-cow', role: 'vdisk', inner: true, argv: worker('read', { path: inp.addCow ?? '', count, bs: 4096, step, depth }) },
        { name: 'raw image file', role: 'peer', inner: true, argv: worker('read', { path: `${inp.addCow}.raw`, format: 'raw', count, bs: 4096, step, depth }) },
      ],
    });
  }
  return cases;
}
