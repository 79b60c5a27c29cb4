import { BlockError } from '../core/errors.js';

/**
 * Settings of the remote hosts that no Store option carries (a chain opens
 * its parents through the same opener, so they must hold for every layer):
 * extra HTTP headers (authentication), the S3 endpoint and how long a
 * connection may make no progress. The CLI sets them from --header,
 * --s3-endpoint and --remote-timeout; a library user calls
 * setRemoteOptions. Environment variables fill what is not set:
 * VDISK_HTTP_HEADERS (one `Name: value` a line), VDISK_REMOTE_TIMEOUT
 * (seconds) and the AWS SDK's own (AWS_ENDPOINT_URL, AWS_REGION,
 * AWS_PROFILE, credentials).
 */
export interface RemoteOptions {
  /** Extra request headers for http:// and https:// locations, `Name: value` each. */
  httpHeaders?: readonly string[];
  /** The S3 endpoint (a URL); path-style addressing is used with it (non-AWS servers: Ceph RGW, MinIO). */
  s3Endpoint?: string;
  /** The S3 region (default: AWS configuration, else us-east-1). */
  s3Region?: string;
  /**
   * Seconds a remote connection may go without progress (connecting, or no
   * byte sent or received) before it is given up; the request is then tried
   * again (reads: 5 tries with backoff) or fails with a clear error.
   * Default: VDISK_REMOTE_TIMEOUT, else 30.
   */
  timeoutSeconds?: number;
}

let current: RemoteOptions = {};

export function setRemoteOptions(options: RemoteOptions): void {
  current = { ...options };
}

export function remoteOptions(): RemoteOptions {
  return current;
}

const DEFAULT_TIMEOUT_SECONDS = 30;

/** The no-progress timeout of remote connections, in milliseconds (RemoteOptions.timeoutSeconds). */
export function remoteTimeoutMs(): number {
  const env = process.env.VDISK_REMOTE_TIMEOUT;
  const given = current.timeoutSeconds ?? (env === undefined || env === '' ? DEFAULT_TIMEOUT_SECONDS : Number(env));
  if (!Number.isFinite(given) || given <= 0 || given > 86_400) {
    const from = current.timeoutSeconds !== undefined ? '--remote-timeout' : 'VDISK_REMOTE_TIMEOUT';
    throw new BlockError('invalid-argument', `${from} must be a number of seconds above 0 and at most 86400, not '${current.timeoutSeconds ?? env}'`);
  }
  return Math.round(given * 1000);
}
