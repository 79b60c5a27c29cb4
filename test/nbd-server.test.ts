import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { once } from 'node:events';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { startNbdServer, type NbdServer, type NbdServerOptions } from '../src/nbd/server.js';
import { openChain } from '../src/chain/open.js';
import type { Chain } from '../src/chain/chain.js';
import { NbdClient, NbdRequestError, SocketReader, optionFrame, requestFrame } from './helpers/nbd-client.js';
import * as P from '../src/nbd/protocol.js';
import { tempDir } from './helpers/oracle.js';
import { createImage } from '../src/ops/create.js';
import { FORMATS } from '../src/formats/registry.js';
import { rng, randomBytes, randInt } from './helpers/random.js';

/*
 * The server over real loopback sockets, driven by vdisk's small client and
 * by hand-made frames: every command, the errors the protocol names, several
 * clients at once, and clients that misbehave while others are served.
 */

const MiB = 1 << 20;

async function withServer(
  size: number,
  options: Partial<NbdServerOptions>,
  body: (server: NbdServer, path: string, dir: string) => Promise<void>,
  format = 'raw',
): Promise<void> {
  const d = tempDir('vdisk-nbd-');
  const path = join(d.dir, `disk.${format}`);
  if (format === 'raw') {
    writeFileSync(path, new Uint8Array(0));
    truncateSync(path, size);
  } else await createImage({ path, format, size });
  const server = await startNbdServer({ path, format, port: 0, exportName: 'disk', persistent: true, shared: 8, ...options });
  try {
    await body(server, path, d.dir);
  } finally {
    await server.close();
    d.cleanup();
  }
}

function client(server: NbdServer, extra: Partial<Parameters<typeof NbdClient.connect>[0]> = {}): Promise<NbdClient> {
  return NbdClient.connect({ port: server.port, socketPath: server.socketPath, exportName: 'disk', ...extra });
}

async function errnoOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof NbdRequestError, `not a request error: ${(e as Error).stack}`);
    return e.errno;
  }
  assert.fail('request succeeded but should have failed');
}

/** A raw socket that has read the greeting and sent the client flags. */
async function rawClient(server: NbdServer, flags = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES): Promise<{ socket: Socket; reader: SocketReader }> {
  const socket = connect(server.port!, '127.0.0.1');
  const reader = new SocketReader(socket);
  await new Promise<void>((r, j) => socket.once('connect', r).once('error', j));
  const greeting = await reader.read(18);
  assert.equal(greeting.subarray(0, 8).toString('latin1'), 'NBDMAGIC');
  assert.equal(greeting.readUInt16BE(16), P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES);
  const f = Buffer.alloc(4);
  f.writeUInt32BE(flags);
  socket.write(f);
  return { socket, reader };
}

/** Enter transmission with NBD_OPT_EXPORT_NAME on a raw socket (simple replies only). */
async function rawTransmission(server: NbdServer): Promise<{ socket: Socket; reader: SocketReader }> {
  const c = await rawClient(server);
  c.socket.write(optionFrame(P.OPT_EXPORT_NAME, Buffer.from('disk')));
  const info = await c.reader.read(10);
  assert.equal(Number(info.readBigUInt64BE(0)), server.export.size);
  return c;
}

test('commands: write, read, FUA, flush, write zeroes, block status — structured and simple replies', async () => {
  const size = 8 * MiB;
  await withServer(size, {}, async (server, path) => {
    const model = Buffer.alloc(size);
    for (const structured of [true, false]) {
      const c = await client(server, { structured });
      assert.equal(c.size, size);
      assert.equal(c.structured, structured);
      const r = rng(structured ? 1 : 2);
      for (let i = 0; i < 40; i++) {
        const off = randInt(r, 0, size - 200_000);
        const len = randInt(r, 1, 200_000);
        const data = Buffer.from(randomBytes(r, len));
        await c.write(off, data, i % 3 === 0 ? P.CMD_FLAG_FUA : 0);
        data.copy(model, off);
        if (i % 7 === 0) {
          const zoff = randInt(r, 0, size - 100_000);
          const zlen = randInt(r, 1, 100_000);
          await c.writeZeroes(zoff, zlen, i % 2 ? P.CMD_FLAG_NO_HOLE : 0);
          model.fill(0, zoff, zoff + zlen);
        }
      }
      await c.flush();
      for (let off = 0; off < size; off += 3 * MiB) {
        const n = Math.min(3 * MiB, size - off);
        assert.ok((await c.read(off, n, structured ? P.CMD_FLAG_DF : 0)).equals(model.subarray(off, off + n)), `read at ${off}`);
      }
      assert.equal((await c.read(100, 0)).length, 0, 'zero-length read');
      if (structured) {
        const bs = (await c.blockStatus(0, size)).get('base:allocation')!;
        const expected = (await server.export.chain.blockStatus(0, size)).map((e) => (e.kind === 'data' ? 0 : P.STATE_HOLE | P.STATE_ZERO));
        assert.equal(bs.reduce((n, e) => n + e.length, 0), size, 'extents cover the request');
        // Adjacent chain extents with the same flags are merged in the reply.
        const merged = expected.filter((f, i) => i === 0 || f !== expected[i - 1]);
        assert.deepEqual(bs.map((e) => e.flags), merged);
        const one = (await c.blockStatus(0, size, P.CMD_FLAG_REQ_ONE)).get('base:allocation')!;
        assert.equal(one.length, 1);
      }
      await c.disconnect();
    }
    await server.close();
    assert.ok(readFileSync(path).equals(model), 'the image file holds what the clients wrote');
  });
});

