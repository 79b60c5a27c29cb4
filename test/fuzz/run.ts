import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { Session } from 'node:inspector/promises';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlockError } from '../../src/core/errors.js';
import { MemoryFs, MemoryStore } from '../../src/io/memory-store.js';
import { openChain } from '../../src/chain/open.js';
import { createImage } from '../../src/ops/create.js';
import { checkImage } from '../../src/ops/check.js';
import { NbdParser, NbdProtocolError } from '../../src/nbd/parser.js';
import { Negotiation } from '../../src/nbd/handshake.js';
import { makeExport } from '../../src/nbd/export.js';
import * as P from '../../src/nbd/protocol.js';
import { CACHE_DIR, SHARED_CORPUS, corpusDir } from '../helpers/corpus.js';
import { rng, randInt } from '../helpers/random.js';
import { dirtyDifferencingVhdx, resealVhd, resealVhdx } from '../helpers/mutate.js';

/*
 * `npm run fuzz`: a coverage-guided fuzzer for the parsers, with no extra
 * dependency. jazzer.js (libFuzzer for Node) was tried first: its prebuilt
 * native fuzzer needs glibc 2.38 and does not load on Debian 12, and building
 * it needs a compiler toolchain and libFuzzer sources that `npm ci` cannot
 * provide offline. So the loop is the classic one (AFL, libFuzzer) over V8's
 * own block coverage, read through the inspector: run an input, take the
 * precise coverage of dist/src (which also resets the counters), and keep
 * the input in the queue when it reached a block no input reached before;
 * then pick queued inputs, mutate them and go on.
 *
 * Targets: every image format's open (read-write, so a dirty VHDX log is
 * replayed) + block status + reads of its data + check, over mutated corpus
 * images and images vdisk makes itself (so a fresh clone without the corpus
 * still fuzzes something), and the NBD frame parser with the handshake state
 * machine over mutated client byte streams.
 *
 * Invariants: only BlockError escapes an image (NbdProtocolError the
 * parser); no case hangs (each is bounded in time: async stalls by a timer,
 * a busy loop by the watchdog in the main thread); no single allocation over
 * --max-alloc (checked on Buffer and typed-array constructors). A failure is
 * told apart by its error name, its message with numbers blanked and the
 * first stack frame in src/; the first input of each is saved under
 * .cache/fuzz/ for replay.
 *
 * Usage: npm run fuzz [-- --cases N] [--seed S] [--target vhd,vhdx,add-cow,nbd]
 *        [--max-alloc MiB] [--timeout-ms N]
 * The run is deterministic for a seed (up to timing of the bounds).
 */

const MiB = 1 << 20;
const KiB = 1024;
const TARGETS = ['vhd', 'vhdx', 'add-cow', 'nbd'] as const;
type TargetName = (typeof TARGETS)[number];

interface Options {
  cases: number;
  seed: number;
  targets: TargetName[];
  maxAllocMiB: number;
  timeoutMs: number;
}

interface FailureSummary {
  key: string;
  count: number;
  example: string;
  saved: string;
}

