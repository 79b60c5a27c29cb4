// NBD read replies sent from the page cache with sendfile(2), on the calling
// (main) thread: src/io/file-reply.ts says when and why.
//
// A read reply is a short header followed by the disk's bytes, which lie in
// image files (a list of segments: file descriptor, file offset, length) or
// read as zeros. Read with pread and sent with send, every byte is copied
// twice by the server (file -> buffer -> socket); sendfile hands the page
// cache's pages to the socket by reference (splice into AF_UNIX and TCP
// sockets takes page references), so the only copy left is the client's.
// The socket is non-blocking (libuv made it so): a call sends what the
// socket buffer takes and says how far it got.
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <node_api.h>
#include <stdint.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_cachestat
#define SYS_cachestat 451  // Linux 6.5; the same number on every architecture (the unified syscall table)
#endif

// cachestat(2)'s structures (linux/mman.h, which older headers lack).
struct vdisk_cachestat_range {
  uint64_t off;
  uint64_t len;
};
struct vdisk_cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};

static const char zeros[65536];

static bool get_i32(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok;
}

static bool get_count(napi_env env, napi_value v, double *out) {
  return napi_get_value_double(env, v, out) == napi_ok && *out >= 0 && *out <= 9007199254740991.0 && floor(*out) == *out;
}

/* The data of a typed array of the given element type (false if v is not one). */
static bool get_typed(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len) {
  bool typed = false;
  napi_is_typedarray(env, v, &typed);
  if (!typed) return false;
  napi_typedarray_type type;
  napi_value ab;
  size_t off;
  napi_get_typedarray_info(env, v, &type, len, data, &ab, &off);
  return type == want;
}

static bool get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  void *p;
  if (!get_typed(env, v, napi_uint8_array, &p, len)) return false;
  *data = p;
  return true;
}

static bool get_f64s(napi_env env, napi_value v, double **data, size_t *len) {
  void *p;
  if (!get_typed(env, v, napi_float64_array, &p, len)) return false;
  *data = p;
  return true;
}

static napi_value number(napi_env env, double d) {
  napi_value out;
  napi_create_double(env, d, &out);
  return out;
}

// Whether every page of [off, off+len) of fd is in the page cache: 1, 0,
// or -errno (-ENOSYS before Linux 6.5).
static int resident(int fd, uint64_t off, uint64_t len) {
  if (len == 0) return 1;
  long page = sysconf(_SC_PAGESIZE);
  uint64_t first = off / page, last = (off + len - 1) / page;
  struct vdisk_cachestat_range r = {first * page, (last - first + 1) * page};
  struct vdisk_cachestat cs;
  if (syscall(SYS_cachestat, fd, &r, &cs, 0) != 0) return -errno;
  return cs.nr_cache >= last - first + 1;
}

// filesCached(segments: Float64Array) -> 1 when every file segment's pages
// are in the page cache, 0 when some are not, -errno when the host cannot
// tell (-ENOSYS: no cachestat). Segments are triples: descriptor (-1:
// zeros), file offset, length.
napi_value vdisk_files_cached(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  double *segs;
  size_t n;
  if (argc != 1 || !get_f64s(env, argv[0], &segs, &n) || n % 3 != 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "filesCached(segments: Float64Array of triples)");
    return NULL;
  }
  for (size_t i = 0; i < n; i += 3) {
    if (segs[i] < 0) continue;
    int r = resident((int)segs[i], (uint64_t)segs[i + 1], (uint64_t)segs[i + 2]);
    if (r != 1) return number(env, r);
  }
  return number(env, 1);
}

// Send [from, from+n) of a zero run; returns bytes sent or -errno.
static ssize_t send_zeros(int sock, size_t n, int more) {
  size_t done = 0;
  while (done < n) {
    size_t k = n - done < sizeof zeros ? n - done : sizeof zeros;
    ssize_t w = send(sock, zeros, k, MSG_DONTWAIT | MSG_NOSIGNAL | (more || done + k < n ? MSG_MORE : 0));
    if (w < 0) {
      if (errno == EINTR) continue;
      return done > 0 ? (ssize_t)done : -errno;
    }
    done += (size_t)w;
    if ((size_t)w < k) break;
  }
  return (ssize_t)done;
}

// sendReply(socket, head: Uint8Array, segments: Float64Array, skip) -> how
// far the reply has been sent (bytes, counting from its start; `skip` is
// how far an earlier call got), or -errno. Stops at EAGAIN (the socket
// buffer is full): the caller goes on once the socket is writable. A file
// shorter than a segment reads zeros past its end (as readOrZero does).
napi_value vdisk_send_reply(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t sock;
  uint8_t *head;
  size_t head_len, n;
  double *segs, skip;
  if (argc != 4 || !get_i32(env, argv[0], &sock) || sock < 0 || !get_bytes(env, argv[1], &head, &head_len) || !get_f64s(env, argv[2], &segs, &n) ||
      n % 3 != 0 || !get_count(env, argv[3], &skip)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "sendReply(socket, head: Uint8Array, segments: Float64Array of triples, skip)");
    return NULL;
  }
  uint64_t total = head_len;
  for (size_t i = 0; i < n; i += 3) total += (uint64_t)segs[i + 2];
  uint64_t at = (uint64_t)skip;  // bytes of the reply sent so far
  // The header (or what is left of it).
  while (at < head_len) {
    ssize_t w = send(sock, head + at, head_len - at, MSG_DONTWAIT | MSG_NOSIGNAL | (total > head_len ? MSG_MORE : 0));
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return number(env, (double)at);
      return number(env, -(double)errno);
    }
    at += (uint64_t)w;
  }
  uint64_t seg_start = head_len;
  for (size_t i = 0; i < n && at < total; i += 3) {
    uint64_t len = (uint64_t)segs[i + 2];
    uint64_t seg_end = seg_start + len;
    while (at < seg_end) {
      uint64_t left = seg_end - at;
      int more = seg_end < total;
      ssize_t w;
      if (segs[i] < 0) {
        w = send_zeros(sock, left, more);
      } else {
        off_t pos = (off_t)segs[i + 1] + (off_t)(at - seg_start);
        size_t k = left > (1u << 30) ? (1u << 30) : (size_t)left;
        w = sendfile(sock, (int)segs[i], &pos, k);
        if (w < 0) w = -errno;
        else if (w == 0) w = send_zeros(sock, left, more);  // the file ends here: zeros past it
      }
      if (w == -EINTR) continue;
      if (w == -EAGAIN || w == -EWOULDBLOCK) return number(env, (double)at);
      if (w < 0) return number(env, (double)w);
      // A short send is not taken for a full socket buffer (sendfile may
      // stop short for other reasons): the next call says EAGAIN if it is.
      at += (uint64_t)w;
    }
    seg_start = seg_end;
  }
  return number(env, (double)at);
}

// setSendBuffer(socket, bytes) -> 0 or -errno: SO_SNDBUF, so a reply of a
// few hundred KiB goes in one call rather than a socket buffer's worth
// (the kernel caps it at net.core.wmem_max).
napi_value vdisk_set_send_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t sock, bytes;
  if (argc != 2 || !get_i32(env, argv[0], &sock) || sock < 0 || !get_i32(env, argv[1], &bytes) || bytes <= 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "setSendBuffer(socket, bytes)");
    return NULL;
  }
  int r = setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  return number(env, r == 0 ? 0 : -(double)errno);
}
