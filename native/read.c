// A read that never waits: preadv2(2) with RWF_NOWAIT, on the calling (main)
// thread. It returns what the page cache holds at once and fails with EAGAIN
// where the read would have to wait for the device, so the caller can take
// data that is already in memory without the round trip through libuv's
// thread pool (the hand-over to a pool thread and back costs ~40 µs on the
// bench machine, longer than copying 64 KiB), and send only the rest there.
// src/io/file-store.ts says when it is tried.
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <node_api.h>
#include <sys/uio.h>

// readNoWait(fd, into: TypedArray, position) -> bytes read (0 at end of
// file), or -errno: -EAGAIN when not all of it is in memory, -EOPNOTSUPP /
// -ENOSYS / -EINVAL where the host cannot do this at all.
napi_value vdisk_read_nowait(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  double position;
  bool typed = false;
  if (argc == 3) napi_is_typedarray(env, argv[1], &typed);
  if (argc != 3 || !typed || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_get_value_double(env, argv[2], &position) != napi_ok || !(position >= 0 && position <= 9007199254740991.0) ||
      floor(position) != position) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "readNoWait(fd, typedArray, position)");
    return NULL;
  }
  napi_typedarray_type type;
  size_t length;
  void *data;
  napi_value buffer;
  size_t byte_offset;
  napi_get_typedarray_info(env, argv[1], &type, &length, &data, &buffer, &byte_offset);
  size_t elem = 1;
  switch (type) {
    case napi_int16_array: case napi_uint16_array: elem = 2; break;
    case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
    case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
    default: break;
  }
  double result;
#ifdef RWF_NOWAIT
  struct iovec iov = {data, length * elem};
  ssize_t n;
  do {
    n = preadv2(fd, &iov, 1, (off_t)position, RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  result = n < 0 ? -(double)errno : (double)n;
#else
  result = -(double)ENOSYS;
#endif
  napi_value out;
  napi_create_double(env, result, &out);
  return out;
}