interface TargetResult {
  target: TargetName;
  cases: number;
  seeds: number;
  queue: number;
  blocks: number;
  ms: number;
  failures: FailureSummary[];
  hang?: string;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { cases: 0, seed: 1, targets: [...TARGETS], maxAllocMiB: 64, timeoutMs: 10_000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    const num = () => {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw new Error(`${a} needs a number (got ${v})`);
      i++;
      return n;
    };
    if (a === '--cases') o.cases = num();
    else if (a === '--seed') o.seed = num();
    else if (a === '--max-alloc') o.maxAllocMiB = num();
    else if (a === '--timeout-ms') o.timeoutMs = num();
    else if (a === '--target') {
      o.targets = String(v)
        .split(',')
        .map((t) => {
          if (!(TARGETS as readonly string[]).includes(t)) throw new Error(`unknown target ${t} (known: ${TARGETS.join(', ')})`);
          return t as TargetName;
        });
      i++;
    } else if (a === '--help' || a === '-h') {
      console.log('npm run fuzz [-- --cases N] [--seed S] [--target vhd,vhdx,add-cow,nbd] [--max-alloc MiB] [--timeout-ms N]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

/** Cases per target when --cases is not given: about a minute each on a laptop, a few minutes in all. */
const DEFAULT_CASES: Record<TargetName, number> = { vhd: 3000, vhdx: 1500, 'add-cow': 3000, nbd: 20000 };

// ---------------------------------------------------------------- main thread

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const results: TargetResult[] = [];
  for (const target of o.targets) {
    const cases = o.cases || DEFAULT_CASES[target];
    results.push(await runWorker(target, { ...o, cases }));
    const r = results[results.length - 1];
    console.log(
      `${r.target.padEnd(8)} ${String(r.cases).padStart(6)} cases  ${String(r.seeds).padStart(3)} seeds  queue ${String(r.queue).padStart(4)}  ` +
        `${String(r.blocks).padStart(5)} blocks covered  ${String(r.failures.length).padStart(2)} distinct failures  ${(r.ms / 1000).toFixed(1)} s` +
        (r.hang ? `  HANG: ${r.hang}` : ''),
    );
    for (const f of r.failures) console.log(`  ${f.count}x ${f.key}\n     e.g. ${f.example.split('\n')[0]}\n     input: ${f.saved}`);
  }
  const total = results.reduce((n, r) => n + r.cases, 0);
  const failures = results.reduce((n, r) => n + r.failures.length + (r.hang ? 1 : 0), 0);
  console.log(`total: ${total} cases, ${failures} distinct failures, ${((Date.now() - started) / 1000).toFixed(1)} s (seed ${o.seed})`);
  process.exitCode = failures ? 1 : 0;
}

/**
 * One target in a worker: a case stuck in a synchronous loop cannot be
 * interrupted from its own thread, so the worker reports each case and the
 * main thread ends it when no case finishes for a while.
 */
function runWorker(target: TargetName, o: Options): Promise<TargetResult> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(fileURLToPath(import.meta.url), { workerData: { target, options: o } });
    let lastCase = 0;
    let lastProgress = Date.now();
    const started = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - lastProgress < 3 * o.timeoutMs + 10_000) return;
      clearInterval(watchdog);
      void worker.terminate();
      resolve({
        target,
        cases: lastCase,
        seeds: 0,
        queue: 0,
        blocks: 0,
        ms: Date.now() - started,
        failures: [],
        hang: `case ${lastCase + 1} did not finish (replay: npm run fuzz -- --target ${target} --seed ${o.seed} --cases ${lastCase + 1})`,
      });
    }, 1000);
    worker.on('message', (m: { progress?: number; result?: TargetResult }) => {
      if (m.progress !== undefined) {
        lastCase = m.progress;
        lastProgress = Date.now();
      }
      if (m.result) {
        clearInterval(watchdog);
        resolve(m.result);
      }
    });
    worker.on('error', (e) => {
      clearInterval(watchdog);
      reject(e);
    });
  });
}

// ---------------------------------------------------------------- inputs and mutations

/** A file of a seed: the fuzzed one, plus files it needs (a parent, an add-cow image file) kept as they are. */
interface Seed {
  name: string;
  /** Path of the fuzzed file in the in-memory folder. */
  path: string;
  bytes: Uint8Array;
  others: Map<string, Uint8Array>;
}

type Edit =
  | { op: 'set'; at: number; width: 1 | 2 | 4 | 8; value: number; little: boolean }
  | { op: 'flip'; at: number; bit: number }
  | { op: 'copy'; from: number; at: number; length: number }
  | { op: 'truncate'; length: number }
  | { op: 'insert'; at: number; bytes: number[] }
  | { op: 'delete'; at: number; length: number }
  | { op: 'reseal' };