test('errors: out of range, oversize, unknown commands and flags, not offered — and the connection goes on', async () => {
  const size = 4 * MiB;
  await withServer(size, {}, async (server) => {
    for (const structured of [true, false]) {
      const c = await client(server, { structured });
      assert.equal(await errnoOf(c.read(size - 10, 20)), P.NBD_EINVAL, 'read past the end');
      assert.equal(await errnoOf(c.read(2 ** 60, 1)), P.NBD_EINVAL, 'offset beyond 2^53');
      assert.equal(await errnoOf(c.write(size - 10, Buffer.alloc(20))), P.NBD_ENOSPC, 'write past the end');
      assert.equal(await errnoOf(c.writeZeroes(size, 512)), P.NBD_ENOSPC);
      assert.equal(await errnoOf(c.read(0, 33 * MiB)), P.NBD_EINVAL, 'read over the maximum block size');
      // An oversize write: the server skips the payload and stays in step.
      assert.equal(await errnoOf(c.write(0, Buffer.alloc(33 * MiB, 1))), P.NBD_EINVAL, 'write over the maximum block size');
      assert.equal(await errnoOf(c.request(42, 0, 0, 512)), P.NBD_EINVAL, 'unknown command');
      assert.equal(await errnoOf(c.request(P.CMD_CACHE, 0, 0, 512)), P.NBD_EINVAL, 'cache is not offered');
      assert.equal(await errnoOf(c.read(0, 512, 1 << 9)), P.NBD_EINVAL, 'unknown flag');
      assert.equal(await errnoOf(c.read(0, 512, P.CMD_FLAG_NO_HOLE)), P.NBD_EINVAL, 'flag of another command');
      assert.equal(await errnoOf(c.trim(0, 512)), P.NBD_EINVAL, 'raw cannot trim, so trim is not offered');
      assert.equal(await errnoOf(c.writeZeroes(0, 512, P.CMD_FLAG_FAST_ZERO)), P.NBD_EINVAL, 'fast zero not offered for raw');
      if (structured) assert.equal(await errnoOf(c.blockStatus(0, 0)), P.NBD_EINVAL, 'empty block status');
      else assert.equal(await errnoOf(c.request(P.CMD_BLOCK_STATUS, 0, 0, 512)), P.NBD_EINVAL, 'no context selected');
      if (structured) assert.equal((await c.read(0, 512, P.CMD_FLAG_DF)).length, 512);
      else assert.equal(await errnoOf(c.read(0, 512, P.CMD_FLAG_DF)), P.NBD_EINVAL, 'DF without structured replies');
      await c.write(512, Buffer.alloc(512, 9));
      assert.ok((await c.read(512, 512)).equals(Buffer.alloc(512, 9)), 'still served after all those errors');
      await c.disconnect();
    }
  });
  await withServer(MiB, { readOnly: true }, async (server) => {
    const c = await client(server);
    assert.ok(c.flags & P.FLAG_READ_ONLY);
    assert.equal(await errnoOf(c.write(0, Buffer.alloc(512))), P.NBD_EPERM);
    assert.equal(await errnoOf(c.writeZeroes(0, 512)), P.NBD_EPERM);
    assert.equal(await errnoOf(c.trim(0, 512)), P.NBD_EPERM);
    await c.flush();
    assert.equal((await c.read(0, 512)).length, 512);
    await c.disconnect();
  });
});

