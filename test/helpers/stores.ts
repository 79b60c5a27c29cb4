import type { Store } from '../../src/io/store.js';

/**
 * A store whose writes land after a random number (0-3) of event-loop
 * turns, so writes in flight together land in any order — as on a host,
 * where two writes to one file run on two threads and either may take the
 * file first. The data is copied when the write is issued; reads see what
 * has landed. (FaultStore models crashes, not this: its writes land in
 * issue order.)
 */
export function reordering(inner: Store, r: () => number): Store {
  const later = async () => {
    for (let n = Math.floor(r() * 4); n > 0; n--) await new Promise((resolve) => setImmediate(resolve));
  };
  return new Proxy(inner, {
    get(t, k, recv) {
      if (k === 'write') {
        return async (offset: number, data: Uint8Array) => {
          const copy = data.slice();
          await later();
          return t.write(offset, copy);
        };
      }
      if (k === 'writev' && t.writev) {
        return async (offset: number, parts: readonly Uint8Array[]) => {
          const copies = parts.map((p) => p.slice());
          await later();
          return t.writev!(offset, copies);
        };
      }
      const v = Reflect.get(t, k, recv);
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
}
