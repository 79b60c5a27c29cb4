import { BlockError, isBlockError } from '../core/errors.js';
import { isAzureLocation, openAzureLocation } from '../io/azure-location.js';
import { azureProblems } from '../formats/vhd/azure.js';
import { openLocation, statLocation } from '../io/hosts.js';
import type { StoreOpener } from '../io/store.js';
import { openChain, type ChainOpenOptions } from '../chain/open.js';
import type { CheckProblem, Image } from '../formats/types.js';

export interface CheckRequest {
  path: string;
  /** Options for opening (format, ignoreChecksums...). The chain is not followed unless backingChain. */
  openOptions?: ChainOpenOptions;
  /** `-r leaks|all`: repair what is safe (opens the image read-write). */
  repair?: 'leaks' | 'all';
  /** Check every layer of the backing chain, not only the named image. */
  backingChain?: boolean;
  openStore?: StoreOpener;
  /**
   * `--azure`: instead of the format's check, list everything Azure would
   * refuse in this file or page blob as a VHD to make a disk from (one
   * problem each, severity corruption; formats/vhd/azure.ts). The image
   * need not be a VHD at all: that is one of the answers.
   */
  azure?: boolean;
}

/**
 * One image's result; field names follow `qemu-img check --output=json`,
 * and like qemu-img the counts appear only when non-zero.
 */
export interface CheckReport {
  filename: string;
  format: string;
  'check-errors': number;
  corruptions?: number;
  leaks?: number;
  'corruptions-fixed'?: number;
  'leaks-fixed'?: number;
  'image-end-offset'?: number;
  /** The format answered "I cannot check" (qemu-img exit 63). */
  unsupported?: boolean;
  /** Each problem found, as the format described it (not in qemu's JSON). */
  problems: CheckProblem[];
  [detail: string]: unknown;
}

/** Exit status of `qemu-img check`. */
export const CHECK_EXIT = { clean: 0, notCompleted: 1, corruptions: 2, leaks: 3, unsupported: 63 } as const;

/**
 * Run the formats' structural checks. Like qemu-img, only the named image is
 * checked (its parent need not even exist) unless `backingChain` asks for
 * every layer. A check that throws (the image cannot be read at all) counts as
 * a check error, not as a crash.
 */
/** check --azure's opener: a page blob is opened whatever it holds (what is wrong is the answer). */
const openAnyForAzureCheck: StoreOpener = (path, options) => (isAzureLocation(path) ? openAzureLocation(path, options, { requireVhd: false }) : openLocation(path, options));

export async function checkImage(req: CheckRequest): Promise<CheckReport[]> {
  const openStore = req.openStore ?? req.openOptions?.openStore ?? openLocation;
  if (req.azure) {
    if (req.repair || req.backingChain) throw new BlockError('invalid-argument', '--azure checks one image as Azure would take it: no --repair, no --backing-chain');
    return [await checkForAzure(req.path, req.openStore ?? req.openOptions?.openStore ?? openAnyForAzureCheck)];
  }
  const readOnly = !req.repair;
  const chain = await openChain(req.path, {
    ...req.openOptions,
    openStore,
    readOnly,
    // Repair writes only to the layer being repaired; with -r on a chain every layer must be writable.
    writableBacking: !readOnly && req.backingChain,
    layerOnly: !req.backingChain,
  });
  try {
    const out: CheckReport[] = [];
    for (const layer of chain.layers) out.push(await checkLayer(layer, req.repair));
    return out;
  } finally {
    await chain.close();
  }
}

