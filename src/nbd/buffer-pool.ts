/**
 * Read replies recycled by size class (powers of two, from 4 KiB).
 *
 * A fast client makes the server turn over gigabytes a second of 64 KiB to
 * 32 MiB buffers. Left to the garbage collector, that memory (outside the JS
 * heap) is given back late, and RSS climbs far above what is really in
 * flight — measured at 160 MiB for one nbdcopy client and about 350 MiB for
 * sixteen. A reply buffer is returned here once its socket has sent it, and
 * at most `maxCached` bytes of them wait for reuse.
 */
export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private readonly mine = new WeakSet<ArrayBuffer>();
  private cached = 0;

  constructor(
    private readonly maxCached = 32 << 20,
    private readonly minClass = 4096,
    /**
     * Bytes beyond a power of two that a class still holds: a read reply is
     * its data (a power of two, as clients ask) plus a header of at most 28
     * bytes. Without this slack a 256 KiB read took a 512 KiB buffer.
     */
    private readonly headroom = 64,
  ) {}

  private classOf(size: number): number {
    let c = this.minClass;
    while (c + this.headroom < size) c *= 2;
    return c + this.headroom;
  }

  /** A buffer of `size` bytes (contents undefined). */
  take(size: number): Buffer {
    const cls = this.classOf(size);
    const ab = this.free.get(cls)?.pop();
    if (ab) {
      this.cached -= cls;
      return Buffer.from(ab, 0, size);
    }
    // Not zero-filled: the caller overwrites every byte it sends (a read
    // reply is the disk's bytes, which the chain always fills in full), and
    // zeroing a fresh 256 KiB reply cost more than reading the disk into it.
    const fresh = Buffer.allocUnsafeSlow(cls).buffer as ArrayBuffer;
    this.mine.add(fresh);
    return Buffer.from(fresh, 0, size);
  }

  /** Hand back a buffer from take() that nothing uses any more; others are ignored. */
  give(b: Buffer): void {
    const ab = b.buffer as ArrayBuffer;
    if (!this.mine.has(ab) || this.cached + ab.byteLength > this.maxCached) return;
    let list = this.free.get(ab.byteLength);
    if (!list) this.free.set(ab.byteLength, (list = []));
    list.push(ab);
    this.cached += ab.byteLength;
  }
}

/** The server's pool of read-reply buffers (process-wide, bounded). */
export const replyPool = new BufferPool();