for (const format of ['raw', ...FORMATS.filter((f) => f.name === 'vhdx' || f.name === 'vhd').map((f) => f.name)]) {
test(`two connections writing overlapping ranges: every write lands whole (${format})`, async () => {
  const size = 16 * MiB;
  await withServer(size, { shared: 2 }, async (server) => {
    const a = await client(server);
    const b = await client(server);
    assert.ok(a.flags & P.FLAG_CAN_MULTI_CONN, 'multi-conn offered when clients share the chain');
    const len = 4 * MiB;
    // B's range starts inside A's at an unaligned offset, so its edges need read-modify-write.
    const aOff = 0;
    const bOff = MiB + 100;
    for (let round = 0; round < 12; round++) {
      const pa = 2 * round + 1;
      const pb = 2 * round + 2;
      await Promise.all([a.write(aOff, Buffer.alloc(len, pa)), b.write(bOff, Buffer.alloc(len, pb)), a.write(aOff + 8 * MiB, Buffer.alloc(len, pa)), b.write(aOff + 8 * MiB, Buffer.alloc(len, pb))]);
      const all = await a.read(0, 16 * MiB);
      const region = (from: number, to: number) => all.subarray(from, to);
      const uniform = (buf: Buffer) => buf.every((x) => x === buf[0]);
      assert.ok(region(aOff, bOff).every((x) => x === pa), `round ${round}: A alone`);
      assert.ok(region(aOff + len, bOff + len).every((x) => x === pb), `round ${round}: B alone`);
      const overlap = region(bOff, aOff + len);
      assert.ok(uniform(overlap) && (overlap[0] === pa || overlap[0] === pb), `round ${round}: overlap torn`);
      const same = region(8 * MiB, 8 * MiB + len);
      assert.ok(uniform(same) && (same[0] === pa || same[0] === pb), `round ${round}: same range torn`);
    }
    await a.flush();
    await Promise.all([a.disconnect(), b.disconnect()]);
  }, format);
});
}

test('misbehaving clients: mid-request disconnects, garbage, lies and silence — others keep being served', async () => {
  await withServer(4 * MiB, { handshakeTimeoutMs: 300, shared: 64 }, async (server, path) => {
    const good = await client(server);
    await good.write(0, Buffer.alloc(4096, 0x11), P.CMD_FLAG_FUA);

    // A write header and half its payload, then the client vanishes.
    const half = await rawTransmission(server);
    half.socket.write(requestFrame(P.CMD_WRITE, 0, 7n, MiB, 65536, Buffer.alloc(65536, 0x22)).subarray(0, 28 + 30000));
    half.socket.destroy();

    // Acknowledged writes, then an abrupt disconnect: they stay.
    const abrupt = await rawTransmission(server);
    abrupt.socket.write(requestFrame(P.CMD_WRITE, 0, 8n, 65536, 4096, Buffer.alloc(4096, 0x33)));
    const reply = await abrupt.reader.read(16);
    assert.equal(reply.readUInt32BE(4), 0, 'write acknowledged');
    // Then a read whose reply it never takes.
    abrupt.socket.write(requestFrame(P.CMD_READ, 0, 9n, 0, 1 << 20));
    abrupt.socket.destroy();

    // A client that never finishes the handshake is dropped after the timeout.
    const silent = await rawClient(server);
    // A client that lies about its option length (declares more than it sends) also waits into the timeout.
    const liar = await rawClient(server);
    liar.socket.write(optionFrame(P.OPT_GO, Buffer.alloc(10)).subarray(0, 20));
    // A client whose option declares 1 GiB gets NBD_REP_ERR_TOO_BIG once the bytes pass, not an allocation.
    const big = await rawClient(server);
    const hdr = optionFrame(P.OPT_INFO);
    hdr.writeUInt32BE(200_000, 12);
    big.socket.write(Buffer.concat([hdr, Buffer.alloc(200_000)]));
    const bigReply = await big.reader.read(20);
    assert.equal(bigReply.readUInt32BE(12), P.REP_ERR_TOO_BIG);
    big.socket.destroy();
    // Unknown client flags: closed at once.
    const flagged = await rawClient(server, 0x80);
    assert.equal(await flagged.reader.closed(), true);
    // A transmission-phase client that breaks the request magic is cut off.
    const broken = await rawTransmission(server);
    broken.socket.write(Buffer.alloc(28, 0xee));
    assert.equal(await broken.reader.closed(), true);

    assert.equal(await silent.reader.closed(), true, 'silent client dropped by the handshake timeout');
    assert.equal(await liar.reader.closed(), true, 'lying client dropped by the handshake timeout');

    // Random bytes after the greeting, from many clients.
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 300 }), async (bytes) => {
        const g = await rawClient(server);
        g.socket.write(Buffer.concat([optionFrame(P.OPT_LIST).subarray(0, 8), Buffer.from(bytes)]));
        g.socket.end();
        await g.reader.closed();
      }),
      { numRuns: 40 },
    );

    assert.ok((await good.read(0, 4096)).equals(Buffer.alloc(4096, 0x11)), 'the good client is still served');
    await good.disconnect();
    await server.close();
    const file = readFileSync(path);
    assert.ok(file.subarray(65536, 65536 + 4096).equals(Buffer.alloc(4096, 0x33)), 'acknowledged write of a vanished client kept');
    assert.ok(file.subarray(MiB, MiB + 65536).every((x) => x === 0), 'the half-sent write did not land');
  });
});

