import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FaultStore } from './helpers/fault-store.js';
import { MemoryFs, MemoryStore } from '../src/io/memory-store.js';
import type { OpenStoreOptions, Store } from '../src/io/store.js';
import { openChain } from '../src/chain/open.js';
import type { Chain } from '../src/chain/chain.js';
import { createImage } from '../src/ops/create.js';
import { rebaseImage } from '../src/ops/rebase.js';
import { resizeImage } from '../src/ops/resize.js';
import { runIoCommand } from '../src/ops/io.js';
import { rng, randInt, randomBytes } from './helpers/random.js';

/**
 * Crash safety of add-cow across its two files (docs/formats/add-cow.md,
 * "Write order"): the power fails at every mutating operation of either the
 * add-cow file or the image file; whatever each disk may then hold (only what
 * was flushed, everything, or a random subset of the unflushed writes in
 * random order), the reopened image must show every sector with its old or
 * its new contents.
 */
const TOP = '/c/top.add-cow';
const DATA = '/c/data.raw';
const BASE = '/c/base.raw';
const SECTOR = 512;

/** One power supply for both files: the crash hits whichever file makes operation number `crashAt`. */
class Power {
  count = 0;
  crashAt = Infinity;
  readonly stores: FaultStore[] = [];
  tick(): void {
    if (this.count >= this.crashAt) for (const s of this.stores) s.failAfter = Math.min(s.failAfter, s.operations);
    else this.count++;
  }
}

/** The fault store with every mutating operation first counted on the shared power supply. */
function poweredStore(inner: FaultStore, power: Power): Store {
  const counted =
    <A extends unknown[]>(op: (...a: A) => Promise<void>) =>
    (...a: A) => {
      power.tick();
      return op(...a);
    };
  return {
    path: inner.path,
    readOnly: false,
    size: () => inner.size(),
    read: (offset, into) => inner.read(offset, into),
    write: counted((offset: number, data: Uint8Array) => inner.write(offset, data)),
    truncate: counted((size: number) => inner.truncate(size)),
    flush: counted(() => inner.flush()),
    close: async () => {},
  };
}

interface World {
  fs: MemoryFs;
  size: number;
  /** The disk as it was after the last completed flush. */
  durable: Uint8Array;
}

/** Base (patterned, shorter than the disk) + a freshly created add-cow, all durable. */
async function makeWorld(size: number, baseSize: number): Promise<World> {
  const fs = new MemoryFs();
  const base = new MemoryStore(BASE);
  await base.write(0, new Uint8Array(baseSize).map((_, i) => 1 + ((i * 13 + (i >> 9)) % 251)));
  fs.files.set(BASE, base);
  await createImage({ path: TOP, format: 'add-cow', size, options: { image_file: 'data.raw' }, backing: { path: 'base.raw' }, openStore: fs.opener() });
  const durable = new Uint8Array(size);
  durable.set(base.bytes().subarray(0, size));
  return { fs, size, durable };
}

/** Open the world with both add-cow files behind one crashing power supply. */
function powered(world: World, crashAt: number) {
  const power = new Power();
  power.crashAt = crashAt;
  const faults = new Map<string, FaultStore>();
  for (const p of [TOP, DATA]) {
    const f = new FaultStore(p, world.fs.files.get(p)!.bytes());
    faults.set(p, f);
    power.stores.push(f);
  }
  const plain = world.fs.opener();
  const opener = async (path: string, o: OpenStoreOptions): Promise<Store> => {
    const f = faults.get(path);
    return f ? poweredStore(f, power) : plain(path, o);
  };
  return { power, faults, opener };
}

type Step = { op: 'write'; offset: number; data: Uint8Array } | { op: 'zero'; offset: number; length: number } | { op: 'flush' };

/** A fixed workload: aligned and unaligned writes, overwrites of flushed data, zeroing, several bitmap pieces. */
function workload(size: number, seed: number): Step[] {
  const r = rng(seed);
  const steps: Step[] = [];
  for (let i = 0; i < 14; i++) {
    const x = r();
    if (x < 0.2) steps.push({ op: 'flush' });
    else if (x < 0.3) {
      const offset = randInt(r, 0, size / SECTOR - 8) * SECTOR;
      steps.push({ op: 'zero', offset, length: randInt(r, 1, 8) * SECTOR });
    } else {
      // Cluster half the writes in the first 64 KiB so later ones overwrite earlier, flushed ones.
      const offset = r() < 0.5 ? randInt(r, 0, 65536) : randInt(r, 0, size - 5000);
      steps.push({ op: 'write', offset, data: randomBytes(r, randInt(r, 1, 4000)) });
    }
  }
  return steps;
}

