// vdisk's native file-to-file copier (src/io/native.ts says when and why it
// is used). One call copies a list of ranges from files (one descriptor per
// range: a chain's layers) into one target file, skipping granules that are all zero, on a few of libuv's threads:
// each thread takes the next range, reads it whole into its own buffer,
// finds its runs of non-zero granules and writes each with one pwrite. The
// data never reaches JavaScript, and a thread goes from its read to its
// write without a round trip through the event loop.
//
// Semantics match the JavaScript path it stands in for (ops/convert.ts,
// ops/zero.ts granuleRuns): granules are aligned to the target offset; a
// read that meets the end of the source file reads zeros there, as
// readOrZero does; a write the host takes none of is an error, not a loop.
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <node_api.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#define MAX_WORKERS 8
// A range is read whole into one buffer: bound it so a bad plan cannot ask for huge allocations.
#define MAX_RANGE (64u << 20)

#define STRIDE 4  // a range of the plan: source descriptor, source offset, target offset, length

typedef struct {
  int dst;
  uint64_t granule;
  size_t count;    // ranges
  uint64_t *plan;  // count ranges of STRIDE values
  uint64_t max_len;
  atomic_size_t next;
  atomic_int failed;
  atomic_uint_fast64_t written;
  // The first failure, written only by the thread that set `failed`.
  int err;
  const char *op;
  uint64_t err_offset;
  int err_fd;  // the file it happened in
  atomic_int no_fallocate;  // the target's file system cannot allocate ahead
  uint64_t *progress;  // optional: bytes of ranges finished, for a progress bar
  napi_ref progress_ref;
  int pending;  // workers not yet completed (main thread only)
  napi_deferred deferred;
  napi_async_work works[MAX_WORKERS];
} Job;

// The first failure wins; `fd` is the file it happened in.
static void fail(Job *job, int err, const char *op, uint64_t offset, int fd) {
  int expected = 0;
  if (atomic_compare_exchange_strong(&job->failed, &expected, 1)) {
    job->err = err;
    job->op = op;
    job->err_offset = offset;
    job->err_fd = fd;
  }
}

// Read len bytes at offset; past the end of the file, zeros.
static int read_full(Job *job, int src, uint8_t *buf, uint64_t len, uint64_t offset) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = pread(src, buf + done, len - done, (off_t)(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(job, errno, "read", offset + done, src);
      return 0;
    }
    if (n == 0) {
      memset(buf + done, 0, len - done);
      break;
    }
    done += (uint64_t)n;
  }
  return 1;
}

