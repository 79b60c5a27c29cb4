// vdisk's native file-to-file copier (src/io/native.ts says when and why it
// is used). One call copies a list of ranges from files (one descriptor per
// range: a chain's layers) into one target file, skipping granules that are all zero, on a few of libuv's threads:
// each thread takes the next range, reads it whole into its own buffer,
// finds its runs of non-zero granules and writes each with one pwrite. The
// data never reaches JavaScript, and a thread goes from its read to its
// write without a round trip through the event loop.
// The ranges the threads will read next are announced to the kernel ahead
// of them (prefetch), so a cold source is read with many requests in flight.
//
// Semantics match the JavaScript path it stands in for (ops/convert.ts,
// ops/zero.ts granuleRuns): granules are aligned to the target offset; a
// read that meets the end of the source file reads zeros there, as
// readOrZero does; a write the host takes none of is an error, not a loop.
//
// copyToBlocks is the same copy into a target whose format allocates blocks
// (dynamic VHD, VHDX): each range belongs to a unit (one block of the
// target's disk) whose place in the file is either known (an allocated
// block: written in place) or taken on its first data, from consecutive
// slots at the end of the file (base + k * stride). Slots go to units in
// the plan's order — a range that holds data waits until every range
// before it has been read and found zero or not — so the file is laid out
// exactly as the JavaScript path lays it out (one block after the other,
// in disk order, blocks of zeros never allocated), while the reads, zero
// scans and writes of many blocks still run at once. The format writes
// the metadata afterwards (src/ops/convert.ts, Image.fillBlocks).
//
// zeroScan runs on the same threads over a plan of (descriptor, offset,
// length) triples: it finds which ranges read all zeros (compact's zero
// mode: ops/compact.ts), reading each from its first page on and stopping
// at the first byte that is not zero, and writes nothing.
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
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>

#define MAX_WORKERS 8
// A range is read whole into one buffer: bound it so a bad plan cannot ask for huge allocations.
#define MAX_RANGE (64u << 20)

// Bytes of source ranges announced to the kernel ahead of the reads (see prefetch).
#define PREFETCH (32u << 20)

#define STRIDE 4  // a range of the plan: source descriptor, source offset, target offset, length
// A range of a copyToBlocks plan: source descriptor, source offset, disk offset, unit, offset in the unit's place, length.
#define BSTRIDE 6
#define UNIT_WRITE_ALL 1  // a unit flag: write zero granules too (in place over data that may not be zero)
#define SSTRIDE 3  // a range of a zeroScan plan: descriptor, offset, length
// zeroScan reads a range a piece at a time: first one page (data shows in its first bytes), then SCAN_PIECE bytes.
#define SCAN_PROBE 4096u
#define SCAN_PIECE (1u << 20)

enum { KIND_COPY, KIND_BLOCKS, KIND_SCAN };

