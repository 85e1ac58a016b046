file(REMOVE_RECURSE
  "CMakeFiles/dsnap_objs.dir/chunk/chunk.c.o"
  "CMakeFiles/dsnap_objs.dir/chunk/chunk.c.o.d"
  "CMakeFiles/dsnap_objs.dir/store/gc.c.o"
  "CMakeFiles/dsnap_objs.dir/store/gc.c.o.d"
  "CMakeFiles/dsnap_objs.dir/store/index.c.o"
  "CMakeFiles/dsnap_objs.dir/store/index.c.o.d"
  "CMakeFiles/dsnap_objs.dir/store/pack.c.o"
  "CMakeFiles/dsnap_objs.dir/store/pack.c.o.d"
  "CMakeFiles/dsnap_objs.dir/store/store.c.o"
  "CMakeFiles/dsnap_objs.dir/store/store.c.o.d"
  "CMakeFiles/dsnap_objs.dir/util/fsutil.c.o"
  "CMakeFiles/dsnap_objs.dir/util/fsutil.c.o.d"
  "CMakeFiles/dsnap_objs.dir/util/log.c.o"
  "CMakeFiles/dsnap_objs.dir/util/log.c.o.d"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/dsnap_objs.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
