// fallocate(2) with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (Linux 2.6.38+):
// give a range of a file's blocks back to the file system, the range then
// reading as zeros and the file keeping its length (src/io/file-store.ts,
// punchHole; add-cow compaction, src/ops/compact-holes.ts). Node's fs has no
// fallocate.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>

// punchHole(fd, offset, length): 0, or minus the errno (-EOPNOTSUPP: the
// file system cannot punch holes; -ENOSYS: this host has no fallocate).
napi_value vdisk_punch_hole(napi_env env, napi_callback_info info) {
  napi_value argv[3], r;
  size_t argc = 3;
  int64_t a[3];
  int out = -EINVAL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc >= 3 &&
      napi_get_value_int64(env, argv[0], &a[0]) == napi_ok && napi_get_value_int64(env, argv[1], &a[1]) == napi_ok &&
      napi_get_value_int64(env, argv[2], &a[2]) == napi_ok && a[1] >= 0 && a[2] > 0) {
#if defined(FALLOC_FL_PUNCH_HOLE) && defined(FALLOC_FL_KEEP_SIZE)
    int rc;
    do {
      rc = fallocate((int)a[0], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a[1], (off_t)a[2]);
    } while (rc < 0 && errno == EINTR);
    out = rc < 0 ? -errno : 0;
#else
    out = -ENOSYS;
#endif
  }
  napi_create_int32(env, out, &r);
  return r;
}
