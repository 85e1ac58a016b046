#!/usr/bin/env bash
# Configures and builds into BUILD_DIR (default build/). Extra arguments go
# to cmake, e.g. -DDSNAP_SANITIZE=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BUILD_DIR:-build}
cmake -S . -B "$dir" -DDSNAP_WERROR=ON "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
