import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { freePort } from './nginx.js';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { TestContext } from 'node:test';
import { BlobSASPermissions, BlobServiceClient, type ContainerClient } from '@azure/storage-blob';

/**
 * Azurite, Microsoft's Azure Storage emulator (a dev dependency), for the
 * page-blob tests: its blob service on 127.0.0.1 at a free port, in-memory,
 * its workspace in a temporary folder, started once per test file (node
 * --test runs each file in its own process) and stopped when the process
 * ends. `--skipApiVersionCheck`: the SDK sends a newer API version than
 * Azurite knows. Locally a start that fails skips the tests; under CI=true
 * it fails them.
 */

const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
/** Azurite's documented development account (public, the same in every Azurite). */
const ACCOUNT = 'devstoreaccount1';
const KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export interface Azurite {
  port: number;
  connectionString: string;
  service: BlobServiceClient;
  container(name: string): Promise<ContainerClient>;
  /** A blob URL with a SAS of `permissions` (e.g. 'racwd'), expiring at `expiresOn` (default: in an hour). */
  sasUrl(container: string, blob: string, permissions?: string, expiresOn?: Date): Promise<string>;
}

let started: Promise<Azurite> | undefined;
let child: ChildProcess | undefined;
let workspace: string | undefined;

function stop(): void {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  child = undefined;
  if (workspace) rmSync(workspace, { recursive: true, force: true });
  workspace = undefined;
}
process.once('exit', stop);

async function launch(): Promise<Azurite> {
  const bin = join(dirname(createRequire(import.meta.url).resolve('azurite/package.json')), 'dist', 'src', 'blob', 'main.js');
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    workspace = mkdtempSync(join(tmpdir(), 'vdisk-azurite-'));
    const args = [bin, '--blobHost', '127.0.0.1', '--blobPort', String(port), '--inMemoryPersistence', '--extentMemoryLimit', '6144', '--skipApiVersionCheck', '--disableTelemetry'];
    // In memory, so nothing is persisted; anything else it writes goes to its own temporary folder (cwd).
    const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: workspace });
    child = proc;
    const ok = await new Promise<boolean>((resolve) => {
      let out = '';
      const timer = setTimeout(() => resolve(false), 60_000);
      const seen = (d: Buffer) => {
        out += d.toString();
        if (/successfully listens/.test(out)) {
          clearTimeout(timer);
          resolve(true);
        }
      };
      proc.stdout!.on('data', seen);
      proc.stderr!.on('data', seen);
      proc.once('exit', () => {
        clearTimeout(timer);
        lastError = out;
        resolve(false);
      });
    });
    if (!ok) {
      stop();
      continue;
    }
    // Its output is no longer read: drain it so a full pipe never stalls it.
    proc.stdout!.resume();
    proc.stderr!.resume();
    proc.unref();
    (proc.stdout as unknown as { unref?: () => void }).unref?.();
    (proc.stderr as unknown as { unref?: () => void }).unref?.();
    const endpoint = `http://127.0.0.1:${port}/${ACCOUNT}`;
    const connectionString = `DefaultEndpointsProtocol=http;AccountName=${ACCOUNT};AccountKey=${KEY};BlobEndpoint=${endpoint};`;
    const service = BlobServiceClient.fromConnectionString(connectionString);
    return {
      port,
      connectionString,
      service,
      async container(name) {
        const c = service.getContainerClient(name);
        await c.createIfNotExists();
        return c;
      },
      async sasUrl(container, blob, permissions = 'racwd', expiresOn = new Date(Date.now() + 3600_000)) {
        const c = service.getContainerClient(container);
        await c.createIfNotExists();
        return c.getBlobClient(blob).generateSasUrl({ permissions: BlobSASPermissions.parse(permissions), expiresOn, startsOn: new Date(Date.now() - 3600_000) });
      },
    };
  }
  throw new Error(`Azurite did not start: ${lastError.slice(0, 500)}`);
}

/** Azurite for this process (started on first call; the bench uses it too). */
export function startAzurite(): Promise<Azurite> {
  started ??= launch();
  return started;
}

/** Azurite for this test file, or null (the test is skipped) where it cannot start outside CI. */
export async function requireAzurite(t: TestContext): Promise<Azurite | null> {
  try {
    return await startAzurite();
  } catch (e) {
    if (IN_CI) throw e;
    t.skip(`Azurite not available: ${(e as Error).message}`);
    return null;
  }
}
