import { createRequire } from 'node:module';
import type * as S3 from '@aws-sdk/client-s3';
import { BlockError } from '../core/errors.js';
import { remoteOptions, remoteTimeoutMs } from './remote-options.js';
import { FillHandler } from './s3-fill.js';
import { parseUrl } from './url-paths.js';

/**
 * The official AWS SDK (@aws-sdk/client-s3), loaded on the first s3://
 * location: local work never pays for it (~100 ms and ~30 MiB to load).
 * By require, which the CLI bundle's vm.Script supports and import() not;
 * the SDK ships CommonJS. Configuration is the SDK's own (AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_PROFILE,
 * AWS_ENDPOINT_URL, ~/.aws/config) plus --s3-endpoint; an endpoint that is
 * not AWS's gets path-style addressing (bucket in the path: Ceph RGW and
 * MinIO need no wildcard DNS then).
 */
export type S3Module = typeof S3;

let sdk: S3Module | undefined;
export function s3Sdk(): S3Module {
  if (!sdk) {
    // SDK releases of late 2026 print a multi-line notice on Node < 22 at
    // their first request (future releases will need Node 22); vdisk
    // supports Node 20 and keeps errors to one line. Set to 'false' to see it.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    sdk = createRequire(import.meta.url)('@aws-sdk/client-s3') as S3Module;
  }
  return sdk;
}

const clients = new Map<string, S3.S3Client>();

/** The client for the current options (one per endpoint and region, kept for the process). */
export function s3Client(): S3.S3Client {
  const o = remoteOptions();
  const endpoint = o.s3Endpoint || process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL || undefined;
  // The SDK finds the region in the environment or a profile; a non-AWS endpoint often has none configured.
  const region = o.s3Region || process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || (endpoint ? 'us-east-1' : undefined);
  const timeout = remoteTimeoutMs();
  const key = `${endpoint ?? ''}\n${region ?? ''}\n${timeout}`;
  let c = clients.get(key);
  if (!c) {
    if (endpoint) {
      try {
        new URL(endpoint);
      } catch (e) {
        throw new BlockError('invalid-argument', `malformed S3 endpoint '${endpoint}' (expected a URL such as http://127.0.0.1:7480)`, {}, { cause: e });
      }
    }
    const { S3Client } = s3Sdk();
    c = new S3Client({
      endpoint,
      region,
      forcePathStyle: Boolean(endpoint),
      // The SDK's default (checksums on every request, since 3.729) streams
      // bodies with aws-chunked encoding, which Ceph RGW 16 answers with
      // HTTP 411; checksums only where the API requires them.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 4,
      // The SDK waits forever by default: a gateway that stops answering (a
      // full Ceph memstore holds requests) would hang vdisk. A connection
      // that makes no progress for the timeout fails and is tried again.
      requestHandler: { connectionTimeout: timeout, socketTimeout: timeout },
    });
    // Range GETs of the ranged store read their bodies straight into its buffers (io/s3-fill.ts).
    const config = c.config as { requestHandler: unknown };
    config.requestHandler = new FillHandler(config.requestHandler as ConstructorParameters<typeof FillHandler>[0]);
    clients.set(key, c);
  }
  return c;
}

/** `s3://bucket/key` → its bucket and key (a clear error when either is missing). */
export function s3Object(location: string): { bucket: string; key: string } {
  const url = parseUrl(location, ['s3:']);
  const bucket = url.hostname;
  if (!bucket) throw new BlockError('invalid-argument', `missing bucket in '${location}' (expected s3://bucket/key)`, { path: location });
  let key = url.pathname.replace(/^\//, '');
  try {
    key = decodeURIComponent(key);
  } catch {
    /* a '%' that starts no escape is part of the key */
  }
  if (!key || key.endsWith('/')) throw new BlockError('invalid-argument', `missing key in '${location}' (expected s3://bucket/key)`, { path: location });
  return { bucket, key };
}

interface SdkError {
  name?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  Code?: string;
}

/**
 * An SDK error as a BlockError: what the user can act on (no such bucket or
 * object, access denied, the object changed) is final; anything else (a
 * network failure, 5xx after the SDK's own retries) is returned as it is,
 * and a ranged read tries again (io/ranged-store.ts).
 */
export function s3Error(e: unknown, location: string, operation: string): unknown {
  const err = e as SdkError;
  const status = err.$metadata?.httpStatusCode;
  // Answers without a body (HEAD) come as 'Unknown' or the status text: the status says more.
  const named = err.name ?? err.Code ?? '';
  const name = named === 'Unknown' ? '' : named;
  if (name === 'NoSuchBucket') return new BlockError('not-found', 'no such bucket', { path: location, operation }, { cause: e });
  if (name === 'NoSuchKey' || name === 'NotFound' || status === 404) return new BlockError('not-found', 'no such object', { path: location, operation }, { cause: e });
  if (name === 'PreconditionFailed' || status === 412) {
    return new BlockError('io', 'the object changed while it was being read (its ETag no longer matches); read it again', { path: location, operation }, { cause: e });
  }
  if (['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'Forbidden', 'InvalidToken', 'ExpiredToken'].includes(name) || status === 403 || status === 401) {
    return new BlockError('io', `access denied (S3 ${name || `HTTP ${status}`}; check the credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)`, { path: location, operation }, { cause: e });
  }
  if (name === 'CredentialsProviderError') return new BlockError('io', `no S3 credentials found (${err.message})`, { path: location, operation }, { cause: e });
  if (name === 'NoSuchUpload') return new BlockError('io', 'the multipart upload is gone (aborted elsewhere?)', { path: location, operation }, { cause: e });
  if (status !== undefined && status >= 400 && status < 500) {
    return new BlockError('io', `S3 refused the request (${name || `HTTP ${status}`}: ${err.message ?? ''})`.trim(), { path: location, operation }, { cause: e });
  }
  return e;
}

/** s3Error, with what is left made a BlockError too (for requests that are not retried here). */
export function s3Final(e: unknown, location: string, operation: string): BlockError {
  const m = s3Error(e, location, operation);
  if (m instanceof BlockError) return m;
  const why = m instanceof Error ? m.message : String(m);
  return new BlockError('io', `S3 request failed (${operation}): ${why}`, { path: location, operation }, { cause: m });
}
