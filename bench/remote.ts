import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { startCeph, stopCeph } from '../test/helpers/ceph.js';
import { startNginx } from '../test/helpers/nginx.js';
import { measure, median, runOk, type Measurement } from './measure.js';
import { REPO } from './peers.js';

/**
 * `npm run build && node dist/bench/remote.js [--size MiB] [--runs N]`:
 * vdisk against the two-step alternatives on remote images, on real servers
 * started here on loopback (the test helpers' Ceph RADOS Gateway with a
 * memstore OSD, and nginx), issue 18's goals:
 *
 * - S3 → local raw from a half-full dynamic VHDX: vdisk convert against
 *   `rclone copyto` + `qemu-img convert` (goal ≤ 0.7x) and rclone alone (≤ 1.3x);
 * - local raw → S3 raw object: vdisk convert (multipart upload) against rclone copyto;
 * - local half-full raw → S3 dynamic VHD object: vdisk convert against
 *   `qemu-img convert -O vpc` to a local file + `rclone copyto` (goal ≤ 0.7x);
 * - HTTP vhdx → local raw: vdisk convert against curl downloading the file (≤ 1.3x);
 *
 * with peak RSS and CPU time (user + system, GNU time). Medians of --runs
 * (default 3), tools alternating. `--only WORD` runs the cases whose name
 * holds WORD (e.g. `--only 'local → S3'`).
 * Everything lives in bench/.work/remote-<pid>, removed at the end.
 */
const args = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const SIZE_MIB = opt('--size', 1024);
const RUNS = opt('--runs', 3);
const ONLY = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const VDISK = [process.execPath, join(REPO, 'bin', 'vdisk.cjs')];

async function main(): Promise<void> {
  const work = join(REPO, 'bench', '.work', `remote-${process.pid}`);
  const www = join(work, 'www');
  await mkdir(www, { recursive: true });
  try {
    // A half-full dynamic VHDX: data in every other 64 MiB stretch.
    const raw = join(work, 'src.raw');
    await runOk(['qemu-img', 'create', '-f', 'raw', raw, `${SIZE_MIB}M`]);
    const writes: string[] = [];
    for (let at = 0, i = 0; at < SIZE_MIB; at += 128, i++) writes.push('-c', `write -P ${(i % 250) + 1} ${at}M ${Math.min(64, SIZE_MIB - at)}M`);
    await runOk(['qemu-io', '-f', 'raw', ...writes, raw]);
    const vhdx = join(www, 'src.vhdx');
    await runOk(['qemu-img', 'convert', '-f', 'raw', '-O', 'vhdx', raw, vhdx]);

    const ceph = await startCeph(Math.max(1 << 30, SIZE_MIB * 4 * 1024 * 1024));
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...ceph.env,
      RCLONE_CONFIG_CEPH_TYPE: 's3',
      RCLONE_CONFIG_CEPH_PROVIDER: 'Ceph',
      RCLONE_CONFIG_CEPH_ENDPOINT: ceph.endpoint,
      RCLONE_CONFIG_CEPH_ACCESS_KEY_ID: ceph.accessKey,
      RCLONE_CONFIG_CEPH_SECRET_ACCESS_KEY: ceph.secretKey,
    };
    // rclone's S3 backend refuses a CA bundle on its plain-HTTP transport (the gateway is http on loopback).
    delete env.AWS_CA_BUNDLE;
    await runOk(['rclone', 'mkdir', 'ceph:bench'], { env });
    // The VHDX in the gateway is only read by the S3 → local case.
    if (ONLY === undefined || 'S3 → local'.includes(ONLY) || ONLY.includes('S3 → local')) await runOk(['rclone', 'copyto', vhdx, 'ceph:bench/src.vhdx'], { env });
    const nginx = (await startNginx({ skip() {} } as unknown as TestContext, www))!;

    const out = join(work, 'out.raw');
    const tmp = join(work, 'tmp.vhdx');
    const tmpVhd = join(work, 'tmp.vhd');
    const cases: { name: string; tools: [string, string[]][] }[] = [
      {
        name: `S3 → local: dynamic VHDX (${SIZE_MIB} MiB, half full) to raw`,
        tools: [
          ['vdisk convert', [...VDISK, 'convert', '-O', 'raw', 's3://bench/src.vhdx', out]],
          ['rclone copyto + qemu-img convert', ['sh', '-c', `rclone copyto ceph:bench/src.vhdx ${tmp} && qemu-img convert -f vhdx -O raw ${tmp} ${out}`]],
          ['rclone copyto alone', ['rclone', 'copyto', 'ceph:bench/src.vhdx', tmp]],
        ],
      },
      {
        name: `local → S3: raw (${SIZE_MIB} MiB) to a raw object`,
        tools: [
          ['vdisk convert', [...VDISK, 'convert', '--overwrite', '-f', 'raw', '-O', 'raw', raw, 's3://bench/up.raw']],
          ['rclone copyto', ['rclone', 'copyto', raw, 'ceph:bench/up2.raw']],
        ],
      },
      {
        name: `local → S3: raw (${SIZE_MIB} MiB, half full) to a dynamic VHD object`,
        tools: [
          ['vdisk convert', [...VDISK, 'convert', '--overwrite', '-f', 'raw', '-O', 'vhd', raw, 's3://bench/up.vhd']],
          ['qemu-img convert -O vpc + rclone copyto', ['sh', '-c', `qemu-img convert -f raw -O vpc ${raw} ${tmpVhd} && rclone copyto ${tmpVhd} ceph:bench/up2.vhd`]],
        ],
      },
      {
        name: `HTTP (nginx) → local: dynamic VHDX (${SIZE_MIB} MiB, half full) to raw`,
        tools: [
          ['vdisk convert', [...VDISK, 'convert', '-O', 'raw', `${nginx.url}/src.vhdx`, out]],
          ['curl (download only)', ['curl', '-sS', '-o', tmp, `${nginx.url}/src.vhdx`]],
        ],
      },
    ];
    const lines = ['| Case | Tool | Median wall (s) | Median CPU (s) | Peak RSS (MiB) | vdisk / tool (wall) |', '|---|---|---|---|---|---|'];
    for (const c of cases) {
      if (ONLY !== undefined && !c.name.includes(ONLY)) continue;
      const results = new Map<string, Measurement[]>();
      for (let r = 0; r < RUNS; r++) {
        for (const [tool, argv] of c.tools) {
          await rm(out, { force: true });
          await rm(tmp, { force: true });
          await rm(tmpVhd, { force: true });
          const m = await measure(argv, { scratch: work, env });
          results.set(tool, [...(results.get(tool) ?? []), m]);
        }
      }
      const vdiskWall = median(results.get('vdisk convert')!.map((m) => m.wall));
      for (const [tool] of c.tools) {
        const ms = results.get(tool)!;
        const wall = median(ms.map((m) => m.wall));
        const rss = Math.max(...ms.map((m) => m.rss ?? 0)) / (1 << 20);
        const cpu = ms.every((m) => m.cpu !== undefined) ? median(ms.map((m) => m.cpu!)).toFixed(2) : '?';
        const each = ms.map((m) => m.wall.toFixed(1)).join(', ');
        lines.push(`| ${c.name} | ${tool} | ${wall.toFixed(2)} (${each}) | ${cpu} | ${rss ? rss.toFixed(0) : '?'} | ${tool === 'vdisk convert' ? '' : `${(vdiskWall / wall).toFixed(2)}x`} |`);
      }
    }
    nginx.stop();
    console.log(lines.join('\n'));
  } finally {
    stopCeph();
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