/**
 * Run the steps until the power fails. Returns, for every sector changed since
 * the last completed flush, the contents it may legitimately show.
 */
async function run(chain: Chain, world: World, steps: Step[]): Promise<Map<number, Uint8Array[]>> {
  const model = world.durable.slice();
  let allowed = new Map<number, Uint8Array[]>();
  const touch = (offset: number, length: number) => {
    for (let s = Math.floor(offset / SECTOR); s < Math.ceil((offset + length) / SECTOR); s++) {
      const list = allowed.get(s) ?? [];
      list.push(model.slice(s * SECTOR, (s + 1) * SECTOR));
      allowed.set(s, list);
    }
  };
  try {
    for (const st of [...steps, { op: 'close' } as const]) {
      // The model learns the new contents first: an operation the crash interrupts may have landed whole or in part.
      if (st.op === 'write') {
        model.set(st.data, st.offset);
        touch(st.offset, st.data.length);
        await chain.write(st.offset, st.data);
      } else if (st.op === 'zero') {
        model.fill(0, st.offset, st.offset + st.length);
        touch(st.offset, st.length);
        await chain.writeZeroes(st.offset, st.length);
      } else {
        if (st.op === 'flush') await chain.flush();
        else await chain.close();
        world.durable = model.slice();
        allowed = new Map();
      }
    }
  } catch (e) {
    assert.match(String((e as Error).message), /injected crash/);
  }
  return allowed;
}

const MODES: ['durable' | 'all' | 'subset', number, 'durable' | 'all' | 'subset', number][] = [
  ['durable', 0, 'durable', 0],
  ['all', 0, 'all', 0],
  ['all', 0, 'durable', 0], // every bitmap write landed, no unflushed data did: the dangerous case
  ['durable', 0, 'all', 0],
  ['subset', 1, 'subset', 2],
  ['subset', 3, 'durable', 0],
  ['all', 0, 'subset', 4],
];

async function reopenAfterCrash(
  world: World,
  faults: Map<string, FaultStore>,
  m: (typeof MODES)[number],
): Promise<{ disk: Uint8Array; size: number; backing: string | undefined }> {
  const fs = new MemoryFs();
  // The world's other files (the backings) as they are; the add-cow's two files as the crash left them.
  for (const [p, f] of world.fs.files) fs.files.set(p, f);
  fs.files.set(TOP, new MemoryStore(TOP, await faults.get(TOP)!.crashImage(m[0], m[1])));
  fs.files.set(DATA, new MemoryStore(DATA, await faults.get(DATA)!.crashImage(m[2], m[3])));
  const c = await openChain(TOP, { openStore: fs.opener(), readOnly: true, backingFormats: ['raw'] });
  try {
    const disk = new Uint8Array(c.size);
    await c.read(0, disk);
    return { disk, size: c.size, backing: c.top.backing?.recorded };
  } finally {
    await c.close();
  }
}

function sectorEquals(disk: Uint8Array, s: number, want: Uint8Array): boolean {
  return Buffer.from(disk.buffer, disk.byteOffset + s * SECTOR, SECTOR).equals(want);
}

test('crash at every operation of either file during writes and flushes: every sector reads old or new', async () => {
  // 3 MiB: a 768-byte bitmap, so writes fall into two bitmap pieces.
  const size = 3 << 20;
  for (const seed of [11, 12]) {
    const steps = workload(size, seed);
    // Dry run to count the operations.
    const w0 = await makeWorld(size, size - 256 * 1024);
    const dry = powered(w0, Infinity);
    await run(await openChain(TOP, { openStore: dry.opener, backingFormats: ['raw'] }), w0, steps);
    const total = dry.power.count;
    assert.ok(total > 20, `workload makes ${total} operations`);
    for (let k = 0; k <= total; k++) {
      const world = await makeWorld(size, size - 256 * 1024);
      const { faults, opener } = powered(world, k);
      const allowed = await run(await openChain(TOP, { openStore: opener, backingFormats: ['raw'] }), world, steps);
      for (const m of MODES) {
        const { disk } = await reopenAfterCrash(world, faults, m);
        for (let s = 0; s < size / SECTOR; s++) {
          if (sectorEquals(disk, s, world.durable.subarray(s * SECTOR, (s + 1) * SECTOR))) continue;
          const ok = (allowed.get(s) ?? []).some((want) => sectorEquals(disk, s, want));
          assert.ok(ok, `seed ${seed}, crash at op ${k}/${total}, modes ${m.join('/')}: sector ${s} holds neither old nor new contents`);
        }
      }
    }
  }
});

