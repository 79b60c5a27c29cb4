import { open, stat, type FileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import { BlockError, fromSystemError } from '../core/errors.js';
import type { OpenStoreOptions, Store } from './store.js';

/** A host file, through one FileHandle with positional reads and writes. */
export class FileStore implements Store {
  private closed = false;
  private constructor(
    readonly path: string,
    readonly readOnly: boolean,
    private readonly fh: FileHandle,
  ) {}

  static async open(path: string, options: OpenStoreOptions = {}): Promise<FileStore> {
    const readOnly = options.readOnly ?? false;
    let flags: number;
    if (options.create) {
      flags = constants.O_RDWR | constants.O_CREAT | (options.truncate ? constants.O_TRUNC : constants.O_EXCL);
    } else {
      flags = readOnly ? constants.O_RDONLY : constants.O_RDWR;
    }
    try {
      if (!options.create) {
        const st = await stat(path);
        if (st.isDirectory()) throw new BlockError('invalid-argument', 'is a directory, not an image file', { path });
      }
      const fh = await open(path, flags, 0o644);
      return new FileStore(path, readOnly && !options.create, fh);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new BlockError('invalid-argument', 'file already exists', { path, operation: 'create' }, { cause: e });
      }
      throw fromSystemError(e, { path, operation: options.create ? 'create' : 'open' });
    }
  }

  async size(): Promise<number> {
    try {
      return (await this.fh.stat()).size;
    } catch (e) {
      throw fromSystemError(e, { path: this.path, operation: 'stat' });
    }
  }

  async read(offset: number, into: Uint8Array): Promise<number> {
    let done = 0;
    try {
      while (done < into.length) {
        const { bytesRead } = await this.fh.read(into, done, into.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (e) {
      throw fromSystemError(e, { path: this.path, offset, length: into.length, operation: 'read' });
    }
    return done;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new BlockError('read-only', 'image is open read-only', { path: this.path, offset, operation: 'write' });
    let done = 0;
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    } catch (e) {
      throw fromSystemError(e, { path: this.path, offset, length: data.length, operation: 'write' });
    }
  }

  async truncate(size: number): Promise<void> {
    if (this.readOnly) throw new BlockError('read-only', 'image is open read-only', { path: this.path, operation: 'truncate' });
    try {
      await this.fh.truncate(size);
    } catch (e) {
      throw fromSystemError(e, { path: this.path, operation: 'truncate' });
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    try {
      await this.fh.datasync();
    } catch (e) {
      throw fromSystemError(e, { path: this.path, operation: 'flush' });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.fh.close();
    } catch (e) {
      throw fromSystemError(e, { path: this.path, operation: 'close' });
    }
  }
}

export const openFileStore = (path: string, options: OpenStoreOptions): Promise<Store> => FileStore.open(path, options);
