import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { cpus, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { buildCases, buildLargeCases, type Case, type CaseOptions, type Tool } from './cases.js';
import { buildInputs, buildLargeInputs, FULL_SCALE, SMOKE_SCALE } from './inputs.js';
import { CommandError, hasGnuTime, measure, median, pausePageReporting, run, touchFreeMemory } from './measure.js';
import { convertHasCache, ensureVhdLib, REPO, serveAvailable, toolVersion, useApp, VHD_LIB_VERSION } from './peers.js';
import { formatSummary, summarizeDir, type ProfileSummary } from './profile.js';

/**
 * `npm run bench [-- options]`: build the inputs, run every case several
 * times alternating tools, print medians and ratios, save results.
 *
 *   --quick          the ~2-minute subset (3 runs, fewer cases)
 *   --large          also the 4 GiB cases (converts warm and cold-cache, flatten, commit;
 *                    ~14 GB of scratch space, about 15 minutes more on 2 cores)
 *   --smoke          tiny inputs, every case once (the smoke test uses it)
 *   --runs N         runs per tool (default 5; quick 3; smoke 1)
 *   --only a,b       only cases whose id contains one of these
 *   --profile        re-run vdisk once under --cpu-prof where it misses a goal or trails a peer
 *   --update-md      rewrite the results section of BENCHMARKS.md
 *   --work DIR       scratch folder (default bench/.work/run-<pid>); removed unless --keep
 *   --keep           keep the scratch folder
 *   --results DIR    where results.json and latest.md go (default bench/.work)
 *   --no-install     do not install vhd-lib into bench/.peers when missing
 */

interface Args {
  quick: boolean;
  large: boolean;
  smoke: boolean;
  runs: number;
  only: string[];
  profile: boolean;
  updateMd: boolean;
  work?: string;
  results?: string;
  keep: boolean;
  install: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { quick: false, large: false, smoke: false, runs: 0, only: [], profile: false, updateMd: false, keep: false, install: true };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i];
    const next = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${v} needs a value`);
      return x;
    };
    if (v === '--quick') a.quick = true;
    else if (v === '--large') a.large = true;
    else if (v === '--smoke') a.smoke = true;
    else if (v === '--runs') a.runs = Number(next());
    else if (v === '--only') a.only.push(...next().split(','));
    else if (v === '--profile') a.profile = true;
    else if (v === '--update-md') a.updateMd = true;
    else if (v === '--work') a.work = next();
    else if (v === '--keep') a.keep = true;
    else if (v === '--results') a.results = next();
    else if (v === '--no-install') a.install = false;
    else throw new Error(`unknown option ${v}`);
  }
  if (!a.runs) a.runs = a.smoke ? 1 : a.quick ? 3 : 5;
  if (!Number.isInteger(a.runs) || a.runs < 1) throw new Error('--runs must be a positive whole number');
  return a;
}

interface ToolResult {
  name: string;
  role: Tool['role'];
  unavailable?: string;
  error?: string;
  /** Seconds per run (inner timing when the tool reports one). */
  seconds: number[];
  rss: number[];
  bytes: number;
  median?: number;
  /** The fastest run: interference on this machine only ever adds time (see BENCHMARKS.md, Noise). */
  best?: number;
  mbps?: number;
  peakRss?: number;
}

interface Ratio {
  pair: string;
  /** From the medians: what the goals are judged on. */
  value: number;
  /** From the fastest runs, shown beside it. */
  best?: number;
  limit?: number;
  ok?: boolean;
}

interface CaseResult {
  id: string;
  group: Case['group'];
  title: string;
  unavailable?: string;
  goal?: string;
  note?: string;
  tools: ToolResult[];
  ratios: Ratio[];
  rssOk?: boolean;
  rssLimit?: number;
  profile?: ProfileSummary;
}

const log = (s: string) => process.stdout.write(s + '\n');
const MiB = 1 << 20;

/**
 * Write back every dirty page before a measured run (untimed). Each convert
 * leaves ~0.5 GB unsynced behind it (no tool syncs: qemu-img's `-t unsafe`),
 * and the kernel writing that back during the next runs made whichever tool
 * ran first in a case 3-6x slower (seen in results.json: 1.0-1.4 s against
 * 0.2 s), for vdisk and qemu-img alike.
 */
function syncAll(): Promise<void> {
  return new Promise((resolve) => spawn('sync', { stdio: 'ignore' }).once('exit', () => resolve()).once('error', () => resolve()));
}

/**
 * Empty the page cache (untimed, after syncAll): the next run reads its
 * source from the disk. Root only, and not in every container: null when
 * it worked, else why not.
 */
async function dropCaches(): Promise<string | null> {
  try {
    await writeFile('/proc/sys/vm/drop_caches', '3\n');
    return null;
  } catch (e) {
    return `cannot drop the page cache here (${(e as NodeJS.ErrnoException).code ?? e}): cold-cache cases skipped`;
  }
}

async function runTool(t: Tool, scratch: string, cold = false): Promise<{ seconds: number; rss?: number }> {
  for (const f of t.outputs ?? []) await rm(f, { force: true, recursive: true });
  if (t.setup) await measure(t.setup, { scratch });
  if (t.prepare) await measure(t.prepare, { scratch });
  await syncAll();
  if (cold) {
    const why = await dropCaches();
    if (why) throw new Error(why);
    // The tool's own program read back in (untimed, `--version`): a cold case measures a source on the disk, not a
    // cold interpreter. Node and the bundle are ~100 MB to read again (vdisk --version: 0.18 s cold, 0.055 s warm),
    // qemu-img a few (0.03-0.06 s cold).
    await run([...t.argv.slice(0, t.argv[0] === process.execPath ? 2 : 1), '--version']).catch(() => undefined);
  }
  try {
    const m = await measure(t.argv, { scratch });
    return { seconds: t.inner && m.inner !== undefined ? m.inner : m.wall, rss: m.rss };
  } finally {
    for (const f of t.outputs ?? []) await rm(f, { force: true, recursive: true });
  }
}

/** The informative lines of a failed command's stderr (no stack frames, no Node banner). */
function shortError(e: CommandError): string {
  const lines = e.stderr.split('\n').filter((l) => l.trim() && !/^\s+at /.test(l) && !/^Node\.js v/.test(l) && !/^\s*\^+\s*$/.test(l));
  return `exit ${e.code}: ${lines.slice(0, 3).join(' / ').slice(0, 300)}`;
}

interface Server {
  child: ChildProcess;
  exited: Promise<void>;
  stderr: string;
}

async function startServer(argv: string[], socket: string): Promise<Server> {
  await rm(socket, { force: true });
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const srv: Server = { child, stderr: '', exited: new Promise((resolve) => child.once('exit', () => resolve())) };
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (srv.stderr += d));
  let gone = false;
  void srv.exited.then(() => (gone = true));
  for (let i = 0; i < 200 && !gone; i++) {
    if (existsSync(socket)) return srv;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGTERM');
  throw new Error(`server did not listen on ${socket}: ${srv.stderr.trim().split('\n').pop() ?? ''}`);
}

/** The server's peak resident set (Linux VmHWM), then stop it. */
async function stopServer(srv: Server): Promise<number | undefined> {
  let rss: number | undefined;
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${srv.child.pid}/status`, 'utf8'));
    if (m) rss = Number(m[1]) * 1024;
  } catch {
    // not Linux, or already gone
  }
  srv.child.kill('SIGTERM');
  await srv.exited;
  return rss;
}