typedef struct {
  int dst;
  uint64_t granule;
  size_t count;    // ranges
  uint64_t *plan;  // count ranges of STRIDE values
  uint64_t max_len;
  atomic_size_t next;
  atomic_size_t ahead;  // ranges before it have been announced to the kernel (prefetch)
  size_t lead;          // how many ranges past the one being read are announced
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
  int kind;
  uint8_t *zero_out;   // zeroScan: 1 per range that reads all zeros, 0 per other
  napi_ref out_ref;
  // copyToBlocks only (blocks != 0): see the comment at the top.
  int blocks;
  size_t units;
  int64_t *unit_host;    // where each unit's data starts in the file, -1 while it has no place
  uint8_t *unit_flags;
  uint8_t *decided;      // per range: 0 not yet scanned, 1 needs no slot, 2 holds data for a unit without one
  size_t frontier;       // ranges before it are decided, and their units placed
  uint64_t next_slot;
  uint64_t base, stride;
  uv_mutex_t mu;
  uv_cond_t cv;
  napi_ref placed_ref;   // Float64Array receiving unit_host at the end
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
  // copyToBlocks: a range waiting for its slot must not wait for ranges that will never be decided.
  if (job->blocks) {
    uv_mutex_lock(&job->mu);
    uv_cond_broadcast(&job->cv);
    uv_mutex_unlock(&job->mu);
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

// Announce the source ranges the threads will read next (POSIX_FADV_WILLNEED:
// the kernel starts reading them at once, without waiting), PREFETCH bytes
// ahead of range i. Without it, each thread has one read in flight and
// spends its write in between with none: on a cold cache the device sees a
// queue of one or two requests, and the ranges skip holes (or follow a
// format's block order), so the kernel's own readahead, which follows one
// sequential stream per open file, does not step in.
static void prefetch(Job *job, size_t i, size_t stride) {
  if (!job->lead) return;
  size_t j = atomic_load(&job->ahead);
  const size_t until = i + job->lead < job->count ? i + job->lead : job->count;
  while (j < until) {
    if (!atomic_compare_exchange_weak(&job->ahead, &j, j + 1)) continue;
    const uint64_t *r = job->plan + stride * j;
    j++;
    const uint64_t len = r[stride - 1];
    if (len == 0) continue;
#ifdef RWF_NOWAIT
    // Its last byte in memory already (a warm cache, or the kernel's own
    // readahead got there): skip the call, which walks the range's pages
    // even when all are cached (~50 us per 2 MiB under strace: 6% of a warm
    // copy's syscall time).
    uint8_t byte;
    struct iovec v = {&byte, 1};
    if (preadv2((int)r[0], &v, 1, (off_t)(r[1] + len - 1), RWF_NOWAIT) >= 0) continue;
#endif
#ifdef POSIX_FADV_WILLNEED
    posix_fadvise((int)r[0], (off_t)r[1], (off_t)len, POSIX_FADV_WILLNEED);
#endif
  }
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

// The next granule boundary after pos (granules are aligned to `at`, the
// disk offset or the target offset of the range's first byte).
static inline uint64_t granule_end(uint64_t at, uint64_t pos, uint64_t g, uint64_t len) {
  uint64_t end = ((at + pos) / g + 1) * g - at;
  return end > len ? len : end;
}

// Mark range i decided and place the units of every range decided in a row
// from the frontier on; then, if range i holds data, wait for its unit's
// place. Returns the unit's host offset (-1: it has none, or a failure elsewhere).
static int64_t place(Job *job, size_t i, uint64_t unit, int needs_slot) {
  uv_mutex_lock(&job->mu);
  job->decided[i] = needs_slot ? 2 : 1;
  int moved = 0;
  while (job->frontier < job->count && job->decided[job->frontier]) {
    const uint64_t *r = job->plan + BSTRIDE * job->frontier;
    if (job->decided[job->frontier] == 2 && job->unit_host[r[3]] < 0) {
      job->unit_host[r[3]] = (int64_t)(job->base + job->next_slot * job->stride);
      job->next_slot++;
    }
    job->frontier++;
    moved = 1;
  }
  if (moved) uv_cond_broadcast(&job->cv);
  // Only a range that takes a slot waits: its place depends on every range before it.
  if (needs_slot) {
    while (job->frontier <= i && !atomic_load(&job->failed)) uv_cond_wait(&job->cv, &job->mu);
  }
  int64_t host = atomic_load(&job->failed) ? -1 : job->unit_host[unit];
  uv_mutex_unlock(&job->mu);
  return host;
}

static void execute_blocks(Job *job, uint8_t *buf) {
  const uint64_t g = job->granule;
  while (!atomic_load(&job->failed)) {
    size_t i = atomic_fetch_add(&job->next, 1);
    if (i >= job->count) break;
    const uint64_t *r = job->plan + BSTRIDE * i;
    const uint64_t from = r[1], disk = r[2], unit = r[3], in = r[4], len = r[5];
    prefetch(job, i, BSTRIDE);
    const int write_all = job->unit_flags[unit] & UNIT_WRITE_ALL;
    if (!read_full(job, (int)r[0], buf, len, from)) break;
    // The first data granule (granules aligned to the disk offset, as ops/zero.ts granuleRuns).
    uint64_t pos = 0, end;
    if (!write_all) {
      while (pos < len) {
        end = granule_end(disk, pos, g, len);
        if (!all_zero(buf + pos, end - pos)) break;
        pos = end;
      }
    }
    const int has_data = pos < len;
    uv_mutex_lock(&job->mu);
    const int placed = job->unit_host[unit] >= 0;
    uv_mutex_unlock(&job->mu);
    // Every range is marked decided (the frontier passes only decided ranges).
    const int64_t host = place(job, i, unit, has_data && !placed);
    if (!has_data) {
      if (job->progress) __atomic_fetch_add(job->progress, len, __ATOMIC_RELAXED);
      continue;
    }
    if (host < 0) break;  // failed elsewhere
    uint64_t bytes = 0;
    if (write_all) {
      if (!write_full(job, buf, len, (uint64_t)host + in)) return;
      bytes = len;
    } else {
      while (pos < len) {
        // A run of data granules from pos, then the zero granules after it skipped.
        const uint64_t run = pos;
        while (pos < len) {
          end = granule_end(disk, pos, g, len);
          if (all_zero(buf + pos, end - pos)) break;
          pos = end;
        }
        if (!write_full(job, buf + run, pos - run, (uint64_t)host + in + run)) return;
        bytes += pos - run;
        while (pos < len) {
          end = granule_end(disk, pos, g, len);
          if (!all_zero(buf + pos, end - pos)) break;
          pos = end;
        }
      }
    }
    atomic_fetch_add(&job->written, bytes);
    if (job->progress) __atomic_fetch_add(job->progress, len, __ATOMIC_RELAXED);
  }
}

static void execute_scan(Job *job, uint8_t *buf) {
  while (!atomic_load(&job->failed)) {
    size_t i = atomic_fetch_add(&job->next, 1);
    if (i >= job->count) break;
    const uint64_t *r = job->plan + SSTRIDE * i;
    const uint64_t from = r[1], len = r[2];
    uint8_t zero = 1;
    for (uint64_t at = 0, piece = SCAN_PROBE; at < len; at += piece, piece = SCAN_PIECE) {
      const uint64_t n = len - at < piece ? len - at : piece;
      if (!read_full(job, (int)r[0], buf, n, from + at)) return;
      if (!all_zero(buf, n)) {
        zero = 0;
        break;
      }
    }
    job->zero_out[i] = zero;
    if (zero) atomic_fetch_add(&job->written, 1);
    if (job->progress) __atomic_fetch_add(job->progress, len, __ATOMIC_RELAXED);
  }
}

static void execute(napi_env env, void *data) {
  (void)env;
  Job *job = data;
  if (job->kind == KIND_SCAN) {
    uint8_t *buf = malloc(SCAN_PIECE);
    if (!buf) {
      fail(job, ENOMEM, "allocate", 0, -1);
      return;
    }
    execute_scan(job, buf);
    free(buf);
    return;
  }
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
  if (job->blocks) {
    execute_blocks(job, buf);
    free(buf);
    return;
  }
  const uint64_t g = job->granule;
  while (!atomic_load(&job->failed)) {
    size_t i = atomic_fetch_add(&job->next, 1);
    if (i >= job->count) break;
    const uint64_t *r = job->plan + STRIDE * i;
    const uint64_t from = r[1], to = r[2], len = r[3];
    prefetch(job, i, STRIDE);
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

static void free_job(napi_env env, Job *job) {
  if (job->blocks) {
    if (job->placed_ref) napi_delete_reference(env, job->placed_ref);
    uv_mutex_destroy(&job->mu);
    uv_cond_destroy(&job->cv);
    free(job->unit_host);
    free(job->unit_flags);
    free(job->decided);
  }
  if (job->out_ref) napi_delete_reference(env, job->out_ref);
  free(job->plan);
  free(job);
}

static void finish(napi_env env, Job *job) {
  if (job->blocks && !job->failed) {
    // Where each unit's data went (-1: no data, no place): the format records the new places.
    napi_value placed;
    napi_typedarray_type t;
    size_t n;
    void *d;
    if (napi_get_reference_value(env, job->placed_ref, &placed) == napi_ok &&
        napi_get_typedarray_info(env, placed, &t, &n, &d, NULL, NULL) == napi_ok && t == napi_float64_array && n >= job->units) {
      for (size_t u = 0; u < job->units; u++) ((double *)d)[u] = (double)job->unit_host[u];
    }
  }
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
  free_job(env, job);
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

// A plan (Float64Array of `stride`-tuples of non-negative safe integers:
// the first a descriptor, the last a length of at most MAX_RANGE) copied
// into C memory. NULL after throwing a TypeError (or an out-of-memory error).
static uint64_t *get_plan(napi_env env, napi_value v, size_t stride, size_t *count, uint64_t *max_len, const char *shape) {
  bool is_typed;
  napi_is_typedarray(env, v, &is_typed);
  if (!is_typed) return throw_type(env, "plan must be a Float64Array"), NULL;
  napi_typedarray_type type;
  size_t length;
  void *values;
  napi_get_typedarray_info(env, v, &type, &length, &values, NULL, NULL);
  if (type != napi_float64_array || length % stride != 0) return throw_type(env, shape), NULL;
  uint64_t *plan = malloc(length ? length * sizeof *plan : 1);
  if (!plan) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  const double *d = values;
  *max_len = 1;
  const char *bad = NULL;
  for (size_t i = 0; i < length && !bad; i++) {
    double x = d[i];
    if (!(x >= 0 && x <= 9007199254740991.0) || floor(x) != x) bad = "plan values must be non-negative safe integers";
    else {
      plan[i] = (uint64_t)x;
      if (i % stride == 0 && plan[i] > INT32_MAX) bad = "a source descriptor of the plan is out of range";
      if (i % stride == stride - 1 && plan[i] > *max_len) *max_len = plan[i];
    }
  }
  if (!bad && *max_len > MAX_RANGE) bad = "a range of the plan is larger than 64 MiB";
  if (bad) {
    free(plan);
    return throw_type(env, bad), NULL;
  }
  *count = length / stride;
  return plan;
}

// The optional progress argument: 1 and *out set (NULL when undefined), 0 after throwing.
static int get_progress(napi_env env, napi_value v, uint64_t **out) {
  *out = NULL;
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_undefined) return 1;
  bool ok;
  napi_is_typedarray(env, v, &ok);
  napi_typedarray_type ptype = napi_int8_array;
  size_t plength = 0;
  void *pdata = NULL;
  if (ok) napi_get_typedarray_info(env, v, &ptype, &plength, &pdata, NULL, NULL);
  if (!ok || ptype != napi_biguint64_array || plength < 1) return throw_type(env, "progress must be a BigUint64Array"), 0;
  *out = pdata;
  return 1;
}

// Queue the job on `workers` threads; the promise settles when all are done.
static napi_value start(napi_env env, Job *job, int32_t workers, napi_value progress_v) {
  // The progress array stays alive (and its memory in place) while the threads count into it.
  if (job->progress) napi_create_reference(env, progress_v, 1, &job->progress_ref);
  {
    // PREFETCH bytes of ranges ahead of the one being read, counted in ranges of the plan's mean length.
    uint64_t total = 0;
    const size_t stride = job->blocks ? BSTRIDE : job->kind == KIND_SCAN ? SSTRIDE : STRIDE;
    for (size_t k = 0; k < job->count; k++) total += job->plan[stride * k + stride - 1];
    // zeroScan reads most data ranges only a page deep: announcing them whole would read what it skips.
    job->lead = total && job->kind != KIND_SCAN ? (size_t)(((uint64_t)PREFETCH * job->count + total - 1) / total) : 0;
  }
  if ((size_t)workers > job->count) workers = job->count > 0 ? (int32_t)job->count : 1;
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  static const char *names[] = {"vdisk.copyRanges", "vdisk.copyToBlocks", "vdisk.zeroScan"};
  napi_create_string_utf8(env, names[job->kind], NAPI_AUTO_LENGTH, &name);
  job->pending = workers;
  for (int i = 0; i < workers; i++) {
    if (napi_create_async_work(env, NULL, name, execute, complete, job, &job->works[i]) != napi_ok) {
      // Nothing queued yet: undo, and fail the call (a promise that never settles would be worse).
      for (int k = 0; k < i; k++) napi_delete_async_work(env, job->works[k]);
      napi_value msg, err;
      napi_create_string_utf8(env, "could not start the copy threads", NAPI_AUTO_LENGTH, &msg);
      napi_create_error(env, NULL, msg, &err);
      napi_reject_deferred(env, job->deferred, err);
      if (job->progress_ref) napi_delete_reference(env, job->progress_ref);
      free_job(env, job);
      return promise;
    }
  }
  for (int i = 0; i < workers; i++) napi_queue_async_work(env, job->works[i]);
  return promise;
}

// The arguments both copiers take: the target's descriptor, the zero-skipping
// granule and the number of worker threads. Throws a TypeError and returns
// false when one is out of range.
static bool get_copy_args(napi_env env, napi_value dst_v, napi_value granule_v, napi_value workers_v,
                          int32_t *dst, uint64_t *granule, int32_t *workers) {
  const char *bad = NULL;
  if (napi_get_value_int32(env, dst_v, dst) != napi_ok || *dst < 0) bad = "target descriptor";
  else if (!get_u64(env, granule_v, granule) || *granule == 0) bad = "granule";
  else if (napi_get_value_int32(env, workers_v, workers) != napi_ok || *workers < 1 || *workers > MAX_WORKERS) bad = "workers";
  if (bad) throw_type(env, bad);
  return bad == NULL;
}

// copyRanges(dstFd, plan: Float64Array of STRIDE-tuples, granule, workers[, progress: BigUint64Array])
//   -> Promise<bytes written>
static napi_value copy_ranges(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) return throw_type(env, "copyRanges takes 4 or 5 arguments");
  int32_t dst, workers;
  uint64_t granule;
  if (!get_copy_args(env, argv[0], argv[2], argv[3], &dst, &granule, &workers)) return NULL;
  uint64_t *progress = NULL;
  if (argc == 5 && !get_progress(env, argv[4], &progress)) return NULL;
  size_t count;
  uint64_t max_len;
  uint64_t *plan = get_plan(env, argv[1], STRIDE, &count, &max_len, "plan must be a Float64Array of (descriptor, from, to, length) ranges");
  if (!plan) return NULL;
  Job *job = calloc(1, sizeof *job);
  if (!job) {
    free(plan);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  job->dst = dst;
  job->granule = granule;
  job->count = count;
  job->plan = plan;
  job->max_len = max_len;
  job->progress = progress;
  return start(env, job, workers, argc == 5 ? argv[4] : NULL);
}

// copyToBlocks(dstFd, plan: Float64Array of BSTRIDE-tuples, units: Float64Array of (host or -1, flags),
//              base, stride, granule, workers, placed: Float64Array[, progress]) -> Promise<bytes written>
static napi_value copy_to_blocks(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 8) return throw_type(env, "copyToBlocks takes 8 or 9 arguments");
  int32_t dst, workers;
  uint64_t base, stride, granule;
  if (!get_copy_args(env, argv[0], argv[5], argv[6], &dst, &granule, &workers)) return NULL;
  if (!get_u64(env, argv[3], &base)) return throw_type(env, "base");
  if (!get_u64(env, argv[4], &stride) || stride == 0) return throw_type(env, "stride");
  bool ok;
  napi_typedarray_type ut = napi_int8_array, pt = napi_int8_array;
  size_t ulen = 0, plen = 0;
  void *udata = NULL;
  napi_is_typedarray(env, argv[2], &ok);
  if (ok) napi_get_typedarray_info(env, argv[2], &ut, &ulen, &udata, NULL, NULL);
  if (!ok || ut != napi_float64_array || ulen % 2 != 0) return throw_type(env, "units must be a Float64Array of (host offset or -1, flags) pairs");
  napi_is_typedarray(env, argv[7], &ok);
  if (ok) napi_get_typedarray_info(env, argv[7], &pt, &plen, NULL, NULL, NULL);
  const size_t units = ulen / 2;
  if (!ok || pt != napi_float64_array || plen < units) return throw_type(env, "placed must be a Float64Array with one value per unit");
  uint64_t *progress = NULL;
  if (argc == 9 && !get_progress(env, argv[8], &progress)) return NULL;
  size_t count;
  uint64_t max_len;
  uint64_t *plan = get_plan(env, argv[1], BSTRIDE, &count, &max_len, "plan must be a Float64Array of (descriptor, from, disk offset, unit, offset in unit, length) ranges");
  if (!plan) return NULL;
  for (size_t i = 0; i < count; i++) {
    if (plan[BSTRIDE * i + 3] >= units) {
      free(plan);
      return throw_type(env, "a range of the plan names a unit that is not in units");
    }
  }
  Job *job = calloc(1, sizeof *job);
  int64_t *unit_host = malloc((units ? units : 1) * sizeof *unit_host);
  uint8_t *unit_flags = malloc(units ? units : 1);
  uint8_t *decided = calloc(count ? count : 1, 1);
  if (!job || !unit_host || !unit_flags || !decided) {
    free(job), free(plan), free(unit_host), free(unit_flags), free(decided);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  const double *u = udata;
  for (size_t k = 0; k < units; k++) {
    const double h = u[2 * k], f = u[2 * k + 1];
    if (!((h == -1 || (h >= 0 && h <= 9007199254740991.0)) && floor(h) == h && (f == 0 || f == UNIT_WRITE_ALL))) {
      free(job), free(plan), free(unit_host), free(unit_flags), free(decided);
      return throw_type(env, "a unit must be (host offset or -1, 0 or 1)");
    }
    unit_host[k] = (int64_t)h;
    unit_flags[k] = (uint8_t)f;
  }
  if (uv_mutex_init(&job->mu) != 0 || uv_cond_init(&job->cv) != 0) {
    free(job), free(plan), free(unit_host), free(unit_flags), free(decided);
    napi_throw_error(env, "ENOMEM", "could not make a lock");
    return NULL;
  }
  job->blocks = 1;
  job->kind = KIND_BLOCKS;
  job->dst = dst;
  job->granule = granule;
  job->count = count;
  job->plan = plan;
  job->max_len = max_len;
  job->progress = progress;
  job->units = units;
  job->unit_host = unit_host;
  job->unit_flags = unit_flags;
  job->decided = decided;
  job->base = base;
  job->stride = stride;
  napi_create_reference(env, argv[7], 1, &job->placed_ref);
  return start(env, job, workers, argc == 9 ? argv[8] : NULL);
}

// The (descriptor, offset, length) plan of zeroScan, as a new job. NULL after throwing.
static Job *scan_job(napi_env env, napi_value plan_v) {
  size_t count;
  uint64_t max_len;
  uint64_t *plan = get_plan(env, plan_v, SSTRIDE, &count, &max_len, "plan must be a Float64Array of (descriptor, offset, length) ranges");
  if (!plan) return NULL;
  Job *job = calloc(1, sizeof *job);
  if (!job) {
    free(plan);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  job->kind = KIND_SCAN;
  job->dst = -1;
  job->granule = 1;
  job->count = count;
  job->plan = plan;
  job->max_len = max_len;
  return job;
}

// zeroScan(plan: Float64Array of SSTRIDE-tuples, workers, out: Uint8Array[, progress]) -> Promise<ranges that read all zeros>
static napi_value zero_scan(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) return throw_type(env, "zeroScan takes 3 or 4 arguments");
  int32_t workers;
  if (napi_get_value_int32(env, argv[1], &workers) != napi_ok || workers < 1 || workers > MAX_WORKERS) return throw_type(env, "workers");
  bool ok;
  napi_typedarray_type ot = napi_int8_array;
  size_t olen = 0;
  void *odata = NULL;
  napi_is_typedarray(env, argv[2], &ok);
  if (ok) napi_get_typedarray_info(env, argv[2], &ot, &olen, &odata, NULL, NULL);
  if (!ok || ot != napi_uint8_array) return throw_type(env, "out must be a Uint8Array with one byte per range");
  uint64_t *progress = NULL;
  if (argc == 4 && !get_progress(env, argv[3], &progress)) return NULL;
  Job *job = scan_job(env, argv[0]);
  if (!job) return NULL;
  if (olen < job->count) {
    free_job(env, job);
    return throw_type(env, "out must be a Uint8Array with one byte per range");
  }
  job->zero_out = odata;
  job->progress = progress;
  napi_create_reference(env, argv[2], 1, &job->out_ref);
  return start(env, job, workers, argc == 4 ? argv[3] : NULL);
}

napi_value vdisk_zero_scan(napi_env env, napi_callback_info info) {
  return zero_scan(env, info);
}

napi_value vdisk_copy_ranges(napi_env env, napi_callback_info info) {
  return copy_ranges(env, info);
}

napi_value vdisk_copy_to_blocks(napi_env env, napi_callback_info info) {
  return copy_to_blocks(env, info);
}
