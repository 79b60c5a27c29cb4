import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAzurite } from '../test/helpers/azurite.js';
import { measure, median, runOk } from './measure.js';
import { REPO } from './peers.js';

/**
 * Issue 19's speed goal: a dynamic VHDX with 25% of its blocks holding data,
 * to an Azure page blob on Azurite (in memory, on this machine).
 *
 *   vdisk:     vdisk convert -O vhd -o azure=on in.vhdx URL      (one step, only the data)
 *   baseline:  qemu-img convert -f vhdx -O vpc -o subformat=fixed,force_size in.vhdx out.vhd
 *              + node dist/bench/azure-upload-file.js out.vhd URL (the whole file, same SDK,
 *                Put Page of 4 MiB with MD5, eight in flight — as vdisk)
 *
 *   node dist/bench/azure.js [--size-gib N] [--runs N]    (default 4 GiB, 3 runs, alternating)
 *
 * Prints medians, the ratio, vdisk's peak RSS and the local space each way used.
 */

const MiB = 1 << 20;

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i < 0 ? fallback : Number(process.argv[i + 1]);
}

const sizeGiB = arg('--size-gib', 4);
const runs = arg('--runs', 3);
const work = await mkdtemp(join(tmpdir(), 'vdisk-bench-azure-'));
try {
  const az = await startAzurite();
  const size = sizeGiB * 1024 * MiB;
  const src = join(work, 'in.vhdx');
  // 32 MiB blocks (qemu's default for this size); every fourth one written whole, each with its own pattern.
  const block = 32 * MiB;
  await runOk(['qemu-img', 'create', '-q', '-f', 'vhdx', '-o', `block_size=${block}`, src, String(size)]);
  const cmds: string[] = [];
  for (let b = 0, i = 0; b * block < size; b += 4, i++) cmds.push('-c', `write -P ${(i % 250) + 1} ${b * block} ${block}`);
  await runOk(['qemu-io', '-f', 'vhdx', ...cmds, src]);
  const vdisk = [process.execPath, join(REPO, 'bin', 'vdisk.cjs')];
  const vdiskTimes: number[] = [];
  const vdiskRss: number[] = [];
  const baseTimes: number[] = [];
  const convTimes: number[] = [];
  let baseFile = 0;
  for (let r = 0; r < runs; r++) {
    const order = r % 2 === 0 ? ['vdisk', 'base'] : ['base', 'vdisk'];
    for (const who of order) {
      const url = await az.sasUrl('bench', `${who}-${r}.vhd`);
      if (who === 'vdisk') {
        const m = await measure([...vdisk, 'convert', '-O', 'vhd', '-o', 'azure=on', src, url], { scratch: work });
        vdiskTimes.push(m.wall);
        if (m.rss) vdiskRss.push(m.rss);
      } else {
        const out = join(work, 'out.vhd');
        const c = await measure(['qemu-img', 'convert', '-f', 'vhdx', '-O', 'vpc', '-o', 'subformat=fixed,force_size', src, out], { scratch: work });
        baseFile = (await stat(out)).size;
        const u = await measure([process.execPath, join(REPO, 'dist', 'bench', 'azure-upload-file.js'), out, url], { scratch: work });
        await rm(out, { force: true });
        convTimes.push(c.wall);
        baseTimes.push(c.wall + u.wall);
      }
      // Each blob goes once measured: Azurite keeps them in memory.
      await az.service.getContainerClient('bench').getBlobClient(`${who}-${r}.vhd`).delete();
    }
  }
  const v = median(vdiskTimes);
  const b = median(baseTimes);
  const gib = (n: number) => (n / 2 ** 30).toFixed(2);
  console.log(`input: ${sizeGiB} GiB dynamic VHDX, 25% of its ${block / MiB} MiB blocks written (${gib(size / 4)} GiB of data); Azurite in memory; ${runs} runs alternating`);
  console.log(`vdisk convert -O vhd -o azure=on SRC URL:                median ${v.toFixed(2)} s (runs ${vdiskTimes.map((x) => x.toFixed(2)).join(', ')}), peak RSS ${vdiskRss.length ? (Math.max(...vdiskRss) / MiB).toFixed(0) : '?'} MiB, local space 0`);
  console.log(`qemu-img convert -O vpc fixed,force_size + whole upload:  median ${b.toFixed(2)} s (runs ${baseTimes.map((x) => x.toFixed(2)).join(', ')}; the qemu-img step ${median(convTimes).toFixed(2)} s), local space ${gib(baseFile)} GiB`);
  console.log(`ratio vdisk / baseline: ${(v / b).toFixed(2)}`);
} catch (e) {
  console.error(e);
  process.exitCode = 1;
} finally {
  await rm(work, { recursive: true, force: true });
  // Azurite (started by the helper) would keep the process alive.
  process.exit();
}
