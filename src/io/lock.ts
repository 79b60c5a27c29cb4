import { BlockError } from '../core/errors.js';
import { lockAddon } from './native.js';

/*
 * Image locking, compatible with QEMU's (block/file-posix.c,
 * raw_apply_lock_bytes / raw_check_lock_bytes). Each permission a user of an
 * image may hold has a bit (include/block/block-common.h: consistent read 0,
 * write 1, write-unchanged 2, resize 3). A holder takes a shared
 * open-file-description lock on byte 100+bit for each permission it holds,
 * and on byte 200+bit for each permission it refuses to share. It then
 * checks the opposite bytes: for each permission it wants, that no one else
 * locks 200+bit (refuses to share it); for each it refuses to share, that
 * no one else locks 100+bit (holds it). Locking before checking, as QEMU
 * does, means two openers racing can both fail but never both succeed.
 *
 * What QEMU 7.2 holds, seen in /proc/locks: qemu-io/qemu-nbd/a VM on a vhd
 * or vhdx image read-write: 100, 101, 103 and 201, 203 (holds consistent
 * read, write, resize; shares neither write nor resize); read-only: 100 and
 * 201, 203; with -U (force-share): 100 only. On a raw image QEMU shares
 * write (qemu-nbd: 100, 101, 203).
 *
 * vdisk takes the format-image set for every format, raw included: its
 * writers refuse each other (two writers of one image lose data), a VM
 * cannot start on an image vdisk writes, and vdisk cannot write an image a
 * VM (or any QEMU writer) has open.
 */

const PERM_BASE = 100;
const SHARED_BASE = 200;

const CONSISTENT_READ = 0;
const WRITE = 1;
const RESIZE = 3;
const NAMES = ['consistent read', 'write', 'write unchanged', 'resize'];

/** What an open asks for: read-write, read-only, or read-only sharing everything (-U). */
export interface LockMode {
  readOnly: boolean;
  /** Share every permission and check none but our own read (qemu-img -U); read-only opens only. */
  forceShare?: boolean;
}

/** The permission bits held and refused to others, for a mode. */
function permissions(mode: LockMode): { held: number[]; unshared: number[] } {
  if (mode.forceShare) return { held: [CONSISTENT_READ], unshared: [] };
  if (mode.readOnly) return { held: [CONSISTENT_READ], unshared: [WRITE, RESIZE] };
  return { held: [CONSISTENT_READ, WRITE, RESIZE], unshared: [WRITE, RESIZE] };
}

/**
 * Whether locks are taken: `VDISK_LOCKING=off` turns them off (the user then
 * answers for not running two writers at once).
 */
function lockingOff(): boolean {
  return process.env.VDISK_LOCKING === 'off';
}

function errnoName(n: number): string {
  return n === -11 ? 'EAGAIN' : `errno ${-n}`;
}

/**
 * Lock the image open on `fd` for `mode`, or throw: `busy` when another
 * open (another process, or another open in this one) holds it in a way
 * that conflicts, naming the permission as QEMU does. Without the native
 * addon (or OFD locks) a read-only open goes on unlocked and a writable one
 * is refused (`unsupported`), since writing unlocked is what loses data.
 * The locks last until the descriptor is closed.
 */
export function lockImage(fd: number, path: string, mode: LockMode): void {
  if (lockingOff()) return;
  const addon = lockAddon();
  const unavailable = (why: string) => {
    if (mode.readOnly) return;
    throw new BlockError('unsupported', `cannot lock the image for writing (${why}); set VDISK_LOCKING=off to write without locks`, {
      path,
      operation: 'lock',
    });
  };
  if (!addon) return unavailable("vdisk's native addon is not built: see README, Native addon");
  const { held, unshared } = permissions(mode);
  for (const bit of held) {
    const r = addon.ofdLock(fd, PERM_BASE + bit, 1);
    if (r < 0) return fail(r);
  }
  for (const bit of unshared) {
    const r = addon.ofdLock(fd, SHARED_BASE + bit, 1);
    if (r < 0) return fail(r);
  }
  for (const bit of held) {
    const r = addon.ofdTest(fd, SHARED_BASE + bit);
    if (r < 0) return fail(r);
    if (r > 0) throw busy(path, `"${NAMES[bit]}" lock`, mode);
  }
  for (const bit of unshared) {
    const r = addon.ofdTest(fd, PERM_BASE + bit);
    if (r < 0) return fail(r);
    if (r > 0) throw busy(path, `shared "${NAMES[bit]}" lock`, mode);
  }

  function fail(r: number): void {
    // A shared lock conflicts only with an exclusive one, which neither vdisk nor QEMU takes on these bytes.
    if (r === -11) throw busy(path, 'a lock byte is held exclusively', mode);
    return unavailable(`the host has no open-file-description locks: ${errnoName(r)}`);
  }
}

function busy(path: string, what: string, mode: LockMode): BlockError {
  const hint = mode.readOnly ? '; -U/--force-share reads it anyway, at your own risk' : '';
  return new BlockError('busy', `image is in use by another process (failed to get ${what})${hint}`, {
    path,
    operation: 'lock',
  });
}