async function checkLayer(layer: Image, repair: 'leaks' | 'all' | undefined): Promise<CheckReport> {
  const report: CheckReport = { filename: layer.path, format: layer.format, 'check-errors': 0, problems: [] };
  if (!layer.check) {
    report.unsupported = true;
    return report;
  }
  try {
    const r = await layer.check(repair ? { repair } : {});
    if (repair) await layer.flush();
    report.problems = r.problems;
    const count = (sev: CheckProblem['severity'], fixed: boolean) => r.problems.filter((p) => p.severity === sev && Boolean(p.repaired) === fixed).length;
    const put = (key: keyof CheckReport & string, n: number) => {
      if (n) report[key] = n;
    };
    put('corruptions', count('corruption', false));
    put('leaks', count('leak', false));
    put('corruptions-fixed', count('corruption', true));
    put('leaks-fixed', count('leak', true));
    for (const [k, v] of Object.entries(r.details ?? {})) if (!(k in report)) report[k] = v;
  } catch (e) {
    if (!isBlockError(e)) throw e;
    report['check-errors'] = 1;
    report.problems = [{ severity: 'corruption', message: `check could not complete: ${e.oneLine()}` }];
  }
  if (report['image-end-offset'] === undefined) {
    try {
      const size = (await statLocation(layer.path))?.size;
      if (size) report['image-end-offset'] = size;
    } catch {
      /* not a host file (memory store in tests) */
    }
  }
  return report;
}

async function checkForAzure(path: string, openStore: StoreOpener): Promise<CheckReport> {
  const store = await openStore(path, { readOnly: true });
  try {
    const problems = await azureProblems(store);
    const report: CheckReport = { filename: path, format: 'vhd', 'check-errors': 0, azure: true, problems: problems.map((message) => ({ severity: 'corruption', message: `Azure: ${message}` })) };
    if (problems.length) report.corruptions = problems.length;
    report['image-end-offset'] = await store.size();
    return report;
  } finally {
    await store.close();
  }
}

/** qemu-img's exit status for a set of reports: the worst one wins. */
export function checkExitCode(reports: CheckReport[]): number {
  let code: number = CHECK_EXIT.clean;
  const rank = (c: number) => [CHECK_EXIT.clean, CHECK_EXIT.leaks, CHECK_EXIT.corruptions, CHECK_EXIT.notCompleted, CHECK_EXIT.unsupported].indexOf(c as 0);
  for (const r of reports) {
    const c = r.unsupported
      ? CHECK_EXIT.unsupported
      : r['check-errors']
        ? CHECK_EXIT.notCompleted
        : r.corruptions
          ? CHECK_EXIT.corruptions
          : r.leaks
            ? CHECK_EXIT.leaks
            : CHECK_EXIT.clean;
    if (rank(c) > rank(code)) code = c;
  }
  return code;
}

/** Human text in the words qemu-img check uses. */
export function humanCheck(r: CheckReport): string {
  const lines: string[] = [];
  if (r.unsupported) return `This image format (${r.format}) does not support checks: ${r.filename}`;
  for (const p of r.problems) {
    const tag = p.severity === 'corruption' ? 'ERROR' : p.severity === 'leak' ? 'Leaked' : p.severity === 'warning' ? 'Warning' : 'Info';
    lines.push(`${p.repaired ? 'Repaired ' : ''}${tag}: ${p.message}${p.offset !== undefined ? ` (offset ${p.offset})` : ''}`);
  }
  const fixedC = r['corruptions-fixed'] ?? 0;
  const fixedL = r['leaks-fixed'] ?? 0;
  if (fixedC || fixedL) {
    lines.push('', 'The following inconsistencies were found and repaired:', '', `    ${fixedL} leaked clusters`, `    ${fixedC} corruptions`, '');
  }
  if (r['check-errors']) lines.push(`${r['check-errors']} internal errors have occurred during the check.`);
  if (r.azure) {
    lines.push(r.corruptions ? `${r.corruptions} reason(s) Azure would refuse this image for.` : 'Azure would take this image as a disk.');
  } else if (r.corruptions) {
    lines.push(`${r.corruptions} errors were found on the image.`, 'Data may be corrupted, or further writes to the image may corrupt it.');
  }
  if (r.leaks) lines.push(`${r.leaks} leaked clusters were found on the image.`, 'This means waste of disk space, but no harm to data.');
  if (!r['check-errors'] && !r.corruptions && !r.leaks && !r.azure) lines.push('No errors were found on the image.');
  if (r['image-end-offset'] !== undefined) lines.push(`Image end offset: ${r['image-end-offset']}`);
  return lines.join('\n');
}
