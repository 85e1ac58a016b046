file(REMOVE_RECURSE
  "libdsnap_static.a"
)
