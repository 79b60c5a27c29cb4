/**
 * Settings of the remote hosts that no Store option carries (a chain opens
 * its parents through the same opener, so they must hold for every layer):
 * extra HTTP headers (authentication) and the S3 endpoint. The CLI sets
 * them from --header and --s3-endpoint; a library user calls
 * setRemoteOptions. Environment variables fill what is not set:
 * VDISK_HTTP_HEADERS (one `Name: value` a line) and the AWS SDK's own
 * (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, credentials).
 */
export interface RemoteOptions {
  /** Extra request headers for http:// and https:// locations, `Name: value` each. */
  httpHeaders?: readonly string[];
  /** The S3 endpoint (a URL); path-style addressing is used with it (non-AWS servers: Ceph RGW, MinIO). */
  s3Endpoint?: string;
  /** The S3 region (default: AWS configuration, else us-east-1). */
  s3Region?: string;
}

let current: RemoteOptions = {};

export function setRemoteOptions(options: RemoteOptions): void {
  current = { ...options };
}

export function remoteOptions(): RemoteOptions {
  return current;
}
