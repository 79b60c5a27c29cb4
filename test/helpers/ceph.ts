import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './nginx.js';

/**
 * A single-node Ceph cluster with a RADOS Gateway (S3) on loopback, from
 * Debian's packages (radosgw, ceph-mon, ceph-osd, ceph-common), for the S3
 * host's tests and the bench. No block devices, no systemd, no manager:
 * one monitor, one OSD keeping objects in memory (memstore), cephx off, the
 * gateway's beast frontend on a free 127.0.0.1 port and an S3 user made by
 * radosgw-admin. Started once per process (a lazy singleton: `startCeph`),
 * every daemon a child in the foreground (-f) with all its state in one
 * temporary folder, killed and removed when the process exits. Takes ~10 s
 * and ~150 MiB plus what is stored.
 *
 * Traps of this release (16.2), from issue 18: without cephx, radosgw hangs
 * until `ms mon client mode = crc`; the SDK's default checksums get HTTP 411
 * (io/s3-client.ts turns them off); CompleteMultipartUpload answers with an
 * empty ETag (io/s3-sink.ts asks HeadObject).
 */
export interface Ceph {
  /** http://127.0.0.1:PORT */
  endpoint: string;
  accessKey: string;
  secretKey: string;
  /** Environment for a client (the SDK's variables). */
  env: Record<string, string>;
  dir: string;
}

const BINARIES = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'monmaptool', 'ceph'];

/** Whether the Ceph programs are installed. */
export function hasCeph(): boolean {
  return BINARIES.every((b) => spawnSync('sh', ['-c', `command -v ${b}`], { stdio: 'ignore' }).status === 0);
}

let started: Promise<Ceph> | undefined;
let stopper: (() => void) | undefined;

/** Stop the cluster of this process now (the tests' after hook: its daemons would keep the process alive). */
export function stopCeph(): void {
  stopper?.();
}

/** The cluster of this process (started on the first call). `memBytes`: the OSD's store size (first call only). */
export function startCeph(memBytes = 1 << 30): Promise<Ceph> {
  started ??= start(memBytes);
  return started;
}

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

async function start(memBytes: number): Promise<Ceph> {
  const dir = mkdtempSync(join(tmpdir(), 'vdisk-ceph-'));
  const children: ChildProcess[] = [];
  const stop = () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', stop);
  stopper = stop;
  try {
    for (const d of ['run', 'log', 'mon', 'osd/ceph-0', 'rgw']) mkdirSync(join(dir, d), { recursive: true });
    const [monPort, rgwPort] = [await freePort(), await freePort()];
    const fsid = run('uuidgen', []).trim();
    const conf = join(dir, 'ceph.conf');
    writeFileSync(
      conf,
      `[global]
fsid = ${fsid}
mon host = v2:127.0.0.1:${monPort}
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms mon client mode = crc
ms bind ipv6 = false
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
log file = ${dir}/log/$name.log
mon data = ${dir}/mon/$cluster-$id
osd data = ${dir}/osd/$cluster-$id
keyring = ${dir}/keyring
mon data avail crit = 1
mon data avail warn = 2
osd objectstore = memstore
memstore device bytes = ${memBytes}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:${rgwPort}
rgw data = ${dir}/rgw
`,
    );
    writeFileSync(join(dir, 'keyring'), '');
    const daemon = (cmd: string, args: string[]) => {
      const c = spawn(cmd, ['-f', '-c', conf, ...args], { stdio: 'ignore' });
      c.unref(); // the process may end with the cluster running: the exit hook kills it
      children.push(c);
      return c;
    };
    run('monmaptool', ['--create', '--add', 'a', `v2:127.0.0.1:${monPort}`, '--fsid', fsid, join(dir, 'monmap')]);
    run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap')]);
    daemon('ceph-mon', ['-i', 'a']);
    const osdId = run('ceph', ['-c', conf, '--connect-timeout', '30', 'osd', 'create']).trim();
    run('ceph-osd', ['-c', conf, '-i', osdId, '--mkfs']);
    daemon('ceph-osd', ['-i', osdId]);
    const rgw = daemon('radosgw', ['-n', 'client.rgw']);
    const endpoint = `http://127.0.0.1:${rgwPort}`;
    for (let i = 0; ; i++) {
      if (rgw.exitCode !== null) throw new Error(`radosgw exited with ${rgw.exitCode}: ${log(dir, 'client.rgw')}`);
      try {
        await fetch(endpoint);
        break;
      } catch {
        if (i > 600) throw new Error(`radosgw did not answer on ${endpoint} within 60 s: ${log(dir, 'client.rgw')}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const accessKey = 'VDISKTESTACCESSKEY';
    const secretKey = 'vdisk-test-secret-key-0123456789abcdef';
    run('radosgw-admin', ['-c', conf, 'user', 'create', '--uid', 'vdisk', '--display-name', 'vdisk tests', '--access-key', accessKey, '--secret', secretKey]);
    return {
      endpoint,
      accessKey,
      secretKey,
      dir,
      env: { AWS_ACCESS_KEY_ID: accessKey, AWS_SECRET_ACCESS_KEY: secretKey, AWS_ENDPOINT_URL: endpoint, AWS_REGION: 'us-east-1' },
    };
  } catch (e) {
    stop();
    throw e;
  }
}

function log(dir: string, name: string): string {
  try {
    return readFileSync(join(dir, 'log', `${name}.log`), 'utf8').split('\n').slice(-15).join('\n');
  } catch {
    return '(no log)';
  }
}
