#!/bin/sh
# Runs store_bench on realistic data: a tar of /usr/lib cut to 512 MiB,
# with 1 thread and with 2 threads (or nproc when it is larger than 2).
#
#   bench/run-store-bench.sh [STORE_BENCH_BINARY] [-- EXTRA store_bench ARGS]
#
# Without a binary path it configures and builds a Release tree in
# build-bench/ next to this folder. The input and the stores live in one
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
	build=$src/build-bench
	# Tests off: the bench needs only the engine, and a test being edited
	# must not stop it from building.
	cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDSNAP_TESTS=OFF >/dev/null
	make -C "$build" -j"$(nproc)" store_bench >/dev/null
	bin=$build/bench/store_bench
fi
[ -x "$bin" ] || { echo "run-store-bench: $bin is not executable" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dsnap-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM HUP

echo "== machine"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "host:    $(uname -srm)"
echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "nproc:   $(nproc)"
echo "memory:  $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "fs:      $(df -PT "$tmp" | awk 'NR == 2 { print $1 " " $2 }') (stores under $tmp)"
echo "binary:  $bin"
echo "git:     $(git -C "$src" describe --always --dirty 2>/dev/null || echo unknown)"

echo
echo "== input"
# The head closes the pipe early; tar's SIGPIPE is expected.
(tar -cf - /usr/lib 2>/dev/null || true) | head -c 512M >"$tmp/usr-lib.tar"
echo "tar -cf - /usr/lib | head -c 512M: $(stat -c %s "$tmp/usr-lib.tar") bytes"

threads="1 2"
if [ "$(nproc)" -gt 2 ]; then
	threads="1 2 $(nproc)"
fi
# put: durable per call (ds_store_put); --add: ds_store_add per batch and
# one flush at the end, the way the copier stores a disk.
for mode in "" --add; do
	for t in $threads; do
		echo
		echo "== $bin --threads $t $mode --store $tmp $* $tmp/usr-lib.tar"
		"$bin" --threads "$t" $mode --store "$tmp" "$@" "$tmp/usr-lib.tar"
	done
done
