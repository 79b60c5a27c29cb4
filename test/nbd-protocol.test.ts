import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { openChain } from '../src/chain/open.js';
import { MemoryFs } from '../src/io/memory-store.js';
import { makeExport, transmissionFlags, type NbdExport } from '../src/nbd/export.js';
import { Negotiation } from '../src/nbd/handshake.js';
import { NbdParser, NbdProtocolError, type ClientFrame } from '../src/nbd/parser.js';
import { optionFrame, requestFrame } from './helpers/nbd-client.js';
import { NBD_ERRNO, nbdErrno } from '../src/nbd/errno.js';
import { BlockError } from '../src/core/errors.js';
import * as P from '../src/nbd/protocol.js';
import { BufferPool } from '../src/nbd/buffer-pool.js';

/*
 * The protocol without sockets: the incremental parser fed streams cut at
 * every byte position and random garbage, and the handshake state machine fed
 * valid, invalid and lying options. Only protocol errors may come out.
 */

async function memoryExport(size = 1 << 20, name = 'disk'): Promise<NbdExport> {
  const fs = new MemoryFs();
  const s = await fs.opener()('mem.raw', { create: true });
  await s.truncate(size);
  const chain = await openChain('mem.raw', { openStore: fs.opener(), format: 'raw' });
  return makeExport(chain, { name, multiConn: true });
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

function str(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  return Buffer.concat([u32(b.length), b]);
}

function goData(name: string, infos: number[] = []): Buffer {
  return Buffer.concat([str(name), u16(infos.length), ...infos.map(u16)]);
}

function metaData(name: string, queries: string[]): Buffer {
  return Buffer.concat([str(name), u32(queries.length), ...queries.map(str)]);
}

/** A whole client conversation: flags, options, then requests (with a kept and a skipped write payload). */
function conversation(): Buffer {
  return Buffer.concat([
    u32(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES),
    optionFrame(P.OPT_STRUCTURED_REPLY),
    optionFrame(P.OPT_SET_META_CONTEXT, metaData('disk', ['base:allocation'])),
    optionFrame(99, Buffer.alloc(100, 7)), // longer than maxOptionData below: skipped
    optionFrame(P.OPT_LIST),
    optionFrame(P.OPT_GO, goData('disk', [P.INFO_BLOCK_SIZE])),
    requestFrame(P.CMD_READ, 0, 1n, 4096, 512),
    requestFrame(P.CMD_WRITE, P.CMD_FLAG_FUA, 2n, 512, 40, Buffer.alloc(40, 0xab)),
    requestFrame(P.CMD_WRITE, 0, 3n, 0, 90, Buffer.alloc(90, 0xcd)), // over maxPayload: skipped
    requestFrame(P.CMD_BLOCK_STATUS, P.CMD_FLAG_REQ_ONE, 0xffffffffffffffffn, 2 ** 40, 1 << 20),
    requestFrame(P.CMD_DISC, 0, 5n, 0, 0),
  ]);
}

/** Drive a parser over chunks the way a connection does: switch modes between frames. */
function parseChunks(chunks: Buffer[]): unknown[] {
  const p = new NbdParser({ maxOptionData: 64, maxPayload: 64 });
  const out: unknown[] = [];
  for (const c of chunks) {
    p.push(c);
    for (let f = p.next(); f; f = p.next()) {
      out.push(normalise(f));
      if (f.type === 'client-flags') p.mode = 'option';
      if (f.type === 'option' && f.option === P.OPT_GO) p.mode = 'request';
    }
  }
  return out;
}

function normalise(f: ClientFrame): unknown {
  if (f.type === 'option') return { ...f, data: f.data?.toString('hex') };
  if (f.type === 'request') return { ...f, payload: f.payload?.toString('hex') };
  return f;
}

test('parser: the same frames whatever byte the stream is cut at', () => {
  const stream = conversation();
  const whole = parseChunks([stream]);
  assert.equal(whole.length, 11);
  assert.deepEqual((whole[3] as { data: unknown; length: number }).data, undefined, 'long option skipped');
  assert.equal((whole[3] as { length: number }).length, 100);
  assert.equal((whole[7] as { payload: string }).payload, 'ab'.repeat(40));
  assert.equal((whole[8] as { payload: unknown }).payload, undefined, 'long write skipped');
  assert.equal((whole[9] as { cookieHi: number }).cookieHi, 0xffffffff);
  assert.equal((whole[9] as { offset: number }).offset, 2 ** 40);
  for (let i = 1; i < stream.length; i++) {
    assert.deepEqual(parseChunks([stream.subarray(0, i), stream.subarray(i)]), whole, `cut at ${i}`);
  }
  assert.deepEqual(
    parseChunks([...stream].map((b) => Buffer.from([b]))),
    whole,
    'one byte at a time',
  );
});

test('parser: random chunkings give the same frames', () => {
  const stream = conversation();
  const whole = parseChunks([stream]);
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 30 }), (cuts) => {
      const points = [...new Set(cuts)].sort((a, b) => a - b);
      const chunks: Buffer[] = [];
      let prev = 0;
      for (const c of [...points, stream.length]) {
        chunks.push(stream.subarray(prev, c));
        prev = c;
      }
      assert.deepEqual(parseChunks(chunks), whole);
    }),
    { numRuns: 300 },
  );
});

