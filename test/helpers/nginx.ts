import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

/**
 * nginx from Debian serving a test folder on a free loopback port: real
 * range support and keep-alive, for the HTTP host's tests. Run as a plain
 * process (`daemon off`, `master_process off`) with its config, pid, logs
 * and temp folders in a temporary directory; stopped by `stop()` and when
 * this process exits. Locally a missing nginx skips the test; under
 * CI=true it fails (as the oracles do: test/helpers/oracle.ts).
 */
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
const NGINX = ['/usr/sbin/nginx', 'nginx'];

export interface Nginx {
  /** The folder served at the root. */
  root: string;
  /** `http://127.0.0.1:PORT` (no trailing slash). */
  url: string;
  stop(): void;
}

/** A free loopback TCP port (a race with other processes is possible but unlikely; the start fails clearly then). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function findNginx(): string | undefined {
  return NGINX.find((n) => spawnSync(n, ['-v'], { stdio: 'ignore' }).status === 0);
}

async function waitFor(url: string, child: ChildProcess, log: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`nginx exited with ${child.exitCode}: ${readLog(log)}`);
    try {
      await fetch(url);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`nginx did not answer on ${url}: ${readLog(log)}`);
}

function readLog(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '(no log)';
  }
}

/** Start nginx serving `root`, or skip (locally) / fail (CI) when nginx is missing. Undefined when skipped. */
export async function startNginx(t: TestContext, root: string): Promise<Nginx | undefined> {
  const bin = findNginx();
  if (!bin) {
    if (IN_CI) throw new Error('nginx is required in CI but not installed (see .ci/run)');
    t.skip('nginx not installed');
    return undefined;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vdisk-nginx-'));
  const port = await freePort();
  for (const d of ['client', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, d));
  const conf = join(dir, 'nginx.conf');
  const log = join(dir, 'error.log');
  writeFileSync(
    conf,
    `daemon off;
master_process off;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${log} warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${join(dir, 'client')};
  proxy_temp_path ${join(dir, 'proxy')};
  fastcgi_temp_path ${join(dir, 'fastcgi')};
  uwsgi_temp_path ${join(dir, 'uwsgi')};
  scgi_temp_path ${join(dir, 'scgi')};
  keepalive_requests 10000;
  server {
    listen 127.0.0.1:${port};
    root ${root};
    location /loop/ { return 302 /loop/again; }
    location = /loop/again { return 302 /loop/x; }
    location /private/ { return 403; }
  }
}
`,
  );
  const child = spawn(bin, ['-p', dir, '-c', conf], { stdio: 'ignore' });
  const stop = () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', stop);
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(url + '/', child, log);
  } catch (e) {
    stop();
    throw e;
  }
  return { root, url, stop };
}
