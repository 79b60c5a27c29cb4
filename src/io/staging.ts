import { randomBytes } from 'node:crypto';
import { link, lstat, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { BlockError, fromSystemError, isBlockError } from '../core/errors.js';
import type { StoreOpener } from './store.js';

/**
 * What staging needs of the host beyond opening files: names. Host files
 * have `fileHost`; a caller whose stores live elsewhere gives its own.
 */
export interface FileHost {
  /** Whether anything exists at `path` (a dangling link counts: creating there would fail or write through it). */
  exists(path: string): Promise<boolean>;
  /** Give `from` the name `to`, replacing what `to` names, atomically. */
  rename(from: string, to: string): Promise<void>;
  /** Give `from` the name `to` only if `to` names nothing, atomically; `from` is gone after. */
  renameNoReplace(from: string, to: string): Promise<void>;
  /** Remove the name `path` (nothing if it is already gone). */
  remove(path: string): Promise<void>;
  /** Make the names in the folder of `path` durable. */
  syncFolder(path: string): Promise<void>;
}

const exists = (e: unknown) => new BlockError('invalid-argument', 'file already exists', {}, { cause: e });

/** The host's file system (node:fs). */
export const fileHost: FileHost = {
  async exists(path) {
    try {
      await lstat(path);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw fromSystemError(e, { path, operation: 'stat' });
    }
  },
  async rename(from, to) {
    try {
      await rename(from, to); // rename(2) replaces `to` atomically within a file system
    } catch (e) {
      throw fromSystemError(e, { path: to, operation: 'rename' });
    }
  },
  async renameNoReplace(from, to) {
    // Node has no renameat2(RENAME_NOREPLACE); link(2) fails with EEXIST
    // when `to` exists, atomically, and then the temporary name goes. File
    // systems without hard links (vfat, some FUSE) fall back to a check and
    // a rename, which a file appearing in between could lose to.
    try {
      await link(from, to);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw exists(e).withContext({ path: to, operation: 'create' });
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EXDEV' && code !== 'EMLINK') {
        throw fromSystemError(e, { path: to, operation: 'link' });
      }
      if (await fileHost.exists(to)) throw exists(e).withContext({ path: to, operation: 'create' });
      return fileHost.rename(from, to);
    }
    await fileHost.remove(from);
  },
  async remove(path) {
    try {
      await unlink(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(e, { path, operation: 'remove' });
    }
  },
  async syncFolder(path) {
    const dir = dirname(resolve(path));
    try {
      const fh = await open(dir, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    } catch (e) {
      throw fromSystemError(e, { path: dir, operation: 'flush' });
    }
  },
};

export interface StagingOptions {
  /** The store opener files are created and opened through. */
  openStore: StoreOpener;
  host: FileHost;
  /** The main file (the image) may replace an existing file of that name. Other files never replace one. */
  overwrite?: boolean;
  /** Sync the folder after the renames (the files themselves are flushed by their formats). */
  durable?: boolean;
}

interface Staged {
  /** The final name resolved (the map's key), as given (for renames and messages), and the temporary name. */
  key: string;
  final: string;
  temp: string;
}

/**
 * New files made under temporary names and given their final names only
 * when complete (issue 16): a create or convert that fails, is interrupted
 * or runs out of space leaves nothing under a name a user would take for an
 * image. `opener` is the StoreOpener for the job: a file created through it
 * (`create: true`) is made as `.NAME.vdisk-tmp-<pid>-<random>` in the same
 * folder — so names the format records relative to the image's folder (a
 * VHD/VHDX parent, an add-cow image file) come out right — and opening its
 * final name later opens the temporary file. commit() renames the other
 * files first and `main` last: the main file is what makes an image, so
 * until it has its name no image exists (add-cow's header names its image
 * file, which is in place by then). discard() removes every temporary file.
 */
export class Staging {
  private readonly staged = new Map<string, Staged>();
  private readonly main: string;
  readonly opener: StoreOpener;

  constructor(
    main: string,
    private readonly options: StagingOptions,
  ) {
    this.main = resolve(main);
    this.opener = (path, o) => this.open(path, o);
  }

  private async open(path: string, o: Parameters<StoreOpener>[1]) {
    const key = resolve(path);
    const staged = this.staged.get(key);
    if (staged) return this.options.openStore(staged.temp, o);
    if (!o.create) return this.options.openStore(path, o);
    const replace = key === this.main ? this.options.overwrite : o.truncate;
    if (!replace && (await this.options.host.exists(path))) {
      throw new BlockError('invalid-argument', 'file already exists', { path, operation: 'create' });
    }
    // (A long name is cut so the temporary one stays within NAME_MAX, 255 bytes on Linux.)
    const temp = join(dirname(key), `.${basename(key).slice(0, 200)}.vdisk-tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    // create without truncate: O_EXCL, so a name taken meanwhile is never written through.
    let store;
    try {
      store = await this.options.openStore(temp, { ...o, truncate: false });
    } catch (e) {
      // Not staged yet, so rename() would not know the temporary name: the error names the file asked for.
      if (!isBlockError(e) || e.context.path !== temp) throw e;
      throw new BlockError(e.kind, e.message, { ...e.context, path }, { cause: e.cause });
    }
    this.staged.set(key, { key, final: path, temp });
    return store;
  }

  /** Give every staged file its final name, the main file last. */
  async commit(): Promise<void> {
    const host = this.options.host;
    const all = [...this.staged.values()];
    const order = [...all.filter((s) => s.key !== this.main), ...all.filter((s) => s.key === this.main)];
    const done: Staged[] = [];
    try {
      for (const s of order) {
        if (s.key === this.main && this.options.overwrite) await host.rename(s.temp, s.final);
        else await host.renameNoReplace(s.temp, s.final);
        done.push(s);
      }
    } catch (e) {
      // A later rename failed (a name taken meanwhile): the files already in place go again.
      for (const s of done) await host.remove(s.final).catch(() => {});
      throw e;
    } finally {
      for (const s of done) this.staged.delete(s.key);
    }
    if (this.options.durable && order.length) await host.syncFolder(this.main);
  }

  /** Remove every file not yet committed. Never throws: it runs while another error is on its way. */
  async discard(): Promise<void> {
    for (const s of this.staged.values()) await this.options.host.remove(s.temp).catch(() => {});
    this.staged.clear();
  }

  /** An error naming a temporary file, made to name the final one (what the user asked for). */
  rename(e: unknown): unknown {
    if (!isBlockError(e) || typeof e.context.path !== 'string') return e;
    const path = e.context.path;
    for (const s of this.staged.values()) {
      if (resolve(path) === s.temp) {
        const r = new BlockError(e.kind, e.message, { ...e.context, path: s.final }, { cause: e.cause });
        r.stack = e.stack;
        return r;
      }
    }
    return e;
  }
}