test('parser: random garbage gives frames or NbdProtocolError, nothing else', () => {
  for (const mode of ['client-flags', 'option', 'request'] as const) {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.integer({ min: 1, max: 50 }), fc.boolean(), (bytes, step, validPrefix) => {
        const p = new NbdParser({ maxOptionData: 128, maxPayload: 256 });
        p.mode = mode;
        // Half the time start with a valid magic so the parser gets past it into the lengths.
        const prefix = validPrefix ? (mode === 'option' ? P.IHAVEOPT : mode === 'request' ? u32(P.REQUEST_MAGIC) : Buffer.alloc(0)) : Buffer.alloc(0);
        const data = Buffer.concat([prefix, Buffer.from(bytes)]);
        try {
          for (let i = 0; i < data.length; i += step) {
            p.push(data.subarray(i, i + step));
            while (p.next());
          }
        } catch (e) {
          assert.ok(e instanceof NbdProtocolError, `unexpected ${(e as Error).stack}`);
        }
        assert.ok(p.buffered <= data.length);
      }),
      { numRuns: 400 },
    );
  }
});

test('parser: a bad option or request magic is a protocol error as soon as it is seen', () => {
  const p = new NbdParser();
  p.mode = 'option';
  p.push(Buffer.from('IHAVEOPX' + '\0'.repeat(8), 'latin1'));
  assert.throws(() => p.next(), NbdProtocolError);
  const q = new NbdParser();
  q.mode = 'request';
  q.push(Buffer.alloc(28));
  assert.throws(() => q.next(), NbdProtocolError);
});

/** Split option replies: magic, option, type, data. */
function replies(bufs: Buffer[]): { option: number; type: number; data: Buffer }[] {
  return bufs.map((b) => {
    assert.equal(b.readUInt32BE(0), P.OPTION_REPLY_MAGIC_HI);
    assert.equal(b.readUInt32BE(4), P.OPTION_REPLY_MAGIC_LO);
    assert.equal(b.readUInt32BE(16), b.length - 20, 'reply length field');
    return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), data: b.subarray(20) };
  });
}

function opt(option: number, data?: Buffer, length?: number): ClientFrame {
  return { type: 'option', option, data: data ?? Buffer.alloc(0), length: length ?? data?.length ?? 0 };
}

