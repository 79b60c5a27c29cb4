// Issue 21 measurement (BENCHMARKS.md "Session 8"): `vdisk serve -e N` of a
// dynamic VHD against N clients that each send the header of a 32 MiB
// NBD_CMD_WRITE and 512 KiB of its payload, then stall. Prints the server's
// peak RSS (VmHWM from /proc). Usage: node scripts/nbd-stall.mjs [N=1000]
import { spawn, execFileSync } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const n = Number(process.argv[2] ?? 1000);
const payload = 32 << 20;
const sent = 512 << 10;
const dir = mkdtempSync(join(tmpdir(), 'vdisk-stall-'));
const image = join(dir, 'disk.vhd');
const vdisk = new URL('../bin/vdisk.cjs', import.meta.url).pathname;
execFileSync(process.execPath, [vdisk, 'create', '-f', 'vhd', image, '4G']);
const server = spawn(process.execPath, [vdisk, 'serve', '-f', 'vhd', '-p', '0', '-e', String(n), '-t', '-v', image], { stdio: ['ignore', 'pipe', 'pipe'] });
const port = await new Promise((resolve, reject) => {
  let text = '';
  const look = (b) => {
    text += b;
    const m = /127\.0\.0\.1:(\d+)/.exec(text);
    if (m) resolve(Number(m[1]));
  };
  server.stdout.on('data', look);
  server.stderr.on('data', look);
  server.once('exit', (c) => reject(new Error(`serve exited (${c}): ${text}`)));
});
const hwm = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${server.pid}/status`, 'utf8'))[1]) * 1024;

function u32(v) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}
function stalled() {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let got = Buffer.alloc(0);
    let stage = 0;
    s.on('error', reject);
    s.on('data', (d) => {
      got = Buffer.concat([got, d]);
      if (stage === 0 && got.length >= 18) {
        got = got.subarray(18);
        stage = 1;
        const name = Buffer.alloc(0);
        // Client flags (fixed newstyle, no zeroes), then NBD_OPT_EXPORT_NAME "".
        s.write(Buffer.concat([u32(3), Buffer.from('IHAVEOPT'), u32(1), u32(name.length), name]));
      }
      if (stage === 1 && got.length >= 10) {
        stage = 2;
        const h = Buffer.alloc(28);
        h.writeUInt32BE(0x25609513, 0);
        h.writeUInt16BE(1, 6); // NBD_CMD_WRITE
        h.writeBigUInt64BE(1n, 8);
        h.writeUInt32BE(payload, 24);
        s.write(h);
        s.write(Buffer.alloc(sent, 0x5a), () => resolve(s));
      }
    });
  });
}

const before = hwm();
const sockets = [];
for (let i = 0; i < n; i += 50) sockets.push(...(await Promise.all(Array.from({ length: Math.min(50, n - i) }, stalled))));
// Let the server take in what it will (it is quiet once every socket is read or paused).
let last = -1;
for (let i = 0; i < 60; i++) {
  await new Promise((r) => setTimeout(r, 500));
  const now = hwm();
  if (now === last) break;
  last = now;
}
console.log(`${n} stalled clients (32 MiB write announced, 512 KiB sent): serve peak RSS ${(hwm() / 2 ** 20).toFixed(0)} MiB (before the clients: ${(before / 2 ** 20).toFixed(0)} MiB)`);
for (const s of sockets) s.destroy();
server.kill();
rmSync(dir, { recursive: true, force: true });