async function runCase(c: Case, runs: number, scratch: string): Promise<CaseResult> {
  const res: CaseResult = { id: c.id, group: c.group, title: c.title, goal: c.goal, note: c.note, unavailable: c.unavailable, tools: [], ratios: [], rssLimit: c.rssLimit };
  res.tools = c.tools.map((t) => ({ name: t.name, role: t.role, unavailable: c.unavailable ?? t.unavailable, seconds: [], rss: [], bytes: t.bytes ?? c.bytes }));
  if (c.unavailable) return res;
  const servers = new Map<number, Server>();
  for (const [i, t] of c.tools.entries()) {
    if (!t.server || res.tools[i].unavailable) continue;
    try {
      servers.set(i, await startServer(t.server.argv, t.server.socket));
    } catch (e) {
      res.tools[i].error = String(e instanceof Error ? e.message : e);
    }
  }
  try {
    await runRounds(c, res, Math.min(runs, c.maxRuns ?? runs), scratch);
  } finally {
    for (const [i, srv] of servers) {
      const rss = await stopServer(srv);
      if (rss !== undefined) res.tools[i].rss = [rss];
    }
  }
  for (const tr of res.tools) {
    if (!tr.seconds.length || tr.error) continue;
    tr.median = median(tr.seconds);
    tr.best = Math.min(...tr.seconds);
    tr.mbps = tr.bytes ? tr.bytes / tr.median / 1e6 : undefined;
    tr.peakRss = tr.rss.length ? Math.max(...tr.rss) : undefined;
  }
  return res;
}