test('crash at every operation of a grow or a shrink: the image opens with the old or the new size and keeps its data', async () => {
  const size = 40 * SECTOR + 3 * SECTOR; // a partial last bitmap byte
  for (const newSize of [size + 4096 * SECTOR, 21 * SECTOR]) {
    const prepare = async () => {
      const world = await makeWorld(size, 30 * SECTOR);
      const c = await openChain(TOP, { openStore: world.fs.opener(), backingFormats: ['raw'] });
      await c.write(0, new Uint8Array(size).fill(0xab));
      await c.close();
      return world;
    };
    const dryWorld = await prepare();
    const dry = powered(dryWorld, Infinity);
    const resize = async (opener: (p: string, o: OpenStoreOptions) => Promise<Store>) => {
      const c = await openChain(TOP, { openStore: opener, backingFormats: ['raw'] });
      try {
        await c.top.resize!(newSize, { shrink: true });
        await c.close();
      } catch (e) {
        assert.match(String((e as Error).message), /injected crash/);
      }
    };
    await resize(dry.opener);
    const total = dry.power.count;
    for (let k = 0; k <= total; k++) {
      const world = await prepare();
      const { faults, opener } = powered(world, k);
      await resize(opener);
      for (const m of MODES) {
        const { disk, size: got } = await reopenAfterCrash(world, faults, m);
        assert.ok(got === size || got === newSize, `crash at ${k}/${total} ${m.join('/')}: size ${got}`);
        const kept = Math.min(size, got);
        assert.ok(disk.subarray(0, kept).every((x) => x === 0xab), `crash at ${k}/${total} ${m.join('/')}: data kept`);
        // Grown space shows the backing (zeros past its end), never stale bits or image-file bytes.
        for (let s = kept / SECTOR; s < got / SECTOR; s++) {
          const want = s < 30 ? world.fs.files.get(BASE)!.bytes().subarray(s * SECTOR, (s + 1) * SECTOR) : new Uint8Array(SECTOR);
          assert.ok(sectorEquals(disk, s, want), `crash at ${k}/${total} ${m.join('/')}: sector ${s} after a grow`);
        }
      }
    }
  }
});

/*
 * rebase (ops/rebase.ts): safe mode copies into the image every range where
 * the old and new backings differ and the image defers to its backing, then
 * rewrites the backing name (one header write, add-cow maintenance.ts); -u
 * rewrites the name only. After a crash at any operation of either file, the
 * image opens, names the old or the new backing, and (safe mode) shows the
 * same disk; -u shows the old chain or the new one.
 */
const BASE2 = '/c/base2.raw';

async function rebaseWorld(): Promise<World> {
  const size = 1 << 20;
  const world = await makeWorld(size, size - 64 * 1024);
  // The new backing: equal to the old one in some 64 KiB granules, different in others, longer than the old one.
  const old = world.fs.files.get(BASE)!.bytes();
  const b2 = new Uint8Array(size).map((_, i) => (i >> 16) % 3 === 0 && i < old.length ? old[i] : 1 + ((i * 7 + (i >> 10)) % 253));
  world.fs.files.set(BASE2, new MemoryStore(BASE2, b2));
  const c = await openChain(TOP, { openStore: world.fs.opener(), backingFormats: ['raw'] });
  const r = rng(31);
  await c.write(4096, randomBytes(r, 3000));
  await c.write(200 * 1024 + 512, randomBytes(r, 70 * 1024));
  await c.write(size - 8192, randomBytes(r, 8192));
  await c.close();
  return world;
}

async function diskOf(world: World): Promise<Uint8Array> {
  const c = await openChain(TOP, { openStore: world.fs.opener(), readOnly: true, backingFormats: ['raw'] });
  try {
    const disk = new Uint8Array(c.size);
    await c.read(0, disk);
    return disk;
  } finally {
    await c.close();
  }
}

