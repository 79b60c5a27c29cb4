// lseek(2) with SEEK_DATA / SEEK_HOLE (Linux 3.1+): where the data and the
// holes of a sparse file are (src/io/file-store.ts, allocation). Node's fs
// has no lseek; this replaces the fs-ext package vdisk once depended on for
// it, whose own install script npm 11 asks every installer to approve.
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <unistd.h>

// seekData(fd, offset, whence): the new offset (>= 0), or minus the errno
// (-ENXIO: no data / no hole at or after offset; -EINVAL: the file system
// or host cannot tell). A double carries it: offsets stay below 2^53.
napi_value vdisk_seek(napi_env env, napi_callback_info info) {
  napi_value argv[3], r;
  size_t argc = 3;
  int64_t a[3];
  double out = -EINVAL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc >= 3 &&
      napi_get_value_int64(env, argv[0], &a[0]) == napi_ok && napi_get_value_int64(env, argv[1], &a[1]) == napi_ok &&
      napi_get_value_int64(env, argv[2], &a[2]) == napi_ok) {
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
    off_t o = lseek((int)a[0], (off_t)a[1], a[2] == 3 ? SEEK_DATA : SEEK_HOLE);
    out = o < 0 ? -(double)errno : (double)o;
#else
    out = -ENOSYS;
#endif
  }
  napi_create_double(env, out, &r);
  return r;
}