async function runRounds(c: Case, res: CaseResult, runs: number, scratch: string): Promise<void> {
  for (let r = 0; r < runs; r++) {
    // Alternate: each round starts with a different tool.
    for (let k = 0; k < c.tools.length; k++) {
      const i = (k + r) % c.tools.length;
      const tr = res.tools[i];
      if (tr.unavailable || tr.error) continue;
      try {
        const m = await runTool(c.tools[i], scratch, c.cold);
        tr.seconds.push(m.seconds);
        if (m.rss !== undefined && !c.tools[i].server) tr.rss.push(m.rss);
      } catch (e) {
        tr.error = e instanceof CommandError ? shortError(e) : String(e);
      }
    }
  }
}

/** Time-per-byte ratios of each subject against each peer (and the cp reference for converts). */
function ratios(c: Case, res: CaseResult, cp: CaseResult | undefined): void {
  const perByte = (t: ToolResult) => (t.median !== undefined ? t.median / Math.max(1, t.bytes) : undefined);
  for (const s of res.tools.filter((t) => t.role === 'vdisk')) {
    const sv = perByte(s);
    if (sv === undefined) continue;
    const peers = res.tools.filter((t) => t.role === 'peer');
    if ((c.group === 'convert' || c.group === 'commit') && cp) peers.push(...cp.tools);
    for (const p of peers) {
      const pv = perByte(p);
      if (pv === undefined) continue;
      const pair = `${s.name}/${p.name}`;
      const limit = c.limits?.[pair];
      const value = sv / pv;
      const best = s.best !== undefined && p.best !== undefined ? s.best / Math.max(1, s.bytes) / (p.best / Math.max(1, p.bytes)) : undefined;
      res.ratios.push({ pair, value, best, limit, ok: limit === undefined ? undefined : value <= limit });
    }
  }
  if (c.rssLimit !== undefined) {
    const subj = res.tools.filter((t) => t.role === 'vdisk' && t.peakRss !== undefined);
    if (subj.length) res.rssOk = subj.every((t) => t.peakRss! <= c.rssLimit!);
  }
}

function fmtSeconds(s: number | undefined): string {
  if (s === undefined) return '–';
  return s >= 10 ? `${s.toFixed(1)} s` : s >= 0.1 ? `${s.toFixed(2)} s` : `${(s * 1000).toFixed(1)} ms`;
}

function toolRow(r: CaseResult, t: ToolResult): string[] {
  const status = t.unavailable ?? (t.error ? `FAILED: ${t.error}` : '');
  const ratio = r.ratios
    .filter((x) => x.pair.startsWith(`${t.name}/`))
    .map((x) => `${x.pair} ${x.value.toFixed(2)}${x.ok === false ? ' ✗' : x.ok ? ' ✓' : ''}${x.best !== undefined && t.seconds.length > 1 ? ` (best ${x.best.toFixed(2)})` : ''}`)
    .join(', ');
  const rss = t.peakRss !== undefined ? `${(t.peakRss / MiB).toFixed(0)} MiB${r.rssLimit !== undefined && t.role === 'vdisk' ? (t.peakRss <= r.rssLimit ? ' ✓' : ' ✗') : ''}` : '–';
  return [r.title, t.name, status || fmtSeconds(t.median), status ? '' : fmtSeconds(t.best), status ? '' : t.mbps !== undefined ? t.mbps.toFixed(0) : '–', status ? '' : rss, ratio];
}

function markdownTable(results: CaseResult[]): string {
  const head = ['case', 'tool', 'median', 'best', 'MB/s', 'peak RSS', 'ratio of medians (of the fastest runs), time per byte, vdisk ÷ peer'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of results) {
    if (r.unavailable) {
      lines.push(`| ${r.title} | – | ${r.unavailable} | | | | |`);
      continue;
    }
    for (const t of r.tools) lines.push(`| ${toolRow(r, t).map((x) => x.replace(/\|/g, '\\|')).join(' | ')} |`);
  }
  return lines.join('\n');
}

async function machine(): Promise<Record<string, string>> {
  return {
    cores: String(cpus().length),
    cpu: cpus()[0]?.model ?? 'unknown',
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: release(),
    node: process.version,
    'qemu-img': (await toolVersion(['qemu-img', '--version'])) ?? 'missing',
    nbdcopy: (await toolVersion(['nbdcopy', '--version'])) ?? 'missing',
    'vhd-lib': VHD_LIB_VERSION,
    date: new Date().toISOString(),
  };
}