/** A queued input: a seed and the edits that make it (inputs of hundreds of MiB are not copied into the queue). */
interface Entry {
  seed: number;
  edits: Edit[];
}

const INTERESTING = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x200, 0x1000, 0x7fff, 0x8000, 0xffff, 0x10000, 0x100000, 0x200000, 0x7fffffff, 0x80000000, 0xffffffff, 2 ** 32, 2 ** 40, 2 ** 53 - 1];

interface Target {
  seeds(): Promise<Seed[]>;
  /** Byte ranges where the structures of this input are (mutations go there most of the time). */
  hot(bytes: Uint8Array): { offset: number; length: number }[];
  /** Recompute the checksums a mutation broke, so it reaches the checks behind them. */
  reseal(bytes: Uint8Array): void;
  /** Big-endian on-disk integers? */
  bigEndian: boolean;
  run(seed: Seed, bytes: Uint8Array): Promise<void>;
  /** Whether an escaping error is allowed. */
  allowed(e: unknown): boolean;
}

function mutate(r: () => number, t: Target, bytes: Uint8Array): Edit[] {
  const edits: Edit[] = [];
  const n = 1 + Math.floor(-Math.log2(1 - r() * 0.99)); // mostly 1-3 edits, sometimes more
  const hot = t.hot(bytes);
  const pick = (width: number): number => {
    if (bytes.length <= width) return 0;
    if (r() < 0.85 && hot.length) {
      const h = hot[Math.floor(r() * hot.length)];
      const at = h.offset + Math.floor(r() * Math.max(1, h.length - width));
      // Fields are aligned: most of the time, hit a field start.
      return Math.min(r() < 0.7 ? at - (at % width) : at, bytes.length - width);
    }
    return Math.floor(r() * (bytes.length - width));
  };
  for (let i = 0; i < n; i++) {
    const k = r();
    if (k < 0.45) {
      const width = ([1, 2, 4, 8] as const)[Math.floor(r() * 4)];
      const base = INTERESTING[Math.floor(r() * INTERESTING.length)];
      const value = r() < 0.3 ? Math.floor(r() * 2 ** 32) : r() < 0.5 ? base + randInt(r, -2, 2) : base;
      edits.push({ op: 'set', at: pick(width), width, value, little: r() < 0.5 ? !t.bigEndian : t.bigEndian });
    } else if (k < 0.7) edits.push({ op: 'flip', at: pick(1), bit: Math.floor(r() * 8) });
    else if (k < 0.8) edits.push({ op: 'copy', from: pick(64), at: pick(64), length: randInt(r, 1, 64) });
    else if (k < 0.85) edits.push({ op: 'truncate', length: r() < 0.5 ? pick(1) : Math.floor(r() * bytes.length) });
    else if (k < 0.9) edits.push({ op: 'insert', at: pick(1), bytes: Array.from({ length: randInt(r, 1, 16) }, () => Math.floor(r() * 256)) });
    else if (k < 0.95) edits.push({ op: 'delete', at: pick(1), length: randInt(r, 1, 16) });
    else edits.push({ op: 'reseal' });
  }
  if (r() < 0.5) edits.push({ op: 'reseal' });
  return edits;
}