test('shared cap, non-persistent stop, unix socket, close with a client attached', async () => {
  const d = tempDir('vdisk-nbd-');
  try {
    const path = join(d.dir, 'disk.raw');
    writeFileSync(path, Buffer.alloc(MiB, 5));
    const socketPath = join(d.dir, 'nbd.sock');
    const server = await startNbdServer({ path, socketPath, exportName: 'disk' });
    assert.equal(server.address, `nbd+unix:///disk?socket=${socketPath}`);
    const first = await NbdClient.connect({ socketPath, exportName: 'disk' });
    assert.equal(first.flags & P.FLAG_CAN_MULTI_CONN, 0, 'one client at a time: no multi-conn');
    await assert.rejects(NbdClient.connect({ socketPath, exportName: 'disk' }), 'second client refused with --shared 1');
    assert.ok((await first.read(0, 512)).equals(Buffer.alloc(512, 5)));
    await first.write(0, Buffer.alloc(512, 6));
    await first.disconnect();
    // Not persistent: the server stops once the last client has left, flushing the image.
    await server.closed;
    assert.ok(readFileSync(path).subarray(0, 512).equals(Buffer.alloc(512, 6)));

    const persistent = await startNbdServer({ path, port: 0, persistent: true, exportName: 'disk' });
    const c = await NbdClient.connect({ port: persistent.port, exportName: 'disk' });
    await c.disconnect();
    const again = await NbdClient.connect({ port: persistent.port, exportName: '' });
    const pending = again.read(0, 4 * 512).then(
      (b) => b.subarray(0, 512).equals(Buffer.alloc(512, 6)),
      () => 'not taken',
    );
    await persistent.close();
    // A request the server had taken is answered correctly; one still in the socket is dropped with the connection.
    assert.notEqual(await pending, false);
    await assert.rejects(again.read(0, 512));
  } finally {
    d.cleanup();
  }
});

test('tight in-flight budgets: pipelined requests from several clients all complete, in any order', async () => {
  const size = 4 * MiB;
  const content = Buffer.from(randomBytes(rng(9), size));
  await withServer(size, { maxServerInFlightBytes: 256 * 1024, limits: { maxInFlight: 3, maxInFlightBytes: 300 * 1024, maxQueuedReplyBytes: 64 * 1024 } }, async (server) => {
    const setup = await client(server);
    await setup.write(0, content.subarray(0, 2 * MiB));
    await setup.write(2 * MiB, content.subarray(2 * MiB));
    const clients = [setup, await client(server), await client(server)];
    const r = rng(10);
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 150; i++) {
      const c = clients[i % 3];
      const off = randInt(r, 0, size - 200_000);
      const len = randInt(r, 1, 200_000);
      jobs.push(c.read(off, len).then((b) => assert.ok(b.equals(content.subarray(off, off + len)), `read ${i}`)));
    }
    await Promise.all(jobs);
    await Promise.all(clients.map((c) => c.disconnect()));
  });
});

/** A raw image opened as a chain whose reads of `[from, to)` wait for `release()` and whose read bytes are counted. */
async function gatedChain(path: string, from: number, to: number): Promise<{ chain: Chain; release: () => void; bytesRead: () => number }> {
  const chain = await openChain(path, { format: 'raw' });
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let bytes = 0;
  const read = chain.read.bind(chain);
  chain.read = async (offset: number, into: Uint8Array) => {
    bytes += into.length;
    if (offset >= from && offset < to) await gate;
    return read(offset, into);
  };
  return { chain, release, bytesRead: () => bytes };
}

