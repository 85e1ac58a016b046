#!/bin/sh
# Builds fuzz_request with clang, libFuzzer, ASan and UBSan in build-fuzz/
# next to this repository's top folder and runs it for SECONDS (default 60)
# on a copy of the seed corpus, with the dictionary.
#
#   tests/fuzz/run-fuzz.sh [SECONDS] [-- EXTRA libFuzzer FLAGS]
#
# Exits non-zero when the target crashed, leaked or failed a check; the
# input that did it is saved as build-fuzz/artifacts/crash-* (or leak-*,
# timeout-*, oom-*), printed at the end. Reproduce with
#   build-fuzz/tests/fuzz/fuzz_request build-fuzz/artifacts/crash-...
# New inputs the fuzzer finds go to build-fuzz/corpus/, which later runs
# reuse; tests/fuzz/corpus/ holds only the hand-written seeds.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$src/build-fuzz

secs=60
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
	secs=$1
	shift
fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift

command -v clang >/dev/null || { echo "run-fuzz: clang is missing (scripts/deps.sh)" >&2; exit 1; }
CC=clang cmake -S "$src" -B "$build" -DDSNAP_FUZZ=ON -DDSNAP_SANITIZE=ON -DDSNAP_BENCH=OFF \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
make -C "$build" -j"$(nproc)" fuzz_request >/dev/null

# The fixture's state folders go here, removed on every exit path (a
# crash leaves its folder behind otherwise).
work=$(mktemp -d "${TMPDIR:-/tmp}/dsnap-fuzz-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM HUP
mkdir -p "$build/corpus" "$build/artifacts"

rc=0
TMPDIR=$work ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:symbolize=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	"$build/tests/fuzz/fuzz_request" -max_total_time="$secs" -max_len=4096 -timeout=10 \
	-rss_limit_mb=4096 -print_final_stats=1 -dict="$here/request.dict" \
	-artifact_prefix="$build/artifacts/" "$@" "$build/corpus" "$here/corpus" || rc=$?

if [ "$rc" -ne 0 ]; then
	echo "run-fuzz: fuzz_request failed (exit $rc); inputs saved:" >&2
	ls -t "$build/artifacts" >&2 || true
fi
exit "$rc"
