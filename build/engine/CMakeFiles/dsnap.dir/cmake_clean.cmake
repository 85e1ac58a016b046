file(REMOVE_RECURSE
  "libdsnap.pdb"
  "libdsnap.so"
  "libdsnap.so.0"
  "libdsnap.so.0.1.0"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/dsnap.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
