
# Consider dependencies only in project.
set(CMAKE_DEPENDS_IN_PROJECT_ONLY OFF)

# The set of languages for which implicit dependencies are needed:
set(CMAKE_DEPENDS_LANGUAGES
  )

# The set of dependency files which are needed:
set(CMAKE_DEPENDS_DEPENDENCY_FILES
  "/work/main/engine/chunk/chunk.c" "engine/CMakeFiles/dsnap_objs.dir/chunk/chunk.c.o" "gcc" "engine/CMakeFiles/dsnap_objs.dir/chunk/chunk.c.o.d"
  "/work/main/engine/store/gc.c" "engine/CMakeFiles/dsnap_objs.dir/store/gc.c.o" "gcc" "engine/CMakeFiles/dsnap_objs.dir/store/gc.c.o.d"
  "/work/main/engine/store/index.c" "engine/CMakeFiles/dsnap_objs.dir/store/index.c.o" "gcc" "engine/CMakeFiles/dsnap_objs.dir/store/index.c.o.d"
  "/work/main/engine/store/pack.c" "engine/CMakeFiles/dsnap_objs.dir/store/pack.c.o" "gcc" "engine/CMakeFiles/dsnap_objs.dir/store/pack.c.o.d"
  "/work/main/engine/store/store.c" "engine/CMakeFiles/dsnap_objs.dir/store/store.c.o" "gcc" "engine/CMakeFiles/dsnap_objs.dir/store/store.c.o.d"
  "/work/main/engine/util/fsutil.c" "engine/CMakeFiles/dsnap_objs.dir/util/fsutil.c.o" "gcc" "engine/CMakeFiles/dsnap_objs.dir/util/fsutil.c.o.d"
  "/work/main/engine/util/log.c" "engine/CMakeFiles/dsnap_objs.dir/util/log.c.o" "gcc" "engine/CMakeFiles/dsnap_objs.dir/util/log.c.o.d"
  )

# Targets to which this target links.
set(CMAKE_TARGET_LINKED_INFO_FILES
  )

# Fortran module output directory.
set(CMAKE_Fortran_TARGET_MODULE_DIR "")