function apply(t: Target, seed: Uint8Array, edits: Edit[], copy: boolean): Uint8Array {
  let b = copy ? seed.slice() : seed;
  for (const e of edits) {
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    switch (e.op) {
      case 'set':
        if (e.at + e.width > b.length) break;
        if (e.width === 1) dv.setUint8(e.at, e.value & 0xff);
        else if (e.width === 2) dv.setUint16(e.at, e.value & 0xffff, e.little);
        else if (e.width === 4) dv.setUint32(e.at, e.value >>> 0, e.little);
        else dv.setBigUint64(e.at, BigInt.asUintN(64, BigInt(Math.trunc(e.value))), e.little);
        break;
      case 'flip':
        if (e.at < b.length) b[e.at] ^= 1 << e.bit;
        break;
      case 'copy':
        if (e.from + e.length <= b.length && e.at + e.length <= b.length) b.copyWithin(e.at, e.from, e.from + e.length);
        break;
      case 'truncate':
        b = b.slice(0, Math.min(e.length, b.length));
        break;
      case 'insert': {
        const at = Math.min(e.at, b.length);
        const out = new Uint8Array(b.length + e.bytes.length);
        out.set(b.subarray(0, at));
        out.set(e.bytes, at);
        out.set(b.subarray(at), at + e.bytes.length);
        b = out;
        break;
      }
      case 'delete': {
        const at = Math.min(e.at, b.length);
        const out = new Uint8Array(b.length - Math.min(e.length, b.length - at));
        out.set(b.subarray(0, at));
        out.set(b.subarray(at + e.length), at);
        b = out;
        break;
      }
      case 'reseal':
        t.reseal(b);
        break;
    }
  }
  return b;
}

// ---------------------------------------------------------------- targets

/** Corpus files with these endings, at most `max` bytes each (the corpus is optional: a clone without it fuzzes vdisk's own images). */
function corpusSeeds(ext: RegExp, max: number): Seed[] {
  let dir: string;
  try {
    readdirSync(SHARED_CORPUS);
    dir = corpusDir();
  } catch {
    return [];
  }
  const out: Seed[] = [];
  const walk = (d: string): void => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else if (ext.test(name) && st.size <= max) {
        const rel = p.slice(dir.length + 1);
        out.push({ name: rel, path: `/c/${name}`, bytes: new Uint8Array(readFileSync(p)), others: new Map() });
      }
    }
  };
  walk(dir);
  return out;
}

/** The files of a MemoryFs as a seed: `path` is fuzzed, the rest kept. */
function fromFs(name: string, fs: MemoryFs, path: string): Seed {
  const others = new Map<string, Uint8Array>();
  for (const [p, s] of fs.files) if (p !== path) others.set(p, s.bytes());
  return { name, path, bytes: fs.files.get(path)!.bytes(), others };
}

/** Open (read-write: dirty logs are replayed, in memory), block status, read the data, check. */
async function exerciseImage(seed: Seed, bytes: Uint8Array): Promise<void> {
  const fs = new MemoryFs();
  for (const [p, b] of seed.others) fs.files.set(p, new MemoryStore(p, b.slice()));
  fs.files.set(seed.path, new MemoryStore(seed.path, bytes));
  const openStore = fs.opener();
  // add-cow records no backing format; the seeds' raw backings are raw because we made them so (docs/security.md).
  const chain = await openChain(seed.path, { openStore, backingFormats: ['raw'] });
  try {
    const extents = await chain.blockStatus(0, chain.size);
    // Read every data extent, at most 1 MiB of each and 16 MiB in all (a case stays in milliseconds).
    let budget = 16 * MiB;
    const buf = readBuffer;
    for (const e of extents) {
      if (e.kind !== 'data' || budget <= 0) continue;
      const n = Math.min(e.length, buf.length, budget);
      await chain.read(e.offset, buf.subarray(0, n));
      budget -= n;
    }
    const tail = Math.min(chain.size, 64 * KiB);
    await chain.read(chain.size - tail, buf.subarray(0, tail));
  } finally {
    await chain.close();
  }
  await checkImage({ path: seed.path, openStore });
}

/** Allocated before the allocation bound is armed: the harness's own reads do not count. */
let readBuffer = new Uint8Array(0);

const isBlockError = (e: unknown) => e instanceof BlockError;

