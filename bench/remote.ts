import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { startCeph, stopCeph } from '../test/helpers/ceph.js';
import { startNginx } from '../test/helpers/nginx.js';
import { measure, median, pausePageReporting, runOk, touchFreeMemory, type Measurement } from './measure.js';
import { REPO } from './peers.js';

/**
 * `npm run build && node dist/bench/remote.js [--size MiB] [--runs N] [--only s3,upload,upload-vhd,http,sparse]`:
 * vdisk against the two-step alternatives on remote images, on real servers
 * started here on loopback (the test helpers' Ceph RADOS Gateway with a
 * memstore OSD, and nginx), issue 18's goals:
 *
 * - s3: S3 → local raw from a half-full dynamic VHDX: vdisk convert against
 *   `rclone copyto` + `qemu-img convert` (goal ≤ 0.7x) and rclone alone (≤ 1.3x);
 * - upload: local raw → S3 raw object: vdisk convert (multipart upload) against rclone copyto;
 * - upload-vhd: local half-full raw → S3 dynamic VHD object: vdisk convert against
 *   `qemu-img convert -O vpc` to a local file + `rclone copyto` (goal ≤ 0.7x);
 * - http: HTTP vhdx → local raw: vdisk convert against curl downloading the file (≤ 1.3x);
 * - sparse: peak RSS (goal < 256 MiB) converting a 64 GiB dynamic VHDX
 *   holding little data (16 MiB) from S3 and from HTTP to a local raw.
 *
 * with wall time, CPU time (user + system, GNU time) and peak RSS of each
 * tool. Tools alternate within each run (vdisk, peer, vdisk, peer, ...),
 * medians of --runs (default 3): on a shared machine the CPU times and the
 * ratios of medians are what to read. Everything lives in
 * bench/.work/remote-<pid>, removed at the end. The memstore OSD keeps the
 * objects in RAM: a 4096 MiB run stores the ~2 GiB VHDX, and with `upload`
 * two 4 GiB raw objects besides.
 */
const args = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const SIZE_MIB = opt('--size', 1024);
const RUNS = opt('--runs', 3);
const ONLY = (() => {
  const i = args.indexOf('--only');
  return new Set(i >= 0 ? args[i + 1].split(',') : ['s3', 'upload', 'upload-vhd', 'http', 'sparse']);
})();
const VDISK = [process.execPath, join(REPO, 'bin', 'vdisk.cjs')];
const SPARSE_GIB = 64;

interface Case {
  name: string;
  /** The first tool is vdisk; the others are the peers its ratios are taken against. */
  tools: [string, string[]][];
}

