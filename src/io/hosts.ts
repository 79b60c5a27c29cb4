import { BlockError } from '../core/errors.js';
import type { Host, HostStat } from './host.js';
import { azureHost } from './azure-host.js';
import { isAzureLocation } from './azure-location.js';
import { httpHost } from './http-host.js';
import { localHost } from './local-host.js';
import { s3Host } from './s3-host.js';
import type { OpenStoreOptions, Store } from './store.js';

/**
 * `-`: stdin or stdout. convert alone reads or writes it, through its own
 * stream opener and sink (io/stdio.ts); opening it anywhere else is refused.
 * A stream has no folder of its own, so names recorded in or about it (the
 * parent of a differencing image streamed to stdout) are taken from the
 * working folder, as for a local file.
 */
const stdioHost: Host = {
  name: 'stdin/stdout',
  open: async () => {
    throw new BlockError('unsupported', "'-' (stdin/stdout) is read and written by convert only (vdisk convert ... - OUT, vdisk convert ... SRC -)", { path: '-' });
  },
  paths: localHost.paths,
  identity: async (location) => location,
  stat: async () => undefined,
  contained: (target, recorder, allowed) => localHost.contained(target, recorder, allowed),
};

/**
 * Which host a location lives on, by its scheme: one line per host. Adding
 * a host is one file under io/ (its Host) plus one line here. A location
 * that matches no line is a local path; one that looks like a URL of a
 * scheme not listed is refused rather than taken for a local file name.
 */
const HOSTS: readonly { scheme: { test(location: string): boolean }; host: Host }[] = [
  // Before http(s): an Azure blob URL is an https URL (or Azurite's http one) that the page-blob host reads.
  { scheme: { test: isAzureLocation }, host: azureHost },
  { scheme: /^s3:/i, host: s3Host },
  { scheme: /^https?:/i, host: httpHost },
  { scheme: /^-$/, host: stdioHost },
];

/** A location with a scheme no host handles: `ftp://…`, `gs://…`. */
const URL_LIKE = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;

/** The host of a location. */
export function hostFor(location: string): Host {
  for (const h of HOSTS) if (h.scheme.test(location)) return h.host;
  if (URL_LIKE.test(location)) {
    const scheme = location.slice(0, location.indexOf(':'));
    throw new BlockError('invalid-argument', `unknown location scheme '${scheme}://' (vdisk reads local paths, s3://bucket/key, azure://container/blob, http:// and https:// URLs)`, { path: location });
  }
  return localHost;
}

/** Whether a location is on the local file system. */
export function isLocal(location: string): boolean {
  return hostFor(location) === localHost;
}

/** Open any location as a Store: the default StoreOpener of every operation. */
export function openLocation(location: string, options: OpenStoreOptions): Promise<Store> {
  try {
    return hostFor(location).open(location, options);
  } catch (e) {
    return Promise.reject(e);
  }
}

/** A location in full (a local path made absolute, a URL normalised). */
export function absoluteLocation(location: string): string {
  return hostFor(location).paths.absolute(location);
}

/** The folder a location lies in. */
export function folderOf(location: string): string {
  return hostFor(location).paths.dirname(location);
}

/** The file name of a location. */
export function baseName(location: string): string {
  return hostFor(location).paths.basename(location);
}

/** `name` taken relative to the folder of the image at `location` (a name that stands alone is kept). */
export function resolveFrom(location: string, name: string): string {
  const paths = hostFor(location).paths;
  return paths.isAbsolute(name) ? name : paths.resolve(paths.dirname(location), name);
}

/** The name of `target` seen from the folder of the image at `location`, or undefined when no relative name leads there. */
export function relativeName(location: string, target: string): string | undefined {
  const paths = hostFor(location).paths;
  return paths.relative(paths.dirname(location), target);
}

/** Size, modification time and allocated bytes of a location, or undefined when nothing is there. */
export function statLocation(location: string): Promise<HostStat | undefined> {
  return hostFor(location).stat(location);
}