// Allocating the run's blocks before writing it spares the file system its
// per-page delayed-allocation work inside the write, which the kernel runs
// under the file's lock, one write at a time (ext4: the bench's vhd→raw copy
// in C, 103 → 95 ms with 2 MiB huge-page buffers). Only runs about to be
// written are allocated, so holes stay holes; a full disk shows here, at
// once, rather than at writeback.
static int allocate(Job *job, uint64_t len, uint64_t offset) {
#ifdef __linux__
  if (atomic_load(&job->no_fallocate)) return 1;
  int r;
  do {
    r = fallocate(job->dst, 0, (off_t)offset, (off_t)len);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return 1;
  if (errno == ENOSPC || errno == EDQUOT || errno == EIO || errno == EFBIG) {
    fail(job, errno, "write", offset, job->dst);
    return 0;
  }
  atomic_store(&job->no_fallocate, 1);  // EOPNOTSUPP and the like: write without it
#else
  (void)job, (void)len, (void)offset;
#endif
  return 1;
}

static int write_full(Job *job, const uint8_t *buf, uint64_t len, uint64_t offset) {
  if (!allocate(job, len, offset)) return 0;
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(job->dst, buf + done, len - done, (off_t)(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(job, errno, "write", offset + done, job->dst);
      return 0;
    }
    if (n == 0) {
      fail(job, EIO, "write", offset + done, job->dst);
      return 0;
    }
    done += (uint64_t)n;
  }
  return 1;
}

// Data granules nearly always show a non-zero first byte: one load decides.
static int all_zero(const uint8_t *p, uint64_t n) {
  return p[0] == 0 && (n == 1 || memcmp(p, p + 1, n - 1) == 0);
}

static void execute(napi_env env, void *data) {
  (void)env;
  Job *job = data;
  // Aligned to 2 MiB and offered huge pages: one fault instead of 512 for a
  // 2 MiB buffer, and fewer TLB misses while the kernel copies through it.
  const size_t huge = 2u << 20;
  uint8_t *buf = NULL;
  if (posix_memalign((void **)&buf, job->max_len >= huge ? huge : 4096, job->max_len) != 0) {
    fail(job, ENOMEM, "allocate", 0, job->dst);
    return;
  }
#ifdef MADV_HUGEPAGE
  if (job->max_len >= huge) madvise(buf, job->max_len, MADV_HUGEPAGE);
#endif
  const uint64_t g = job->granule;
  while (!atomic_load(&job->failed)) {
    size_t i = atomic_fetch_add(&job->next, 1);
    if (i >= job->count) break;
    const uint64_t *r = job->plan + STRIDE * i;
    const uint64_t from = r[1], to = r[2], len = r[3];
    if (!read_full(job, (int)r[0], buf, len, from)) break;
    uint64_t pos = 0, bytes = 0;
    while (pos < len) {
      // Skip a run of zero granules, then write the run of data granules after it.
      uint64_t end;
      while (pos < len) {
        end = ((to + pos) / g + 1) * g - to;
        if (end > len) end = len;
        if (!all_zero(buf + pos, end - pos)) break;
        pos = end;
      }
      if (pos >= len) break;
      const uint64_t run = pos;
      while (pos < len) {
        end = ((to + pos) / g + 1) * g - to;
        if (end > len) end = len;
        if (all_zero(buf + pos, end - pos)) break;
        pos = end;
      }
      if (!write_full(job, buf + run, pos - run, to + run)) goto out;
      bytes += pos - run;
    }
    atomic_fetch_add(&job->written, bytes);
    if (job->progress) __atomic_fetch_add(job->progress, len, __ATOMIC_RELAXED);
  }
out:
  free(buf);
}

static void finish(napi_env env, Job *job) {
  napi_value result;
  if (job->failed) {
    const char *code = job->err > 0 ? uv_err_name(-job->err) : "EIO";
    char msg[256];
    snprintf(msg, sizeof msg, "%s failed at offset %llu: %s", job->op, (unsigned long long)job->err_offset, strerror(job->err));
    napi_value code_v, msg_v, err_v, errno_v, syscall_v, offset_v, fd_v;
    napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v);
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &msg_v);
    napi_create_error(env, code_v, msg_v, &err_v);
    napi_create_int32(env, -job->err, &errno_v);
    napi_create_string_utf8(env, job->op, NAPI_AUTO_LENGTH, &syscall_v);
    napi_create_double(env, (double)job->err_offset, &offset_v);
    napi_set_named_property(env, err_v, "errno", errno_v);
    napi_set_named_property(env, err_v, "syscall", syscall_v);
    napi_set_named_property(env, err_v, "offset", offset_v);
    napi_create_int32(env, job->err_fd, &fd_v);
    napi_set_named_property(env, err_v, "fd", fd_v);
    napi_reject_deferred(env, job->deferred, err_v);
  } else {
    napi_create_double(env, (double)atomic_load(&job->written), &result);
    napi_resolve_deferred(env, job->deferred, result);
  }
  if (job->progress_ref) napi_delete_reference(env, job->progress_ref);
  free(job->plan);
  free(job);
}

