import { BlockError } from '../core/errors.js';
import type { Store } from './store.js';

/**
 * A read-only view of a store for opening an image: a few ranges are read
 * at once, together, and reads that fall wholly inside one of them are
 * answered from memory; anything else goes to the store.
 *
 * Why: an open reads several small structures one after the other (a VHD:
 * footer, footer copy, dynamic header, BAT, batmap header), and each read
 * is a round trip through libuv's thread pool — 0.1 to 0.4 ms in a fresh
 * process, most of a 1 GiB convert's set-up. Formats put those structures
 * near the start of the file, so one read of the head (plus one of the
 * tail, at the same time) answers most of them.
 *
 * A range is kept as far as the file had bytes, so a read past the end of
 * the file is short exactly as from the store.
 */
export async function prefetch(store: Store, ranges: ReadonlyArray<readonly [offset: number, length: number]>): Promise<Store> {
  const held = await Promise.all(
    ranges.map(async ([offset, length]) => {
      const buf = new Uint8Array(length);
      const n = await store.read(offset, buf);
      return { offset, bytes: buf.subarray(0, n), whole: n === length };
    }),
  );
  const view: Store = {
    path: store.path,
    readOnly: true,
    size: () => store.size(),
    async read(offset: number, into: Uint8Array): Promise<number> {
      for (const h of held) {
        const at = offset - h.offset;
        if (at < 0) continue;
        if (at + into.length <= h.bytes.length) {
          into.set(h.bytes.subarray(at, at + into.length));
          return into.length;
        }
        // The file ends inside this range: the read is short, as from the store.
        if (!h.whole && at <= h.bytes.length) {
          const n = h.bytes.length - at;
          into.set(h.bytes.subarray(at));
          return n;
        }
      }
      return store.read(offset, into);
    },
    write: () => Promise.reject(readOnly(store.path)),
    truncate: () => Promise.reject(readOnly(store.path)),
    flush: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
  return view;
}

const readOnly = (path: string) => new BlockError('read-only', 'the view an image is opened through is read-only', { path });