test('handshake: LIST, INFO, GO with block sizes, names and flags', async () => {
  const exp = await memoryExport(1 << 20, 'disk');
  const n = new Negotiation(exp);
  assert.equal(n.handle({ type: 'client-flags', flags: 3 }).next, 'continue');
  assert.ok(n.noZeroes && n.fixedNewstyle);
  const list = replies(n.handle(opt(P.OPT_LIST)).replies);
  assert.deepEqual(list.map((r) => r.type), [P.REP_SERVER, P.REP_ACK]);
  assert.equal(list[0].data.readUInt32BE(0), 4);
  assert.equal(list[0].data.subarray(4, 8).toString(), 'disk');

  const info = n.handle(opt(P.OPT_INFO, goData('disk', [P.INFO_NAME, P.INFO_DESCRIPTION])));
  assert.equal(info.next, 'continue');
  const infos = replies(info.replies);
  assert.deepEqual(infos.map((r) => r.type), [P.REP_INFO, P.REP_INFO, P.REP_INFO, P.REP_INFO, P.REP_ACK]);
  assert.equal(infos[0].data.readUInt16BE(0), P.INFO_EXPORT);
  assert.equal(Number(infos[0].data.readBigUInt64BE(2)), 1 << 20);
  assert.equal(infos[0].data.readUInt16BE(10), transmissionFlags(exp, false));
  assert.equal(infos[1].data.subarray(2).toString(), 'disk');
  const bs = infos[3].data;
  assert.equal(bs.readUInt16BE(0), P.INFO_BLOCK_SIZE);
  assert.deepEqual([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [512, 4096, 32 << 20]);

  // The default export ("") is the same export.
  const go = n.handle(opt(P.OPT_GO, goData('')));
  assert.equal(go.next, 'transmission');
  const flags = replies(go.replies)[0].data.readUInt16BE(10);
  assert.ok(flags & P.FLAG_HAS_FLAGS && flags & P.FLAG_SEND_FLUSH && flags & P.FLAG_SEND_FUA && flags & P.FLAG_SEND_WRITE_ZEROES);
  assert.ok(flags & P.FLAG_CAN_MULTI_CONN);
  assert.equal(flags & (P.FLAG_READ_ONLY | P.FLAG_SEND_TRIM | P.FLAG_SEND_DF | P.FLAG_SEND_FAST_ZERO), 0, 'raw cannot trim; DF needs structured replies');
});

test('handshake: errors are replies and the negotiation goes on', async () => {
  const exp = await memoryExport(1 << 20, 'disk');
  const n = new Negotiation(exp);
  n.handle({ type: 'client-flags', flags: 1 });
  const one = (f: ClientFrame) => {
    const s = n.handle(f);
    assert.equal(s.next, 'continue');
    const r = replies(s.replies);
    return r[r.length - 1].type;
  };
  assert.equal(one(opt(P.OPT_GO, goData('other'))), P.REP_ERR_UNKNOWN);
  // A name length that runs past the option data: the client lies about lengths.
  assert.equal(one(opt(P.OPT_GO, Buffer.concat([u32(1000), Buffer.from('disk')]))), P.REP_ERR_INVALID);
  // Information request count that does not match the bytes.
  assert.equal(one(opt(P.OPT_INFO, Buffer.concat([str('disk'), u16(3), u16(1)]))), P.REP_ERR_INVALID);
  assert.equal(one(opt(P.OPT_GO, Buffer.concat([str('\u0000x'), u16(0)]))), P.REP_ERR_INVALID, 'NUL in a name');
  assert.equal(one(opt(P.OPT_GO, Buffer.concat([u32(2), Buffer.from([0xc3, 0x28]), u16(0)]))), P.REP_ERR_INVALID, 'bad UTF-8');
  assert.equal(one(opt(P.OPT_LIST, Buffer.from('x'))), P.REP_ERR_INVALID);
  assert.equal(one(opt(P.OPT_STARTTLS)), P.REP_ERR_UNSUP);
  assert.equal(one(opt(P.OPT_EXTENDED_HEADERS)), P.REP_ERR_UNSUP);
  assert.equal(one(opt(0x12345)), P.REP_ERR_UNSUP);
  assert.equal(one({ type: 'option', option: P.OPT_GO, data: undefined, length: 1 << 30 }), P.REP_ERR_TOO_BIG);
  // Meta contexts need structured replies first.
  assert.equal(one(opt(P.OPT_SET_META_CONTEXT, metaData('disk', ['base:allocation']))), P.REP_ERR_INVALID);
  assert.equal(one(opt(P.OPT_STRUCTURED_REPLY, Buffer.from('x'))), P.REP_ERR_INVALID);
  assert.equal(one(opt(P.OPT_STRUCTURED_REPLY)), P.REP_ACK);
  assert.equal(one(opt(P.OPT_SET_META_CONTEXT, Buffer.concat([str('disk'), u32(1_000_000)]))), P.REP_ERR_INVALID, 'query count lie');
  assert.equal(one(opt(P.OPT_SET_META_CONTEXT, metaData('nope', ['base:allocation']))), P.REP_ERR_UNKNOWN);
  const list = replies(n.handle(opt(P.OPT_LIST_META_CONTEXT, metaData('disk', []))).replies);
  assert.deepEqual(list.map((r) => r.data.subarray(4).toString()), ['base:allocation', 'qemu:allocation-depth', '']);
  const set = replies(n.handle(opt(P.OPT_SET_META_CONTEXT, metaData('disk', ['base:allocation', 'x-other:thing']))).replies);
  assert.equal(set.length, 2);
  assert.equal(set[0].type, P.REP_META_CONTEXT);
  assert.equal(set[0].data.readUInt32BE(0), 1);
  assert.deepEqual(n.contexts.map((c) => c.name), ['base:allocation']);
  // And after all that, GO still works, now with DF offered.
  const go = n.handle(opt(P.OPT_GO, goData('disk')));
  assert.equal(go.next, 'transmission');
  assert.ok(replies(go.replies)[0].data.readUInt16BE(10) & P.FLAG_SEND_DF);
});

test('handshake: what ends the connection', async () => {
  const exp = await memoryExport(1 << 20, 'disk');
  assert.equal(new Negotiation(exp).handle({ type: 'client-flags', flags: 4 }).next, 'close', 'unknown client flag');
  const fresh = () => {
    const n = new Negotiation(exp);
    n.handle({ type: 'client-flags', flags: 1 });
    return n;
  };
  assert.equal(fresh().handle(opt(P.OPT_EXPORT_NAME, Buffer.from('nope'))).next, 'close');
  const abort = fresh().handle(opt(P.OPT_ABORT));
  assert.equal(abort.next, 'close');
  assert.equal(replies(abort.replies)[0].type, P.REP_ACK);
  const ok = fresh().handle(opt(P.OPT_EXPORT_NAME, Buffer.from('disk')));
  assert.equal(ok.next, 'transmission');
  assert.equal(ok.replies[0].length, 10 + 124, 'zero padding when the client did not ask for none');
  const n = new Negotiation(exp);
  n.handle({ type: 'client-flags', flags: 3 });
  assert.equal(n.handle(opt(P.OPT_EXPORT_NAME, Buffer.alloc(0))).replies[0].length, 10);
});

test('handshake: random options never throw and every reply is well formed', async () => {
  const exp = await memoryExport(1 << 20, 'disk');
  const optionArb = fc.record({
    option: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: 0xffffffff })),
    data: fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      fc.constantFrom(goData('disk', [1, 2, 3]), metaData('disk', ['base:']), metaData('', ['qemu:allocation-depth', 'base:allocation'])),
    ),
  });
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 3 }), fc.array(optionArb, { maxLength: 20 }), (flags, options) => {
      const n = new Negotiation(exp);
      if (n.handle({ type: 'client-flags', flags }).next === 'close') return;
      for (const o of options) {
        const step = n.handle(opt(o.option, Buffer.from(o.data)));
        if (o.option !== P.OPT_EXPORT_NAME && step.next !== 'transmission') replies(step.replies);
        if (step.next !== 'continue') return;
      }
    }),
    { numRuns: 500 },
  );
});