for (const [label, backing, unsafe] of [
  ['safe rebase onto another backing', { path: 'base2.raw' }, false],
  ['safe rebase to no backing', null, false],
  ['rebase -u', { path: 'base2.raw' }, true],
] as const) {
  test(`crash at every operation of ${label}: the image opens with the old or the new backing and shows ${unsafe ? 'the old or the new chain' : 'the same disk'}`, async () => {
    const w0 = await rebaseWorld();
    const before = await diskOf(w0);
    const rebase = async (opener: (p: string, o: OpenStoreOptions) => Promise<Store>) => {
      try {
        await rebaseImage({ path: TOP, backing, unsafe, openStore: opener, bufferSize: 64 * 1024, openOptions: { backingFormats: ['raw'] } });
      } catch (e) {
        assert.match(String((e as Error).message), /injected crash/);
      }
    };
    const dry = powered(w0, Infinity);
    await rebase(dry.opener);
    const total = dry.power.count;
    assert.ok(total >= 2, `rebase makes ${total} operations`);
    const done = await reopenAfterCrash(w0, dry.faults, ['all', 0, 'all', 0]);
    const newName = backing ? 'base2.raw' : undefined;
    assert.equal(done.backing, newName);
    if (!unsafe) assert.ok(Buffer.from(done.disk).equals(before), 'without a crash the disk is unchanged');
    const seen = new Set<string | undefined>();
    for (let k = 0; k <= total; k++) {
      const world = await rebaseWorld();
      const { faults, opener } = powered(world, k);
      await rebase(opener);
      for (const m of MODES) {
        const { disk, backing: got } = await reopenAfterCrash(world, faults, m);
        const where = `crash at ${k}/${total} ${m.join('/')}`;
        assert.ok(got === 'base.raw' || got === newName, `${where}: backing ${got}`);
        seen.add(got);
        if (unsafe) assert.ok(Buffer.from(disk).equals(got === newName ? done.disk : before), `${where}: the chain of the backing it names`);
        else assert.ok(Buffer.from(disk).equals(before), `${where}: the disk is unchanged`);
      }
    }
    assert.equal(seen.size, 2, 'crash points before and after the switch were both reached');
  });
}

/*
 * `vdisk io` (ops/io.ts) scripts, discard included, and resize through
 * ops/resize.ts (the open, the backing-size check, the final flush and
 * close): a crash at every operation leaves every sector showing a state it
 * had at or after the last flush that completed, and up to the step the crash
 * interrupted.
 */
const SCRIPT = ['write -P 0x11 1024 6144', 'discard 0 4096', 'write -P 0x22 2048 1024', 'flush', 'write -z 65536 8192', 'discard 66048 1024', 'write -P 0x33 70000 3000', 'resize', 'write -P 0x44 1040000 8192'];
const GROWN = (1 << 20) + 64 * 1024;

async function runScript(opener: (p: string, o: OpenStoreOptions) => Promise<Store>, power: Power, snapshots?: Uint8Array[], ends?: number[]): Promise<void> {
  let chain = await openChain(TOP, { openStore: opener, backingFormats: ['raw'] });
  try {
    for (const cmd of SCRIPT) {
      if (cmd === 'resize') {
        await chain.close();
        await resizeImage({ path: TOP, size: GROWN, openStore: opener, openOptions: { backingFormats: ['raw'] } });
        chain = await openChain(TOP, { openStore: opener, backingFormats: ['raw'] });
      } else await runIoCommand(chain, cmd);
      if (snapshots) {
        const d = new Uint8Array(GROWN);
        await chain.read(0, d.subarray(0, chain.size));
        snapshots.push(d);
        ends!.push(power.count);
      }
    }
    await chain.close();
  } catch (e) {
    assert.match(String((e as Error).message), /injected crash/);
    await chain.close().catch(() => {});
  }
}

test('crash at every operation of a vdisk io script with discards and a resize (ops/resize.ts): every sector shows a state since the last completed flush', async () => {
  const size = 1 << 20;
  const w0 = await makeWorld(size, size - 64 * 1024);
  const initial = new Uint8Array(GROWN);
  initial.set(await diskOf(w0));
  const dry = powered(w0, Infinity);
  const snapshots: Uint8Array[] = [initial];
  const ends: number[] = [0];
  await runScript(dry.opener, dry.power, snapshots, ends);
  const total = dry.power.count;
  // A flush point: the start, the `flush` command, the resize (it flushes and closes), the end (close flushes).
  const flushAt = (i: number) => i === 0 || SCRIPT[i - 1] === 'flush' || SCRIPT[i - 1] === 'resize';
  for (let k = 0; k <= total; k++) {
    const world = await makeWorld(size, size - 64 * 1024);
    const { faults, opener, power } = powered(world, k);
    await runScript(opener, power);
    // Steps 1..done completed before the crash; the crash hit step done+1 (if any).
    let done = 0;
    while (done + 1 < ends.length && ends[done + 1] <= k) done++;
    let from = done;
    while (!flushAt(from)) from--;
    const last = Math.min(done + 1, snapshots.length - 1);
    for (const m of MODES) {
      const { disk } = await reopenAfterCrash(world, faults, m);
      const where = `crash at ${k}/${total} (after step ${done}) ${m.join('/')}`;
      assert.ok(disk.length === size || disk.length === GROWN, `${where}: size ${disk.length}`);
      for (let s = 0; s < disk.length / SECTOR; s++) {
        let ok = false;
        for (let j = from; j <= last && !ok; j++) ok = sectorEquals(disk, s, snapshots[j].subarray(s * SECTOR, (s + 1) * SECTOR));
        if (!ok) assert.fail(`${where}: sector ${s} shows no state of steps ${from}..${last}`);
      }
    }
  }
});