async function socketClosed(s: Socket): Promise<void> {
  if (!s.destroyed) await once(s, 'close');
}

test('stalled clients: idle ones lose their slot to the idle timeout, one waiting on a slow read keeps it, a newcomer is served', { timeout: 60_000 }, async () => {
  const d = tempDir('vdisk-nbd-');
  const path = join(d.dir, 'disk.raw');
  writeFileSync(path, Buffer.alloc(4 * MiB, 7));
  const g = await gatedChain(path, 3 * MiB, 4 * MiB);
  // The server's log says when it is done with a client: its slot is free
  // then (the client may see its socket close before that).
  const lines: string[] = [];
  const waiters: (() => boolean)[] = [];
  const disconnected = (id: string) =>
    new Promise<void>((resolve) => {
      const look = () => {
        if (!lines.includes(`${id}: disconnected`)) return false;
        resolve();
        return true;
      };
      if (!look()) waiters.push(look);
    });
  const server = await startNbdServer({
    chain: g.chain, port: 0, exportName: 'disk', persistent: true, shared: 3, idleTimeoutMs: 2000,
    log: (m) => {
      lines.push(m);
      for (const w of waiters.splice(0)) if (!w()) waiters.push(w);
    },
  });
  try {
    const busy = await client(server);
    const slow = busy.read(3 * MiB, 4096); // held by the gate for longer than the idle timeout
    const idle = [await client(server), await client(server)]; // handshake done, then nothing
    await assert.rejects(client(server), 'every slot is held: a fourth client is refused');
    // Without an idle timeout this waits forever (the test's timeout fails it).
    await Promise.all(idle.map((c) => socketClosed(c.socket)));
    await Promise.all([disconnected('client 2'), disconnected('client 3')]);
    const late = await client(server);
    assert.ok((await late.read(0, 4096)).equals(Buffer.alloc(4096, 7)), 'a newcomer is served once the idle clients are gone');
    await late.disconnect(); // before it is idle long enough to be dropped in turn
    // The client with a request running all along was not idle: it still has its slot and its answer.
    assert.equal(busy.socket.destroyed, false);
    g.release();
    assert.ok((await slow).equals(Buffer.alloc(4096, 7)));
    assert.ok((await busy.read(0, 512)).equals(Buffer.alloc(512, 7)));
    await busy.disconnect();
  } finally {
    g.release();
    await server.close();
    await g.chain.close();
    d.cleanup();
  }
});

test('100 clients that queue large reads and vanish: the reads they left stop, nothing is read for them after they are gone', async () => {
  const clients = 100;
  const readSize = 8 * MiB;
  const d = tempDir('vdisk-nbd-');
  const path = join(d.dir, 'disk.raw');
  writeFileSync(path, new Uint8Array(0));
  truncateSync(path, 64 * MiB);
  // Every read waits until the server has seen every client go, so all reads are "running" when they leave.
  const g = await gatedChain(path, 0, 64 * MiB);
  // A client is gone once it left with reads running ("gone with"), or left
  // with none: its reads still waited for the server-wide budget, and the
  // connection finished at once ("disconnected").
  const goneIds = new Set<string>();
  let allGone!: () => void;
  const left = new Promise<void>((r) => (allGone = r));
  const server = await startNbdServer({
    chain: g.chain,
    port: 0,
    exportName: 'disk',
    persistent: true,
    shared: clients,
    log: (m) => {
      const id = /^(client \d+): (gone with \d+ request|disconnected)/.exec(m)?.[1];
      if (id && !goneIds.has(id) && goneIds.add(id).size === clients) allGone();
    },
  });
  try {
    const raws = [];
    for (let i = 0; i < clients; i++) raws.push(await rawTransmission(server));
    for (const [i, c] of raws.entries()) {
      const frames = Array.from({ length: 16 }, (_, k) => requestFrame(P.CMD_READ, 0, BigInt(k + 1), ((i + k) % 8) * readSize, readSize));
      c.socket.end(Buffer.concat(frames)); // queue the reads, then leave without waiting for a reply
    }
    await left;
    g.release();
    await server.close();
    // Finishing every abandoned read would read >= clients * readSize (each
    // client's reads that the budget admitted); stopping them leaves about
    // one slice each, and reads still waiting for the budget never start.
    assert.equal(goneIds.size, clients);
    assert.ok(g.bytesRead() < (clients * readSize) / 2, `read ${g.bytesRead()} bytes for clients that had gone`);
  } finally {
    g.release();
    await server.close();
    await g.chain.close();
    d.cleanup();
  }
});
