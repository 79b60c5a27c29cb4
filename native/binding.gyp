{
  "targets": [
    {
      "target_name": "vdisk_native",
      "sources": ["addon.c", "copy.c", "read.c", "lock.c", "seek.c", "punch.c", "send.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "cflags_c": ["-std=gnu11"]
    }
  ]
}