const vhd: Target = {
  bigEndian: true,
  async seeds() {
    const out = corpusSeeds(/\.vhd$/, 16 * MiB);
    const fs = new MemoryFs();
    const openStore = fs.opener();
    await createImage({ path: '/d/parent.vhd', format: 'vhd', size: 4 * MiB, options: { force_size: 'on' }, openStore });
    let c = await openChain('/d/parent.vhd', { openStore });
    await c.write(0, new Uint8Array(3 * MiB).fill(1));
    await c.close();
    await createImage({ path: '/d/child.vhd', format: 'vhd', backing: { path: 'parent.vhd', format: 'vhd' }, openStore });
    c = await openChain('/d/child.vhd', { openStore });
    await c.write(MiB - 512, new Uint8Array(4096).fill(2));
    await c.close();
    await createImage({ path: '/d/fixed.vhd', format: 'vhd', size: MiB, options: { subformat: 'fixed' }, openStore });
    out.push(fromFs('own dynamic', fs, '/d/parent.vhd'), fromFs('own differencing', fs, '/d/child.vhd'), fromFs('own fixed', fs, '/d/fixed.vhd'));
    return out;
  },
  hot(b) {
    // Footer copy, dynamic header (with the parent locators), the start of the BAT, the end footer, a sector bitmap.
    const out = [{ offset: 0, length: Math.min(b.length, 1536) }];
    if (b.length > 512) out.push({ offset: b.length - 512, length: 512 });
    if (b.length >= 1536) {
      const bat = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(512 + 16));
      if (bat < b.length) out.push({ offset: bat, length: Math.min(4096, b.length - bat) });
      const first = bat + 4 <= b.length ? new DataView(b.buffer, b.byteOffset).getUint32(bat) * 512 : -1;
      if (first >= 0 && first < b.length) out.push({ offset: first, length: Math.min(512, b.length - first) });
    }
    return out;
  },
  reseal: resealVhd,
  run: exerciseImage,
  allowed: isBlockError,
};

const vhdx: Target = {
  bigEndian: false,
  async seeds() {
    const out = corpusSeeds(/\.a?vhdx$/, 40 * MiB);
    const { fs, dirty } = await dirtyDifferencingVhdx();
    out.push({ ...fromFs('own differencing (dirty log)', fs, '/d/c.vhdx'), bytes: dirty }, fromFs('own dynamic', fs, '/d/p.vhdx'));
    return out;
  },
  hot(b) {
    // Header section (identifier, headers, region tables), the log, the metadata region, the start of the BAT.
    const out = [{ offset: 0, length: Math.min(b.length, 320 * KiB) }];
    if (b.length < 320 * KiB) return out;
    const dv = new DataView(b.buffer, b.byteOffset);
    const logOffset = Number(dv.getBigUint64(64 * KiB + 80, true));
    const logLength = dv.getUint32(64 * KiB + 76, true);
    if (logOffset + 4 * KiB <= b.length) out.push({ offset: logOffset, length: Math.min(logLength, 64 * KiB, b.length - logOffset) });
    const count = Math.min(dv.getUint32(192 * KiB + 8, true), 4);
    for (let i = 0; i < count; i++) {
      const off = Number(dv.getBigUint64(192 * KiB + 16 + i * 32 + 16, true));
      if (off + 4 * KiB <= b.length) out.push({ offset: off, length: Math.min(68 * KiB, b.length - off) });
    }
    return out;
  },
  reseal: resealVhdx,
  run: exerciseImage,
  allowed: isBlockError,
};

const addCow: Target = {
  bigEndian: true,
  async seeds() {
    const fs = new MemoryFs();
    const openStore = fs.opener();
    await createImage({ path: '/d/base.raw', format: 'raw', size: 4 * MiB, openStore });
    await createImage({ path: '/d/top.add-cow', format: 'add-cow', backing: { path: 'base.raw', format: 'raw' }, openStore });
    const c = await openChain('/d/top.add-cow', { openStore, backingFormats: ['raw'] });
    await c.write(5000, new Uint8Array(70000).fill(9));
    await c.close();
    await createImage({ path: '/d/alone.add-cow', format: 'add-cow', size: MiB, options: { image_file: 'alone.raw' }, openStore });
    return [fromFs('own add-cow over raw', fs, '/d/top.add-cow'), fromFs('own add-cow without backing', fs, '/d/alone.add-cow')];
  },
  hot: (b) => [{ offset: 0, length: Math.min(b.length, 4096) }],
  reseal: () => {},
  run: exerciseImage,
  allowed: isBlockError,
};

