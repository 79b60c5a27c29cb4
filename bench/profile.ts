import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { appDir } from './peers.js';

/**
 * Where a V8 CPU profile (`node --cpu-prof`) spends its time: self time per
 * function and per file, biggest first. Self time of a sample is the gap to
 * the next sample (timeDeltas), charged to the node the sample landed in.
 */

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileEntry {
  name: string;
  ms: number;
  share: number;
}

export interface ProfileSummary {
  totalMs: number;
  functions: ProfileEntry[];
  files: ProfileEntry[];
}

function where(url: string): string {
  if (!url) return '(native)';
  const path = url.replace(/^file:\/\//, '');
  return path.startsWith('/') ? relative(appDir(), path) : path;
}

function summarize(p: CpuProfile, top = 12): ProfileSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i + 1] ?? 0;
    self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + dt);
  }
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  let total = 0;
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const f = n.callFrame;
    const name = `${f.functionName || '(anonymous)'} ${where(f.url)}${f.url ? `:${f.lineNumber + 1}` : ''}`;
    fn.set(name, (fn.get(name) ?? 0) + us);
    const fileName = f.url ? where(f.url) : f.functionName || '(native)';
    file.set(fileName, (file.get(fileName) ?? 0) + us);
    total += us;
  }
  const rank = (m: Map<string, number>): ProfileEntry[] =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, ms: us / 1000, share: total ? us / total : 0 }));
  return { totalMs: total / 1000, functions: rank(fn), files: rank(file) };
}

/** Summarize the newest .cpuprofile in dir. */
export async function summarizeDir(dir: string): Promise<ProfileSummary | undefined> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile')).sort();
  if (!files.length) return undefined;
  return summarize(JSON.parse(await readFile(join(dir, files[files.length - 1]), 'utf8')) as CpuProfile);
}

export function formatSummary(s: ProfileSummary): string {
  const line = (e: ProfileEntry) => `    ${(e.share * 100).toFixed(1).padStart(5)}%  ${e.ms.toFixed(0).padStart(6)} ms  ${e.name}`;
  return [`  self time by function (${s.totalMs.toFixed(0)} ms sampled):`, ...s.functions.map(line), '  self time by file:', ...s.files.slice(0, 8).map(line)].join('\n');
}
