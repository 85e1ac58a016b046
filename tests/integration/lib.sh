# Shared by the integration tests: a scratch folder removed on every path,
# and skip (exit 77) when something the test needs is missing.
set -euo pipefail

DSNAP=${DSNAP:?set DSNAP to the dsnap binary}
SCRATCH=$(mktemp -d /tmp/dsnap-it.XXXXXX)
export DSNAP_STORE=$SCRATCH/store
CLEANUP=()

cleanup() {
	local i
	for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
		eval "${CLEANUP[i]}" >/dev/null 2>&1 || true
	done
	rm -rf "$SCRATCH"
}
trap cleanup EXIT

on_exit() { CLEANUP+=("$*"); }

skip() { echo "SKIP: $*"; exit 77; }
need() { command -v "$1" >/dev/null 2>&1 || skip "$1 not installed"; }
need_root() { [ "$(id -u)" = 0 ] || skip "needs root"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# A file tree of real files to put on test file systems.
make_tree() {
	local dst=$1
	mkdir -p "$dst"
	cp -r /usr/share/doc "$dst/doc" 2>/dev/null || true
	cp -r /usr/include "$dst/include" 2>/dev/null || true
	head -c 20M /dev/urandom >"$dst/random.bin"
}

# Checksums of every file below a folder, relative names, sorted.
tree_sums() { (cd "$1" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum); }

stored_bytes() { "$DSNAP" store stats | awk '/^stored bytes/ {print $3}'; }