/** Client bytes in every phase: handshake options, then requests (the export is a 1 MiB in-memory raw disk). */
async function nbdSeeds(): Promise<Seed[]> {
  const opt = (option: number, data: Uint8Array = new Uint8Array(0)) => {
    const b = Buffer.alloc(16 + data.length);
    b.write('IHAVEOPT', 0, 'latin1');
    b.writeUInt32BE(option, 8);
    b.writeUInt32BE(data.length, 12);
    b.set(data, 16);
    return b;
  };
  const req = (command: number, flags: number, offset: number, length: number, payload?: Uint8Array) => {
    const b = Buffer.alloc(28 + (payload?.length ?? 0));
    b.writeUInt32BE(P.REQUEST_MAGIC, 0);
    b.writeUInt16BE(flags, 4);
    b.writeUInt16BE(command, 6);
    b.writeBigUInt64BE(7n, 8);
    b.writeBigUInt64BE(BigInt(offset), 16);
    b.writeUInt32BE(length, 24);
    if (payload) b.set(payload, 28);
    return b;
  };
  const flags = Buffer.from([0, 0, 0, 3]);
  const name = Buffer.from('disk');
  const named = (extra: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, name.length]), name, extra]);
  const meta = named(Buffer.concat([Buffer.from([0, 0, 0, 1, 0, 0, 0, 15]), Buffer.from('base:allocation')]));
  const go = named(Buffer.from([0, 2, 0, 3, 0, 1]));
  const requests = Buffer.concat([
    req(P.CMD_READ, 0, 0, 4096),
    req(P.CMD_WRITE, P.CMD_FLAG_FUA, 512, 16, new Uint8Array(16).fill(1)),
    req(P.CMD_BLOCK_STATUS, P.CMD_FLAG_REQ_ONE, 0, 65536),
    req(P.CMD_WRITE_ZEROES, P.CMD_FLAG_NO_HOLE, 0, 4096),
    req(P.CMD_FLUSH, 0, 0, 0),
    req(P.CMD_TRIM, 0, 0, 4096),
    req(P.CMD_DISC, 0, 0, 0),
  ]);
  const streams: [string, Buffer][] = [
    ['handshake: structured, meta context, list, info, go, requests', Buffer.concat([flags, opt(P.OPT_STRUCTURED_REPLY), opt(P.OPT_LIST_META_CONTEXT, meta), opt(P.OPT_SET_META_CONTEXT, meta), opt(P.OPT_LIST), opt(P.OPT_INFO, go), opt(P.OPT_GO, go), requests])],
    ['handshake: export name, requests', Buffer.concat([flags, opt(P.OPT_EXPORT_NAME, name), requests])],
    ['handshake: starttls, unknown option, abort', Buffer.concat([flags, opt(P.OPT_STARTTLS), opt(0x77, Buffer.from('xyz')), opt(P.OPT_ABORT)])],
  ];
  return streams.map(([n, b]) => ({ name: n, path: '', bytes: new Uint8Array(b), others: new Map() }));
}

let nbdExport: ReturnType<typeof makeExport> | undefined;

