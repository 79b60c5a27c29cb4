// The module's exports (one C file per job: copy.c, read.c, lock.c, seek.c, punch.c, send.c).
#include <node_api.h>

napi_value vdisk_copy_ranges(napi_env env, napi_callback_info info);
napi_value vdisk_copy_to_blocks(napi_env env, napi_callback_info info);
napi_value vdisk_zero_scan(napi_env env, napi_callback_info info);
napi_value vdisk_read_nowait(napi_env env, napi_callback_info info);
napi_value vdisk_ofd_lock(napi_env env, napi_callback_info info);
napi_value vdisk_ofd_test(napi_env env, napi_callback_info info);
napi_value vdisk_seek(napi_env env, napi_callback_info info);
napi_value vdisk_punch_hole(napi_env env, napi_callback_info info);
napi_value vdisk_send_reply(napi_env env, napi_callback_info info);
napi_value vdisk_files_cached(napi_env env, napi_callback_info info);
napi_value vdisk_set_send_buffer(napi_env env, napi_callback_info info);

static void export_fn(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn);
  napi_set_named_property(env, exports, name, fn);
}

NAPI_MODULE_INIT() {
  export_fn(env, exports, "copyRanges", vdisk_copy_ranges);
  export_fn(env, exports, "copyToBlocks", vdisk_copy_to_blocks);
  export_fn(env, exports, "zeroScan", vdisk_zero_scan);
  export_fn(env, exports, "readNoWait", vdisk_read_nowait);
  export_fn(env, exports, "ofdLock", vdisk_ofd_lock);
  export_fn(env, exports, "ofdTest", vdisk_ofd_test);
  export_fn(env, exports, "seek", vdisk_seek);
  export_fn(env, exports, "punchHole", vdisk_punch_hole);
  export_fn(env, exports, "sendReply", vdisk_send_reply);
  export_fn(env, exports, "filesCached", vdisk_files_cached);
  export_fn(env, exports, "setSendBuffer", vdisk_set_send_buffer);
  return exports;
}
