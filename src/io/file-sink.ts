import type { ByteSink } from './sink.js';
import { openFileStore } from './file-store.js';
import { fileHost, Staging } from './staging.js';
import type { Store } from './store.js';

/**
 * A local file as a ByteSink: bytes appended under a temporary name in the
 * target's folder (io/staging.ts), renamed into place by finish(), removed
 * by abort() — so the sequential writers can be tested against files, and a
 * failed stream leaves nothing under the target's name.
 */
export async function fileSink(path: string, options: { overwrite?: boolean; durable?: boolean } = {}): Promise<ByteSink> {
  const durable = options.durable ?? false;
  const staging = new Staging(path, { openStore: openFileStore, host: fileHost, overwrite: options.overwrite, durable });
  let store: Store | undefined;
  try {
    store = await staging.opener(path, { create: true, noSync: !durable });
  } catch (e) {
    const err = staging.rename(e);
    await staging.discard();
    throw err;
  }
  let at = 0;
  let done = false;
  return {
    location: path,
    async write(data) {
      try {
        await store!.write(at, data);
      } catch (e) {
        throw staging.rename(e);
      }
      at += data.length;
    },
    async finish() {
      try {
        await store!.flush();
        await store!.close();
        done = true;
        await staging.commit();
      } catch (e) {
        throw staging.rename(e);
      }
    },
    async abort() {
      if (!done) {
        done = true;
        await store!.close().catch(() => {});
      }
      await staging.discard();
    },
  };
}