const nbd: Target = {
  bigEndian: true,
  async seeds() {
    const fs = new MemoryFs();
    await createImage({ path: '/d/disk.raw', format: 'raw', size: MiB, openStore: fs.opener() });
    nbdExport = makeExport(await openChain('/d/disk.raw', { openStore: fs.opener() }), { name: 'disk', multiConn: true });
    return nbdSeeds();
  },
  hot: (b) => [{ offset: 0, length: b.length }],
  reseal: () => {},
  /**
   * As a connection drives them: the parser's mode follows the handshake; the
   * bytes arrive cut at places the input's last byte chooses (the parser must
   * give the same frames for any cut, which the unit tests check; here: that
   * nothing but NbdProtocolError escapes, and no frame is absurdly large).
   */
  async run(_seed, bytes) {
    const parser = new NbdParser({ maxPayload: 32 * MiB });
    const negotiation = new Negotiation(nbdExport!);
    const cut = bytes.length ? 1 + (bytes[bytes.length - 1] % 61) : 1;
    let handshake = true;
    for (let at = 0; at < bytes.length; at += cut) {
      parser.push(Buffer.from(bytes.subarray(at, at + cut)));
      for (let f = parser.next(); f; f = parser.next()) {
        if (!handshake) continue;
        const step = negotiation.handle(f);
        if (step.next === 'close') return;
        if (step.next === 'transmission') {
          handshake = false;
          parser.mode = 'request';
        } else if (f.type === 'client-flags') parser.mode = 'option';
      }
    }
  },
  allowed: (e) => e instanceof NbdProtocolError,
};

const TARGET_IMPL: Record<TargetName, Target> = { vhd, vhdx, 'add-cow': addCow, nbd };

// ---------------------------------------------------------------- worker: the loop

class AllocationTooLarge extends Error {}

/**
 * Every Buffer and typed array made with a size over the bound throws (while
 * `armed`): a header that makes the library allocate what the file cannot
 * hold is a failure even where the machine could afford it.
 */
function boundAllocations(max: number, armed: () => boolean): void {
  const check = (n: unknown) => {
    if (!armed() || typeof n !== 'number' || n <= max) return;
    // The in-memory files stand in for the disk: their copies and growth are the harness's, not the parser's.
    if (new Error().stack?.includes('/io/memory-store.js')) return;
    throw new AllocationTooLarge(`allocation of ${n} bytes (bound ${max})`);
  };
  for (const k of ['alloc', 'allocUnsafe', 'allocUnsafeSlow'] as const) {
    const orig = Buffer[k] as (size: number, ...rest: unknown[]) => Buffer;
    (Buffer as unknown as Record<string, unknown>)[k] = function (size: number, ...rest: unknown[]) {
      check(size);
      return orig.call(Buffer, size, ...rest);
    };
  }
  const g = globalThis as unknown as Record<string, unknown>;
  for (const name of ['ArrayBuffer', 'SharedArrayBuffer', 'Uint8Array', 'Uint16Array', 'Uint32Array', 'Int32Array', 'Float64Array', 'BigUint64Array', 'BigInt64Array']) {
    const ctor = g[name] as new (...a: unknown[]) => object;
    const per = (ctor as unknown as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
    g[name] = new Proxy(ctor, {
      construct(target, args, newTarget) {
        if (typeof args[0] === 'number') check(args[0] * per);
        return Reflect.construct(target, args, newTarget);
      },
    });
  }
}

/** Where a failure comes from: error name, message with numbers blanked, first frame in src/ (or the first frame). */
function failureKey(e: unknown): string {
  if (!(e instanceof Error)) return `thrown non-Error: ${typeof e}`;
  const message = e.message.replace(/0x[0-9a-f]+/gi, 'N').replace(/\d+/g, 'N').slice(0, 160);
  const frames = (e.stack ?? '').split('\n').filter((l) => l.trim().startsWith('at '));
  const frame = frames.find((l) => l.includes('/src/')) ?? frames[0] ?? '';
  const where = /\/(src\/[^):]+):(\d+)/.exec(frame);
  return `${e.constructor.name}: ${message}${where ? ` @ ${where[1]}:${where[2]}` : ''}`;
}

class Timeout extends Error {}

