import { BlockError } from '../core/errors.js';
import { resolve } from 'node:path';
import { hostFor, isLocal } from './hosts.js';

/**
 * Containment of names recorded in an image (docs/security.md): a backing
 * file name, a VHD/VHDX parent locator, an add-cow image file name are the
 * image author's words, and the image may come from anyone. Such a name may
 * lead only to a file inside the folder of the image that records it (or a
 * subfolder), or inside a folder the user allows (`--allow-path`,
 * `allowPaths`). Links are followed before the check: a link inside the
 * folder that leads out of it is refused like the name `../x` would be.
 *
 * The check resolves links when it runs; the file is opened right after. A
 * process that can rename links in the folder between the two could still
 * redirect the open — but such a process can already rewrite the image
 * itself, which is not what this guards against (a file received from
 * someone else). Node offers no openat2(RESOLVE_BENEATH) to close the gap.
 */

/**
 * Check that `path` (a recorded name already resolved against the folder of
 * `recorder`, the image that records it) stays inside that folder or an
 * allowed one. Returns `path` unchanged; throws `invalid-argument` naming
 * the recorder when it leads out. A name with no host file behind it is
 * let through: opening it reports it missing (and reads nothing), and a
 * store that is not a host file (memory stores, tests) has nothing to
 * protect.
 */
export async function checkContained(path: string, recorder: string, what: string, recorded: string, allowPaths: readonly string[] = []): Promise<string> {
  const host = hostFor(recorder);
  // A name recorded in an image on one host never leads to another (a remote image naming a local file).
  // A stream (`-`) names its parent as a local file would, from the working folder (io/hosts.ts, stdioHost).
  const other = recorder === '-' ? !isLocal(path) : hostFor(path) !== host;
  const { inside, real: target } = other ? { inside: false, real: path } : await host.contained(path, recorder, allowPaths);
  if (target === null) return path;
  if (!inside) {
    const where = !other && target !== (isLocal(path) ? resolve(path) : path) ? `${path}, which is ${target}` : path;
    throw new BlockError(
      'invalid-argument',
      `${what} '${recorded}' leads out of the image's folder (to ${where}); names recorded in an image stay inside its folder unless --allow-path widens it (docs/security.md)`,
      { path: recorder, name: recorded, target },
    );
  }
  return path;
}
