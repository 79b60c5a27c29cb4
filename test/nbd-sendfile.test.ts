import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startNbdServer } from '../src/nbd/server.js';
import { openChain } from '../src/chain/open.js';
import { createImage } from '../src/ops/create.js';
import { nativeAddon } from '../src/io/native.js';
import { NbdClient } from './helpers/nbd-client.js';
import { tempDir } from './helpers/oracle.js';
import { rng, randomBytes } from './helpers/random.js';

/*
 * Read-only exports send reads whose data the page cache holds straight
 * from the image files (io/file-reply.ts, native/send.c): every byte must
 * be what the chain reads — data in a child, in its parent, in a block
 * written in part (its sector bitmap), zeros where no layer has data — and
 * a reply larger than the socket buffer, sent to a client that pauses,
 * must arrive whole and in order.
 */

const MiB = 1 << 20;

for (const format of ['vhd', 'vhdx']) {
  test(`read-only ${format} chain served from the files with sendfile: the bytes the chain reads, structured and simple, a paused client included`, { timeout: 120_000 }, async () => {
    const d = tempDir('vdisk-nbd-sendfile-');
    const size = 24 * MiB;
    const base = join(d.dir, `base.${format}`);
    const top = join(d.dir, `top.${format}`);
    try {
      await createImage({ path: base, format, size });
      const r = rng(21);
      const b = await openChain(base);
      // Whole blocks, parts of blocks (sector runs), and blocks left empty.
      for (let at = 0; at < size; at += 3 * MiB) await b.write(at, randomBytes(r, MiB + 4096));
      await b.close();
      await createImage({ path: top, format, backing: { path: base, format } });
      const t = await openChain(top);
      for (let at = MiB / 2; at < size; at += 5 * MiB) await t.write(at, randomBytes(r, 512 * 1024 + 512));
      await t.close();
      const oracle = await openChain(top, { readOnly: true });
      const expected = Buffer.alloc(size);
      await oracle.read(0, expected);
      await oracle.close();

      const socketPath = join(d.dir, 'nbd.sock');
      const server = await startNbdServer({ path: top, format, readOnly: true, socketPath, persistent: true, shared: 4 });
      try {
        for (const structured of [true, false]) {
          const c = await NbdClient.connect({ socketPath, structured });
          // Twice: the first pass reads (and caches) the sector bitmaps, the second is all from the files.
          for (let pass = 0; pass < 2; pass++) {
            const reads = [];
            for (let at = 0; at < size; at += 384 * 1024) reads.push(c.read(at, Math.min(384 * 1024, size - at)).then((got) => [at, got] as const));
            for (const [at, got] of await Promise.all(reads)) assert.ok(got.equals(expected.subarray(at, at + got.length)), `${structured ? 'structured' : 'simple'} read at ${at}`);
          }
          // Larger than the socket buffer: the reply stops, and goes on once the client reads again.
          c.socket.pause();
          const big = c.read(MiB / 2 + 512, 12 * MiB);
          await new Promise((resolve) => setTimeout(resolve, 200));
          c.socket.resume();
          assert.ok((await big).equals(expected.subarray(MiB / 2 + 512, MiB / 2 + 512 + 12 * MiB)), 'a reply sent in parts');
          await c.disconnect();
        }
        // Where the addon can send from files (Linux, built), it did.
        if (nativeAddon()?.sendReply && process.platform === 'linux') assert.ok(server.stats().readsFromFiles > 0, 'no read was sent from the files');
      } finally {
        await server.close();
      }
    } finally {
      d.cleanup();
    }
  });
}
