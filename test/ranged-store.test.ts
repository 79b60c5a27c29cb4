import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockError, isBlockError } from '../src/core/errors.js';
import { BOUND, RangedStore, STREAM_REQUEST, type RangeSource } from '../src/io/ranged-store.js';

/*
 * The ranged store under the remote hosts (io/ranged-store.ts), over a
 * source that makes its bytes up and counts what it is asked: how many
 * requests a copy costs, how big they are, how many run at once and how
 * much the store holds — counts, not times, so they hold on any machine.
 */

const MiB = 1 << 20;

/** Byte i of the object: a pattern that differs at every 512-byte sector. */
function fillPattern(offset: number, into: Uint8Array): void {
  for (let s = 0; s < into.length; ) {
    const at = offset + s;
    const sectorEnd = Math.min(into.length, s + 512 - (at % 512));
    into.fill((Math.floor(at / 512) * 7 + 3) & 0xff, s, sectorEnd);
    s = sectorEnd;
  }
}

/** `fail`: whether the request for `length` bytes at `offset` fails, and how (asked before each answer). */
function countingSource(fail?: (offset: number, length: number) => 'transient' | 'final' | undefined) {
  const asked: { offset: number; length: number }[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const source: RangeSource = {
    async fetch(offset, into) {
      asked.push({ offset, length: into.length });
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        await new Promise((r) => setTimeout(r, 1));
        const how = fail?.(offset, into.length);
        if (how === 'final') throw new BlockError('io', 'the object changed while it was being read', {});
        if (how === 'transient') throw new Error('connection reset');
        fillPattern(offset, into);
      } finally {
        inFlight--;
      }
    },
  };
  return { source, asked, maxInFlight: () => maxInFlight };
}

/** Read [0, size) as convert does: pieces of `piece` bytes, `parallel` reads at once, in order. */
async function copyOut(store: RangedStore, size: number, piece: number, parallel: number): Promise<void> {
  const running = new Set<Promise<void>>();
  for (let at = 0; at < size; at += piece) {
    while (running.size >= parallel) await Promise.race(running);
    const offset = at;
    const p = (async () => {
      const buf = new Uint8Array(Math.min(piece, size - offset));
      assert.equal(await store.read(offset, buf), buf.length);
      const want = new Uint8Array(buf.length);
      fillPattern(offset, want);
      assert.ok(Buffer.from(buf).equals(want), `bytes at ${offset}`);
    })().finally(() => running.delete(p));
    running.add(p);
  }
  await Promise.all(running);
}

test('a copy streams the object in few large requests, each byte fetched once, holding a bounded amount', async () => {
  const size = 200 * MiB + 12345;
  const { source, asked, maxInFlight } = countingSource();
  const store = new RangedStore('mem://x', size, source, 1);
  try {
    // An open's few small reads first (header, a table), then the copy.
    await store.read(0, new Uint8Array(4096));
    await store.read(64 * 1024, new Uint8Array(4096));
    await copyOut(store, size, 2 * MiB, 4);
  } finally {
    await store.close();
  }
  const bytes = asked.reduce((n, a) => n + a.length, 0);
  const largest = Math.max(...asked.map((a) => a.length));
  assert.ok(largest <= STREAM_REQUEST, `largest request ${largest}`);
  // The stream's requests grow to STREAM_REQUEST (1, 2, 4, 8 MiB): a handful more than size / STREAM_REQUEST.
  assert.ok(asked.length <= Math.ceil(size / STREAM_REQUEST) + 8, `${asked.length} requests`);
  assert.ok(bytes <= size + 8 * MiB, `${bytes} bytes fetched for ${size}`);
  assert.ok(maxInFlight() >= 2, 'requests run at once');
  assert.ok(maxInFlight() <= 8, `${maxInFlight()} requests at once`);
  assert.ok(store.stats.peakHeld <= BOUND, `held ${store.stats.peakHeld} > ${BOUND}`);
  assert.equal(store.stats.requests, asked.length);
});

test('random small reads fetch only pieces around them', async () => {
  const size = 1024 * MiB;
  const { source, asked } = countingSource();
  const store = new RangedStore('mem://x', size, source, 1);
  try {
    for (const at of [900, 5, 300, 17, 640, 123, 511, 42].map((m) => m * MiB + 1000)) {
      const buf = new Uint8Array(4096);
      await store.read(at, buf);
      const want = new Uint8Array(4096);
      fillPattern(at, want);
      assert.ok(Buffer.from(buf).equals(want));
    }
  } finally {
    await store.close();
  }
  assert.equal(asked.length, 8);
  assert.ok(asked.every((a) => a.length <= 512 * 1024), 'one piece each');
});

test('a read of a stream request or more goes straight into the buffer, in requests at once', async () => {
  const { source, asked, maxInFlight } = countingSource();
  const store = new RangedStore('mem://x', 64 * MiB, source, 1);
  const buf = new Uint8Array(4 * STREAM_REQUEST);
  await store.read(4096, buf);
  const want = new Uint8Array(buf.length);
  fillPattern(4096, want);
  assert.ok(Buffer.from(buf).equals(want));
  assert.equal(asked.length, 4);
  assert.equal(maxInFlight(), 4);
  assert.equal(store.stats.peakHeld, 0, 'nothing held of its own');
  await store.close();
});

test('a streamed request that fails is tried again; a final error is not', async () => {
  const size = 64 * MiB;
  // The first stream request of STREAM_REQUEST bytes fails once.
  let failAt = -1;
  const flaky = countingSource((offset, length) => {
    if (length !== STREAM_REQUEST || (failAt >= 0 && failAt !== offset)) return undefined;
    if (failAt === offset) return undefined;
    failAt = offset;
    return 'transient';
  });
  const store = new RangedStore('mem://x', size, flaky.source, 1);
  await copyOut(store, size, 2 * MiB, 4);
  assert.ok(failAt >= 0);
  assert.equal(flaky.asked.filter((a) => a.offset === failAt).length, 2, 'retried once');
  await store.close();

  let finalAt = -1;
  const changed = countingSource((offset, length) => {
    if (length !== STREAM_REQUEST || (finalAt >= 0 && finalAt !== offset)) return undefined;
    finalAt = offset;
    return 'final';
  });
  const store2 = new RangedStore('mem://y', size, changed.source, 1);
  await assert.rejects(copyOut(store2, size, 2 * MiB, 4), (e) => isBlockError(e, 'io') && /changed/.test(e.message));
  assert.equal(changed.asked.filter((a) => a.offset === finalAt).length, 1, 'a BlockError is final');
  await store2.close();
});
