/**
 * A byte sink: where a sequential writer sends an image as one strictly
 * ordered byte stream (stdout, a pipe, an S3 multipart upload, a local file).
 * Unlike a Store there is no seeking: bytes land in the order written.
 */
export interface ByteSink {
  /** Where the bytes go, for messages ("-" for stdout, "s3://bucket/key", a path). */
  readonly location: string;
  /** Append bytes; resolves when the sink can take more (backpressure). The caller must not reuse `data` until it resolves. */
  write(data: Uint8Array): Promise<void>;
  /** Every byte has been written: make the result durable and visible under its final name. */
  finish(): Promise<void>;
  /** Give up: discard what was written (abort a multipart upload, remove a temporary file). Safe to call more than once, and after a failed write. */
  abort(reason?: unknown): Promise<void>;
}