async function bounded(p: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([p, new Promise<void>((_, reject) => (timer = setTimeout(() => reject(new Timeout(`case did not finish within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

async function workerMain(): Promise<void> {
  const { target: name, options: o } = workerData as { target: TargetName; options: Options };
  const t = TARGET_IMPL[name];
  const r = rng(o.seed * 7919 + TARGETS.indexOf(name));
  readBuffer = new Uint8Array(MiB);
  // Block coverage is only counted in functions compiled after it is turned on: before any library code runs.
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
  const seeds = await t.seeds();
  let armed = false;
  boundAllocations(o.maxAllocMiB * MiB, () => armed);
  const seen = new Set<string>();
  /** Blocks of dist/src this case ran that no case ran before. */
  const newCoverage = async (): Promise<number> => {
    const { result } = await session.post('Profiler.takePreciseCoverage');
    let fresh = 0;
    for (const script of result) {
      if (!script.url.includes('/dist/src/')) continue;
      for (const fn of script.functions) {
        for (const range of fn.ranges) {
          if (range.count === 0) continue;
          const key = `${script.scriptId}:${range.startOffset}:${range.endOffset}`;
          if (!seen.has(key)) {
            seen.add(key);
            fresh++;
          }
        }
      }
    }
    return fresh;
  };

  const failures = new Map<string, FailureSummary>();
  const outDir = join(CACHE_DIR, 'fuzz');
  mkdirSync(outDir, { recursive: true });
  const runCase = async (entry: Entry, bytes: Uint8Array): Promise<boolean> => {
    const seed = seeds[entry.seed];
    armed = true;
    try {
      await bounded(t.run(seed, bytes), o.timeoutMs);
    } catch (e) {
      if (!t.allowed(e)) {
        const key = failureKey(e);
        const f = failures.get(key);
        if (f) f.count++;
        else {
          const hash = createHash('sha256').update(bytes).digest('hex').slice(0, 12);
          const saved = join(outDir, `${name}-${hash}.bin`);
          writeFileSync(saved, bytes);
          failures.set(key, { key, count: 1, example: `${seed.name}: ${(e as Error)?.stack ?? String(e)}`, saved });
        }
      }
    } finally {
      armed = false;
    }
    return (await newCoverage()) > 0;
  };

  const started = Date.now();
  const queue: Entry[] = [];
  await newCoverage(); // what loading and seeding ran does not count
  let cases = 0;
  for (let i = 0; i < seeds.length && cases < o.cases; i++) {
    const e = { seed: i, edits: [] };
    if ((await runCase(e, seeds[i].bytes.slice())) || queue.length === 0) queue.push(e);
    parentPort!.postMessage({ progress: ++cases });
  }
  while (cases < o.cases) {
    // Newer entries (deeper in the code) are picked more often than old ones.
    const parent = queue[Math.floor(queue.length * Math.sqrt(r()))];
    const base = apply(t, seeds[parent.seed].bytes, parent.edits, true);
    const more = mutate(r, t, base);
    // Inputs of tens of MiB: one copy per case (the parent's bytes are edited in place).
    const bytes = apply(t, base, more, false);
    const entry = { seed: parent.seed, edits: [...parent.edits, ...more] };
    // An input that grew too many edits is not kept as a parent (replaying it would cost more than it finds).
    if ((await runCase(entry, bytes)) && entry.edits.length <= 64) queue.push(entry);
    parentPort!.postMessage({ progress: ++cases });
  }
  await session.post('Profiler.stopPreciseCoverage');
  session.disconnect();
  const result: TargetResult = {
    target: name,
    cases,
    seeds: seeds.length,
    queue: queue.length,
    blocks: seen.size,
    ms: Date.now() - started,
    failures: [...failures.values()].sort((a, b) => b.count - a.count),
  };
  parentPort!.postMessage({ result });
}

if (isMainThread) {
  main().catch((e) => {
    console.error(`fuzz: ${(e as Error)?.stack ?? e}`);
    process.exitCode = 2;
  });
} else await workerMain();