test('errno table: every BlockError kind maps to an error value NBD allows', () => {
  const allowed = new Set([P.NBD_EPERM, P.NBD_EIO, P.NBD_ENOMEM, P.NBD_EINVAL, P.NBD_ENOSPC, P.NBD_EOVERFLOW, P.NBD_ENOTSUP, P.NBD_ESHUTDOWN]);
  for (const [kind, errno] of Object.entries(NBD_ERRNO)) assert.ok(allowed.has(errno), kind);
  assert.equal(nbdErrno(new BlockError('read-only', 'x')), P.NBD_EPERM);
  assert.equal(nbdErrno(new BlockError('io', 'x', {}, { cause: Object.assign(new Error('full'), { code: 'ENOSPC' }) })), P.NBD_ENOSPC);
  assert.equal(nbdErrno(new Error('bug')), P.NBD_EIO);
});

test('reply buffer pool: a 256 KiB read reply fits a 256 KiB class, buffers are reused, the cache is bounded', () => {
  const pool = new BufferPool(1 << 20);
  const header = P.STRUCTURED_REPLY_SIZE + 8;
  const a = pool.take(header + (256 << 10));
  assert.equal(a.length, header + (256 << 10));
  // Power-of-two data plus its header stays in the power-of-two class (not twice its size).
  assert.ok(a.buffer.byteLength < 257 << 10, `class of ${a.buffer.byteLength} bytes`);
  pool.give(a);
  const b = pool.take(200 << 10);
  assert.equal(b.buffer, a.buffer, 'a returned buffer of the same class is reused');
  assert.equal(b.length, 200 << 10);
  // Buffers the pool did not make are ignored; beyond maxCached nothing is kept.
  pool.give(Buffer.alloc(4096));
  const many = Array.from({ length: 8 }, () => pool.take(256 << 10));
  for (const m of many) pool.give(m);
  const reused = new Set(Array.from({ length: 8 }, () => pool.take(256 << 10).buffer));
  const kept = many.filter((m) => reused.has(m.buffer)).length;
  assert.ok(kept >= 1 && kept <= 4, `kept ${kept} of 8 buffers of 256 KiB under a 1 MiB cap`);
});
