import { BlockError } from '../core/errors.js';
import type { Host } from './host.js';
import { urlPaths } from './url-paths.js';
export const s3Host: Host = {
  name: 'S3',
  open: async (l) => { throw new BlockError('unsupported', 'x', { path: l }); },
  paths: urlPaths,
  identity: async (l) => new URL(l).href,
  stat: async () => undefined,
  contained: async () => ({ inside: false, real: null }),
};