static void complete(napi_env env, napi_status status, void *data) {
  Job *job = data;
  (void)status;
  // Which work item this was does not matter: all are deleted with the job.
  if (--job->pending > 0) return;
  for (int i = 0; i < MAX_WORKERS; i++) {
    if (job->works[i]) napi_delete_async_work(env, job->works[i]);
  }
  finish(env, job);
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

static int get_u64(napi_env env, napi_value v, uint64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return 0;
  if (!(d >= 0 && d <= 9007199254740991.0) || floor(d) != d) return 0;
  *out = (uint64_t)d;
  return 1;
}

// copyRanges(dstFd, plan: Float64Array of STRIDE-tuples, granule, workers[, progress: BigUint64Array])
//   -> Promise<bytes written>
static napi_value copy_ranges(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) return throw_type(env, "copyRanges takes 4 or 5 arguments");
  bool has_progress = false;
  if (argc == 5) {
    napi_valuetype t;
    napi_typeof(env, argv[4], &t);
    has_progress = t != napi_undefined;
  }
  int32_t dst, workers;
  uint64_t granule;
  if (napi_get_value_int32(env, argv[0], &dst) != napi_ok || dst < 0) return throw_type(env, "target descriptor");
  if (!get_u64(env, argv[2], &granule) || granule == 0) return throw_type(env, "granule");
  if (napi_get_value_int32(env, argv[3], &workers) != napi_ok || workers < 1 || workers > MAX_WORKERS) return throw_type(env, "workers");
  bool is_typed;
  napi_is_typedarray(env, argv[1], &is_typed);
  if (!is_typed) return throw_type(env, "plan must be a Float64Array");
  napi_typedarray_type type;
  size_t length;
  void *values;
  napi_get_typedarray_info(env, argv[1], &type, &length, &values, NULL, NULL);
  if (type != napi_float64_array || length % STRIDE != 0) return throw_type(env, "plan must be a Float64Array of (descriptor, from, to, length) ranges");

  uint64_t *progress = NULL;
  if (has_progress) {
    bool ok;
    napi_is_typedarray(env, argv[4], &ok);
    napi_typedarray_type ptype = napi_int8_array;
    size_t plength = 0;
    void *pdata = NULL;
    if (ok) napi_get_typedarray_info(env, argv[4], &ptype, &plength, &pdata, NULL, NULL);
    if (!ok || ptype != napi_biguint64_array || plength < 1) return throw_type(env, "progress must be a BigUint64Array");
    progress = pdata;
  }

  Job *job = calloc(1, sizeof *job);
  uint64_t *plan = malloc(length ? length * sizeof *plan : 1);
  if (!job || !plan) {
    free(job);
    free(plan);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  const double *d = values;
  uint64_t max_len = 1;
  for (size_t i = 0; i < length; i++) {
    double v = d[i];
    if (!(v >= 0 && v <= 9007199254740991.0) || floor(v) != v) {
      free(job);
      free(plan);
      return throw_type(env, "plan values must be non-negative safe integers");
    }
    plan[i] = (uint64_t)v;
    if (i % STRIDE == 0 && plan[i] > INT32_MAX) {
      free(job);
      free(plan);
      return throw_type(env, "a source descriptor of the plan is out of range");
    }
    if (i % STRIDE == STRIDE - 1 && plan[i] > max_len) max_len = plan[i];
  }
  if (max_len > MAX_RANGE) {
    free(job);
    free(plan);
    return throw_type(env, "a range of the plan is larger than 64 MiB");
  }
  job->dst = dst;
  job->granule = granule;
  job->count = length / STRIDE;
  job->plan = plan;
  job->max_len = max_len;
  job->progress = progress;
  // The progress array stays alive (and its memory in place) while the threads count into it.
  if (progress) napi_create_reference(env, argv[4], 1, &job->progress_ref);
  if ((size_t)workers > job->count) workers = job->count > 0 ? (int32_t)job->count : 1;

  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "vdisk.copyRanges", NAPI_AUTO_LENGTH, &name);
  job->pending = workers;
  for (int i = 0; i < workers; i++) {
    if (napi_create_async_work(env, NULL, name, execute, complete, job, &job->works[i]) != napi_ok) {
      // Nothing queued yet: undo, and fail the call (a promise that never settles would be worse).
      for (int k = 0; k < i; k++) napi_delete_async_work(env, job->works[k]);
      napi_value msg, err;
      napi_create_string_utf8(env, "could not start the copy threads", NAPI_AUTO_LENGTH, &msg);
      napi_create_error(env, NULL, msg, &err);
      napi_reject_deferred(env, job->deferred, err);
      free(job->plan);
      if (job->progress_ref) napi_delete_reference(env, job->progress_ref);
      free(job);
      return promise;
    }
  }
  for (int i = 0; i < workers; i++) napi_queue_async_work(env, job->works[i]);
  return promise;
}

napi_value vdisk_copy_ranges(napi_env env, napi_callback_info info) {
  return copy_ranges(env, info);
}
