{
  "targets": [
    {
      "target_name": "vdisk_native",
      "sources": ["copy.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "cflags_c": ["-std=gnu11"]
    }
  ]
}
