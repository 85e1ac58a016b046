#!/bin/sh
# Runs api_bench: dsnapd's CreateSnapshot and DescribeSnapshots latency
# with 64 concurrent clients, median of 3 runs (bench/api_bench.c says how).
#
#   bench/run-api-bench.sh [API_BENCH_BINARY] [-- EXTRA api_bench ARGS]
#
# Without a binary path it configures and builds a Release tree in
# build-api-bench/ next to this folder (dsnapd and api_bench; api_bench
# finds dsnapd at ../daemon/dsnapd from itself, or pass -- --dsnapd PATH).
# Each run's daemon, state and images live in one
# temporary folder under $TMPDIR (default /tmp), removed on exit.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")

bin=
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
	bin=$1
	shift
fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift

if [ -z "$bin" ]; then
	build=$src/build-api-bench
	cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDSNAP_TESTS=OFF >/dev/null
	make -C "$build" -j"$(nproc)" api_bench dsnapd >/dev/null 2>&1 ||
		make -C "$build" api_bench dsnapd
	bin=$build/bench/api_bench
fi
[ -x "$bin" ] || { echo "run-api-bench: $bin is not executable" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dsnap-api-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM HUP

echo "== machine"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "host:    $(uname -srm)"
echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "nproc:   $(nproc)"
echo "memory:  $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg)"
echo "fs:      $(df -PT "$tmp" | awk 'NR == 2 { print $1 " " $2 }') (state and images under $tmp)"
echo "binary:  $bin"
echo "git:     $(git -C "$src" describe --always --dirty 2>/dev/null || echo unknown)"
echo
echo "== $bin --workdir $tmp --clients 64 --creates 16 --describes 50 --runs 3 $*"
"$bin" --workdir "$tmp" --clients 64 --creates 16 --describes 50 --runs 3 "$@"