/** The options this run was given, as typed after `npm run bench --` (so the results say exactly how they were made). */
function commandArgs(): string {
  const given = process.argv.slice(2);
  return given.length ? ` -- ${given.join(' ')}` : '';
}

async function updateMarkdown(md: string): Promise<void> {
  const path = join(REPO, 'BENCHMARKS.md');
  const START = '<!-- bench:results:start -->';
  const END = '<!-- bench:results:end -->';
  const text = await readFile(path, 'utf8').catch(() => `# Benchmarks\n\n${START}\n${END}\n`);
  const a = text.indexOf(START);
  const b = text.indexOf(END);
  if (a < 0 || b < a) throw new Error('BENCHMARKS.md has no results markers');
  await writeFile(path, `${text.slice(0, a + START.length)}\n${md}\n${text.slice(b)}`);
}

/**
 * NODE_EXTRA_CA_CERTS makes every Node process parse that certificate file
 * before running a line of its own: on the machine BENCHMARKS.md was made on
 * it names the whole system bundle (220 KB) and costs each `node` start
 * ~30 ms (`node -e 0`: 0.05 s with it, 0.015 s without). vdisk never opens a
 * TLS connection, and the peers are not Node programs, so the measured tools
 * run without it; the bench says so when it removes it.
 */
function dropExtraCaCerts(): string | undefined {
  const was = process.env.NODE_EXTRA_CA_CERTS;
  delete process.env.NODE_EXTRA_CA_CERTS;
  return was;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const extraCa = dropExtraCaCerts();
  const facts = await machine();
  if (extraCa) facts.env = `NODE_EXTRA_CA_CERTS (${extraCa}) unset for the measured tools`;
  log(`vdisk bench (${args.smoke ? 'smoke' : args.quick ? 'quick' : 'full'}${args.large ? ' + 4 GiB' : ''}, ${args.runs} runs per tool)`);
  log(Object.entries(facts).map(([k, v]) => `  ${k}: ${v}`).join('\n'));
  if (facts['qemu-img'] === 'missing') throw new Error('qemu-img is required (it builds the VHD and VHDX inputs and is the main peer)');
  if (!hasGnuTime) log('  /usr/bin/time missing: peak RSS not measured');
  // Not for the smoke run (the test suite runs it): it changes a kernel setting for the run's length.
  const reporting = args.smoke ? undefined : await pausePageReporting(log);
  if (reporting) facts.env = facts.env ? `${facts.env}; ${reporting}` : reporting;

  const work = args.work ?? join(REPO, 'bench', '.work', `run-${process.pid}`);
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  try {
    // Snapshot the built code (see peers.ts useApp); children find the repo through the environment.
    const app = join(work, 'app');
    await cp(join(REPO, 'dist'), join(app, 'dist'), { recursive: true });
    await cp(join(REPO, 'bin'), join(app, 'bin'), { recursive: true });
    // The native addon, where it is built (README "The native addon"): without it the snapshot would run the JavaScript paths only.
    const addon = join('native', 'build', 'Release', 'vdisk_native.node');
    if (existsSync(join(REPO, addon))) await cp(join(REPO, addon), join(app, addon));
    log(`  native addon: ${existsSync(join(app, addon)) ? 'built' : 'not built (converts to raw use the JavaScript path only)'}`);
    await symlink(join(REPO, 'node_modules'), join(app, 'node_modules'));
    useApp(app);
    process.env.VDISK_BENCH_REPO = REPO;
    const vhdLibMissing = await ensureVhdLib(args.install, log);
    const scale = args.smoke ? SMOKE_SCALE : FULL_SCALE;
    log(`building inputs in ${work}`);
    const t0 = Date.now();
    const inputs = await buildInputs(work, scale, log);
    await syncAll();
    log(`  (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    const opts: CaseOptions = args.smoke
      ? { readCount: () => 64, addCowWrite: { batched: 2 * MiB, perWrite: 64 << 10 } }
      : args.quick
        ? { readCount: (bs) => (bs <= 4096 ? 32768 : 8192), addCowWrite: { batched: 32 * MiB, perWrite: 2 * MiB } }
        : { readCount: (bs) => (bs <= 4096 ? 65536 : 16384), chainWholeDisk: true, addCowWrite: { batched: 64 * MiB, perWrite: 4 * MiB } };
    const env = { vhdLibMissing, serveMissing: await serveAvailable(), convertCache: await convertHasCache() };
    log(`converts: target cache ${env.convertCache ? 'unsafe (no sync, every tool)' : 'writeback (one sync at the end, every tool)'}`);
    let cases = buildCases(inputs, opts, env);
    if (args.quick) cases = cases.filter((c) => c.quick);
    if (args.large) {
      const drop = await dropCaches();
      log(`cold-cache cases: ${drop ?? 'the page cache is dropped before each run (echo 3 > /proc/sys/vm/drop_caches)'}`);
      log('building the 4 GiB inputs');
      const t1 = Date.now();
      const large = await buildLargeInputs(work, log);
      await syncAll();
      log(`  (${((Date.now() - t1) / 1000).toFixed(1)} s)`);
      cases.push(...buildLargeCases(large, { ...env, dropCaches: drop }));
    }
    if (args.only.length) cases = cases.filter((c) => c.group === 'reference' || args.only.some((o) => c.id.includes(o)));

    await touchFreeMemory(log);
    const results: CaseResult[] = [];
    let failures = 0;
    for (const c of cases) {
      const r = await runCase(c, args.runs, work);
      ratios(c, r, results.find((x) => x.id === (c.cpRef ?? 'ref-cp')));
      results.push(r);
      if (r.unavailable) log(`- ${c.title}: ${r.unavailable}`);
      else {
        log(`- ${c.title}`);
        for (const t of r.tools) {
          const row = toolRow(r, t);
          log(`    ${row[1].padEnd(15)} ${row[2].padEnd(10)} best ${row[3].padEnd(9)} ${row[4] ? `${row[4].padStart(6)} MB/s` : ''}  ${row[5]}  ${row[6]}`);
          if (t.error) failures++;
        }
      }
      if (args.profile && !r.unavailable && r.ratios.some((x) => x.ok === false || (x.value > 1.05 && !x.pair.endsWith('/cp') && !x.pair.endsWith('/cat')))) {
        const t = c.tools.find((x) => x.role === 'vdisk' && x.argv[0] === process.execPath && !x.unavailable);
        if (t) {
          const dir = join(work, 'profiles', c.id);
          await mkdir(dir, { recursive: true });
          await runTool({ ...t, argv: [process.execPath, '--cpu-prof', '--cpu-prof-dir', dir, ...t.argv.slice(1)] }, work).catch(() => undefined);
          r.profile = await summarizeDir(dir);
          if (r.profile) log(formatSummary(r.profile));
        }
      }
    }

    const md = [
      `Command: \`npm run bench${commandArgs()}\` (${args.runs} runs per tool, alternating; median shown).`,
      '',
      `Machine: ${facts.cores} cores (${facts.cpu}), ${facts.memory} RAM, Linux ${facts.kernel}, Node ${facts.node}, ${facts['qemu-img']}, ${facts.nbdcopy}, vhd-lib ${facts['vhd-lib']}${facts.env ? `; ${facts.env}` : ''}; run ${facts.date}.`,
      '',
      markdownTable(results),
    ].join('\n');
    const outDir = args.results ?? join(REPO, 'bench', '.work');
    await mkdir(outDir, { recursive: true });
    await writeFile(join(outDir, 'results.json'), JSON.stringify({ machine: facts, args, results }, null, 2));
    await writeFile(join(outDir, 'latest.md'), md + '\n');
    if (args.updateMd) await updateMarkdown(md);
    log(`\nresults: ${join(outDir, 'results.json')}, ${join(outDir, 'latest.md')}${args.updateMd ? ', BENCHMARKS.md' : ''}`);
    const missed = results.flatMap((r) => [...r.ratios.filter((x) => x.ok === false).map((x) => `${r.title}: ${x.pair} ${x.value.toFixed(2)} > ${x.limit}`), ...(r.rssOk === false ? [`${r.title}: peak RSS over ${r.rssLimit! / MiB} MiB`] : [])]);
    if (missed.length) log(`goals missed:\n  ${missed.join('\n  ')}`);
    if (failures) log(`${failures} tool run(s) FAILED`);
    return failures ? 1 : 0;
  } finally {
    if (!args.keep) await rm(work, { recursive: true, force: true });
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    console.error(`bench: ${e instanceof Error ? e.message : e}`);
    process.exitCode = 2;
  },
);
