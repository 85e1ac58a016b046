file(REMOVE_RECURSE
  "libdsnap_static.a"
  "libdsnap_static.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/dsnap_static.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
