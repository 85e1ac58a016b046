#!/usr/bin/env bash
# Runs every test: unit tests (cmocka), crash tests, and integration tests on
# real images and loop devices (those need root; as another user they are
# reported as skipped). With --sanitize, builds with ASan+UBSan in
# build-asan/ and runs the same tests there.
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/deps.sh"

if [ "${1:-}" = --sanitize ]; then
	export BUILD_DIR=build-asan DSNAP_SANITIZED=1
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	scripts/build.sh -DCMAKE_BUILD_TYPE=Debug -DDSNAP_SANITIZE=ON -DDSNAP_TESTS=ON -DDSNAP_BENCH=OFF
else
	export BUILD_DIR=build
	# Explicit: the quick start configures the same folder without tests.
	scripts/build.sh -DDSNAP_TESTS=ON -DDSNAP_BENCH=ON
fi
ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error -j2 --timeout 900
if [ "${1:-}" != --sanitize ]; then
	echo "== package"
	rc=0
	tests/packaging/test_package.sh || rc=$?
	[ "$rc" = 0 ] || [ "$rc" = 77 ] || exit "$rc"
fi
