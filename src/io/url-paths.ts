import { BlockError } from '../core/errors.js';
import type { HostPaths } from './host.js';

/**
 * Names on hosts whose locations are URLs (S3, HTTP): a recorded parent
 * name is taken from the child's URL folder the way a browser resolves a
 * relative link (WHATWG URL), so `..\base.vhdx` recorded in
 * `s3://b/vms/a/child.vhdx` names `s3://b/vms/base.vhdx`. `\` separators are
 * made `/` by the chain before this (recorded names are Windows-style).
 */

/** Parse a location as a URL with one of `protocols` ('s3:'), or fail with a clear one-line error. */
export function parseUrl(location: string, protocols: readonly string[]): URL {
  let url: URL;
  try {
    url = new URL(location);
  } catch (e) {
    throw new BlockError('invalid-argument', `malformed URL '${location}'`, { path: location }, { cause: e });
  }
  if (!protocols.includes(url.protocol)) {
    throw new BlockError('invalid-argument', `unsupported URL scheme '${url.protocol}' (expected ${protocols.join(' or ')})`, { path: location });
  }
  return url;
}

const SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;

export const urlPaths: HostPaths = {
  isAbsolute: (name) => SCHEME.test(name),
  absolute: (location) => new URL(location).href,
  dirname: (location) => new URL('.', location).href,
  basename: (location) => {
    const p = new URL(location).pathname;
    return decodeURIComponent(p.slice(p.lastIndexOf('/') + 1));
  },
  resolve: (folder, name) => {
    const base = folder.endsWith('/') ? folder : folder + '/';
    // A name that is not a URL is a path: its characters are not URL syntax ('?' and '#' belong to the file name).
    const n = SCHEME.test(name) ? name : name.split('/').map(encodeURIComponent).join('/');
    return new URL(n, base).href;
  },
  relative: (folder, target) => {
    const f = new URL(folder.endsWith('/') ? folder : folder + '/');
    const t = new URL(target);
    if (f.protocol !== t.protocol || f.host !== t.host) return undefined;
    const from = f.pathname.split('/').slice(0, -1);
    const to = t.pathname.split('/');
    let i = 0;
    while (i < from.length && i < to.length - 1 && from[i] === to[i]) i++;
    return decodeURIComponent([...Array(from.length - i).fill('..'), ...to.slice(i)].join('/'));
  },
};

/** Whether `target` lies inside the URL folder `folder` (a string prefix of normalised URLs, ending in '/'). */
function urlInside(target: string, folder: string): boolean {
  try {
    const f = new URL(folder.endsWith('/') ? folder : folder + '/').href;
    return new URL(target).href.startsWith(f);
  } catch {
    return false; // an allowed folder that is not a URL (a local path) holds no URL
  }
}

/**
 * Host.contained for URL hosts: a recorded name stays inside the URL folder
 * of the image that records it (the same bucket prefix, the same server
 * folder), or an allowed URL folder; nothing to follow as links.
 */
export async function urlContained(target: string, recorder: string, allowed: readonly string[]): Promise<{ inside: boolean; real: string | null }> {
  const inside = urlInside(target, urlPaths.dirname(recorder)) || allowed.some((a) => urlInside(target, a));
  return { inside, real: new URL(target).href };
}