async function main(): Promise<void> {
  const reporting = await pausePageReporting((line) => console.error(line));
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
    // A 64 GiB VHDX with 16 MiB of data, 1 MiB every 4 GiB.
    const sparse = join(www, 'sparse.vhdx');
    await runOk(['qemu-img', 'create', '-f', 'vhdx', sparse, `${SPARSE_GIB}G`]);
    const sparseWrites: string[] = [];
    for (let g = 0; g < SPARSE_GIB; g += 4) sparseWrites.push('-c', `write -P ${g + 1} ${g}G 1M`);
    await runOk(['qemu-io', '-f', 'vhdx', ...sparseWrites, sparse]);

    const ceph = await startCeph(Math.max(1 << 30, SIZE_MIB * (ONLY.has('upload') || ONLY.has('upload-vhd') ? 4 : 1) * 1024 * 1024 + (512 << 20)));
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
    await runOk(['rclone', 'copyto', vhdx, 'ceph:bench/src.vhdx'], { env });
    await runOk(['rclone', 'copyto', sparse, 'ceph:bench/sparse.vhdx'], { env });
    const nginx = (await startNginx({ skip() {} } as unknown as TestContext, www))!;

    const out = join(work, 'out.raw');
    const tmp = join(work, 'tmp.vhdx');
    const tmpVhd = join(work, 'tmp.vhd');
    const cases: Case[] = [];
    if (ONLY.has('s3')) {
      cases.push({
        name: `S3 → local: dynamic VHDX (${SIZE_MIB} MiB, half full) to raw`,
        tools: [
          ['vdisk convert', [...VDISK, 'convert', '-O', 'raw', 's3://bench/src.vhdx', out]],
          ['rclone copyto + qemu-img convert', ['sh', '-c', `rclone copyto ceph:bench/src.vhdx ${tmp} && qemu-img convert -f vhdx -O raw ${tmp} ${out}`]],
          ['rclone copyto alone', ['rclone', 'copyto', 'ceph:bench/src.vhdx', tmp]],
        ],
      });
    }
    if (ONLY.has('upload')) {
      cases.push({
        name: `local → S3: raw (${SIZE_MIB} MiB) to a raw object`,
        tools: [
          ['vdisk convert', [...VDISK, 'convert', '--overwrite', '-f', 'raw', '-O', 'raw', raw, 's3://bench/up.raw']],
          ['rclone copyto', ['rclone', 'copyto', raw, 'ceph:bench/up2.raw']],
        ],
      });
    }
    if (ONLY.has('upload-vhd')) {
      cases.push({
        name: `local → S3: raw (${SIZE_MIB} MiB, half full) to a dynamic VHD object`,
        tools: [
          ['vdisk convert', [...VDISK, 'convert', '--overwrite', '-f', 'raw', '-O', 'vhd', raw, 's3://bench/up.vhd']],
          ['qemu-img convert -O vpc + rclone copyto', ['sh', '-c', `qemu-img convert -f raw -O vpc ${raw} ${tmpVhd} && rclone copyto ${tmpVhd} ceph:bench/up2.vhd`]],
        ],
      });
    }
    if (ONLY.has('http')) {
      cases.push({
        name: `HTTP (nginx) → local: dynamic VHDX (${SIZE_MIB} MiB, half full) to raw`,
        tools: [
          ['vdisk convert', [...VDISK, 'convert', '-O', 'raw', `${nginx.url}/src.vhdx`, out]],
          ['curl (download only)', ['curl', '-sS', '-o', tmp, `${nginx.url}/src.vhdx`]],
        ],
      });
    }
    if (ONLY.has('sparse')) {
      for (const [where, url] of [
        ['S3', 's3://bench/sparse.vhdx'],
        ['HTTP', `${nginx.url}/sparse.vhdx`],
      ]) {
        cases.push({ name: `${where} → local: dynamic VHDX (${SPARSE_GIB} GiB, 16 MiB of data) to raw`, tools: [['vdisk convert', [...VDISK, 'convert', '-O', 'raw', url, out]]] });
      }
    }
    const lines = [
      `${SIZE_MIB} MiB, ${RUNS} runs, tools alternating; medians${reporting ? `; ${reporting}` : ''}`,
      '| Case | Tool | Wall (s) | CPU user+sys (s) | Peak RSS (MiB, max) | vdisk / tool: wall | vdisk / tool: CPU |',
      '|---|---|---|---|---|---|---|',
    ];
    await touchFreeMemory((line) => console.error(line));
    for (const c of cases) {
      const results = new Map<string, Measurement[]>();
      for (let r = 0; r < RUNS; r++) {
        for (const [tool, argv] of c.tools) {
          await rm(out, { force: true });
          await rm(tmp, { force: true });
          await rm(tmpVhd, { force: true });
          const m = await measure(argv, { scratch: work, env });
          results.set(tool, [...(results.get(tool) ?? []), m]);
          // Untimed: an object written over goes to the gateway's garbage collector, which by default waits 2 h;
          // without this, upload runs fill the memstore OSD and the gateway holds requests (vdisk then times them out).
          if (c.name.includes('→ S3')) await runOk(['radosgw-admin', '-c', join(ceph.dir, 'ceph.conf'), 'gc', 'process', '--include-all']);
          console.error(`${c.name} | ${tool} | run ${r + 1}: ${m.wall.toFixed(2)} s wall, ${m.cpu?.toFixed(2) ?? '?'} s CPU, ${((m.rss ?? 0) / (1 << 20)).toFixed(0)} MiB`);
        }
      }
      const [vdiskTool] = c.tools[0];
      const vdiskWall = median(results.get(vdiskTool)!.map((m) => m.wall));
      const vdiskCpu = median(results.get(vdiskTool)!.map((m) => m.cpu ?? NaN));
      for (const [tool] of c.tools) {
        const ms = results.get(tool)!;
        const wall = median(ms.map((m) => m.wall));
        const cpu = median(ms.map((m) => m.cpu ?? NaN));
        const rss = Math.max(...ms.map((m) => m.rss ?? 0)) / (1 << 20);
        const ratios = tool === vdiskTool ? ' | ' : `${(vdiskWall / wall).toFixed(2)}x | ${(vdiskCpu / cpu).toFixed(2)}x`;
        lines.push(`| ${c.name} | ${tool} | ${wall.toFixed(2)} | ${cpu.toFixed(2)} | ${rss ? rss.toFixed(0) : '?'} | ${ratios} |`);
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
