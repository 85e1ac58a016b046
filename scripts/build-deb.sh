#!/usr/bin/env bash
# Builds the Debian packages (dsnap, libdsnap-dev) from this tree with
# dpkg-buildpackage, in a scratch copy so the tree stays clean.
#   scripts/build-deb.sh [OUTDIR]      (default: build-deb/)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$src/build-deb}
work=$(mktemp -d /tmp/dsnap-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$out" "$work/dsnap-0.1.0"
# The source files only (tracked or new, not ignored): no build folders, no state.
git -C "$src" ls-files -z --cached --others --exclude-standard | (cd "$src" && xargs -0 tar -cf -) | tar -xf - -C "$work/dsnap-0.1.0"
cp -r "$work/dsnap-0.1.0/packaging/debian" "$work/dsnap-0.1.0/debian"
(cd "$work/dsnap-0.1.0" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
	tail -n 40 "$work/build.log" >&2
	exit 1
}
cp "$work"/*.deb "$out"/
ls "$out"/*.deb
