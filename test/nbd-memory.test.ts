import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startNbdServer, type NbdServer } from '../src/nbd/server.js';
import { NbdClient, SocketReader, optionFrame, requestFrame } from './helpers/nbd-client.js';
import * as P from '../src/nbd/protocol.js';
import { tempDir } from './helpers/oracle.js';

/*
 * Issue 21: clients that announce a large NBD_CMD_WRITE, send part of its
 * payload and stall must not make the server hold their payloads beyond its
 * server-wide budget. Counts, not times: the test waits until every stalled
 * client is either waiting for the budget or has had all it sent received.
 */

const MiB = 1 << 20;
/** Node reads a socket 64 KiB at a time: what a paused client can have handed the parser. */
const ONE_READ = 64 * 1024;

/** A client through the handshake into transmission on export "disk" (old-style NBD_OPT_EXPORT_NAME). */
async function connected(server: NbdServer): Promise<Socket> {
  const socket = connect(server.port!, '127.0.0.1');
  const reader = new SocketReader(socket);
  await new Promise<void>((r, j) => socket.once('connect', r).once('error', j));
  await reader.read(18);
  const f = Buffer.alloc(4);
  f.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES);
  socket.write(f);
  socket.write(optionFrame(P.OPT_EXPORT_NAME, Buffer.from('disk')));
  await reader.read(10);
  return socket;
}

async function stalledWriter(server: NbdServer, payloadLength: number, sent: number): Promise<Socket> {
  const socket = await connected(server);
  socket.write(requestFrame(P.CMD_WRITE, 0, 1n, 0, payloadLength));
  socket.write(Buffer.alloc(sent, 0x5a));
  return socket;
}

async function until(cond: () => boolean): Promise<void> {
  // Bounded by the test's own timeout; polling only, nothing asserted about time.
  while (!cond()) await new Promise((r) => setTimeout(r, 20));
}

async function withDisk(body: (path: string) => Promise<void>): Promise<void> {
  const d = tempDir('vdisk-nbd-mem-');
  const path = join(d.dir, 'disk.raw');
  writeFileSync(path, new Uint8Array(0));
  truncateSync(path, 64 * MiB);
  try {
    await body(path);
  } finally {
    d.cleanup();
  }
}

test('stalled large writes: payloads held stay within the server-wide budget; a client still writes and reads once they go', { timeout: 120_000 }, async () => {
  await withDisk(async (path) => {
    const n = 24;
    const payload = 8 * MiB;
    const sent = MiB;
    const server = await startNbdServer({ path, format: 'raw', port: 0, exportName: 'disk', persistent: true, shared: n + 1, maxServerInFlightBytes: 4 * MiB });
    try {
      const stalled: Socket[] = [];
      for (let i = 0; i < n; i++) stalled.push(await stalledWriter(server, payload, sent));
      // Either each client's header waits for the budget, or all it sent has been received.
      await until(() => {
        const s = server.stats();
        return s.waitingForBudget === n - 1 || s.receivedBytes >= n * sent;
      });
      const s = server.stats();
      // One payload admitted (an empty budget admits any size), the others at most one socket read each.
      assert.ok(s.receivedBytes <= payload + n * ONE_READ, `received and held ${s.receivedBytes} bytes from ${n} stalled clients`);
      assert.ok(s.budgetUsed <= payload, `budget used ${s.budgetUsed}`);

      // A well-behaved client waits for the budget, then is served once the stalled clients are gone.
      const good = await NbdClient.connect({ port: server.port, exportName: 'disk' });
      const data = Buffer.alloc(256 * 1024, 0xa7);
      const write = good.write(32 * MiB, data);
      await until(() => server.stats().waitingForBudget === n);
      for (const sock of stalled) sock.destroy();
      await write;
      assert.ok((await good.read(32 * MiB, data.length)).equals(data));
      await good.disconnect();
      await until(() => server.stats().budgetUsed === 0);
    } finally {
      await server.close();
    }
  });
});

test('stalled large writes: the idle timeout frees the budget a stalled client holds', { timeout: 120_000 }, async () => {
  await withDisk(async (path) => {
    const server = await startNbdServer({ path, format: 'raw', port: 0, exportName: 'disk', persistent: true, shared: 4, idleTimeoutMs: 200, maxServerInFlightBytes: 4 * MiB });
    try {
      const a = await stalledWriter(server, 8 * MiB, 512 * 1024);
      const b = await stalledWriter(server, 8 * MiB, 512 * 1024);
      await until(() => server.stats().waitingForBudget === 1);
      // Both are cut by the idle timer; the reservation goes back.
      await until(() => server.connections === 0);
      assert.equal(server.stats().budgetUsed, 0);
      a.destroy();
      b.destroy();
      const good = await NbdClient.connect({ port: server.port, exportName: 'disk' });
      const data = Buffer.alloc(4096, 1);
      await good.write(0, data);
      assert.ok((await good.read(0, 4096)).equals(data));
      await good.disconnect();
    } finally {
      await server.close();
    }
  });
});

/** A client that asks for one large read and never takes the reply (its socket is not read). */
async function stalledReader(server: NbdServer, length: number): Promise<Socket> {
  const socket = await connected(server);
  socket.pause();
  socket.write(requestFrame(P.CMD_READ, 0, 1n, 0, length));
  return socket;
}

test('stalled large reads: reply buffers held stay within the server-wide budget; a client still reads once they go', { timeout: 120_000 }, async () => {
  await withDisk(async (path) => {
    const n = 8;
    // Larger than what loopback TCP's buffers can take from a client that reads nothing.
    const length = 24 * MiB;
    const server = await startNbdServer({ path, format: 'raw', port: 0, exportName: 'disk', persistent: true, shared: n + 1, maxServerInFlightBytes: 4 * MiB });
    const stalled: Socket[] = [];
    try {
      for (let i = 0; i < n; i++) stalled.push(await stalledReader(server, length));
      // Either every read but one waits for the budget, or the server took more than one.
      await until(() => {
        const s = server.stats();
        return s.waitingForBudget === n - 1 || s.budgetUsed > length;
      });
      const s = server.stats();
      // One read admitted (an empty budget admits any size), the others wait before any buffer is made for them.
      assert.ok(s.budgetUsed <= length, `budget used ${s.budgetUsed} by ${n} stalled readers`);
      assert.equal(s.waitingForBudget, n - 1);

      const good = await NbdClient.connect({ port: server.port, exportName: 'disk' });
      const read = good.read(MiB, 4096);
      await until(() => server.stats().waitingForBudget === n);
      for (const sock of stalled) sock.destroy();
      assert.ok((await read).equals(Buffer.alloc(4096)));
      await good.disconnect();
      await until(() => server.stats().budgetUsed === 0);
    } finally {
      for (const sock of stalled) sock.destroy();
      await server.close();
    }
  });
});
