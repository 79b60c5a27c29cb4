// Open-file-description byte-range locks (F_OFD_SETLK / F_OFD_GETLK, Linux
// 3.15+), the primitive under vdisk's image locking (src/io/lock.ts holds the
// scheme, QEMU's). Node's fs has no fcntl; fs-ext's locks the whole file with
// per-process POSIX locks, which neither fit QEMU's byte scheme nor conflict
// between two opens in one process. OFD locks belong to the open file
// description: two opens of one image in one process do conflict, and
// closing the descriptor releases them.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <string.h>

static int get_args(napi_env env, napi_callback_info info, int64_t *out, size_t n) {
  napi_value argv[3];
  size_t argc = 3;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < n) return 0;
  for (size_t i = 0; i < n; i++) {
    if (napi_get_value_int64(env, argv[i], &out[i]) != napi_ok) return 0;
  }
  return 1;
}

static napi_value int_result(napi_env env, int v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

#if defined(F_OFD_SETLK) && defined(F_OFD_GETLK)
// fcntl(cmd) on the one byte `byte` of `fd`, retried on EINTR; `fl` holds
// the answer (F_OFD_GETLK). 0, or minus the errno.
static int ofd_fcntl(int fd, int cmd, int64_t byte, short type, struct flock *fl) {
  memset(fl, 0, sizeof *fl);
  fl->l_whence = SEEK_SET;
  fl->l_start = (off_t)byte;
  fl->l_len = 1;
  fl->l_type = type;
  int r;
  do {
    r = fcntl(fd, cmd, fl);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : 0;
}
#endif

// ofdLock(fd, byte, type): type 0 unlock, 1 shared, 2 exclusive; one byte.
// 0, or minus the errno (-EAGAIN: a conflicting lock; -EINVAL/-ENOSYS: no OFD locks here).
napi_value vdisk_ofd_lock(napi_env env, napi_callback_info info) {
  int64_t a[3];
  if (!get_args(env, info, a, 3)) return int_result(env, -EINVAL);
#if defined(F_OFD_SETLK) && defined(F_OFD_GETLK)
  struct flock fl;
  return int_result(env, ofd_fcntl((int)a[0], F_OFD_SETLK, a[1], a[2] == 0 ? F_UNLCK : a[2] == 1 ? F_RDLCK : F_WRLCK, &fl));
#else
  return int_result(env, -ENOSYS);
#endif
}

// ofdTest(fd, byte): 1 when another open file description holds any lock on
// the byte (asked as "could an exclusive lock be taken", as QEMU asks), 0
// when none does, or minus the errno.
napi_value vdisk_ofd_test(napi_env env, napi_callback_info info) {
  int64_t a[2];
  if (!get_args(env, info, a, 2)) return int_result(env, -EINVAL);
#if defined(F_OFD_SETLK) && defined(F_OFD_GETLK)
  struct flock fl;
  int r = ofd_fcntl((int)a[0], F_OFD_GETLK, a[1], F_WRLCK, &fl);
  if (r < 0) return int_result(env, r);
  return int_result(env, fl.l_type != F_UNLCK);
#else
  return int_result(env, -ENOSYS);
#endif
}
