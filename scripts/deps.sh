#!/usr/bin/env bash
# Installs what dsnap needs to build, test and benchmark on Debian 12.
# Runs apt-get only when something is missing; uses sudo when not root.
set -euo pipefail

PACKAGES=(
	build-essential cmake pkg-config
	liblz4-dev libxxhash-dev libsqlite3-dev   # engine: chunks, store
	liburing-dev libblkid-dev                 # engine: copier, disks
	libjson-c-dev libmicrohttpd-dev           # API, dsnapd, dsnap
	libcmocka-dev                             # unit tests
	e2fsprogs xfsprogs util-linux sqlite3     # integration tests: mkfs, fsck, losetup, index queries
	dpkg-dev debhelper pandoc man-db bash-completion   # packaging: .deb, man pages, completion
	btrfs-progs                               # integration tests: reflinked images, read errors
	clang libclang-rt-14-dev                   # tests/fuzz: libFuzzer, ASan, UBSan (DSNAP_FUZZ)
	python3 curl                              # API tests (tests/api): dsnapd over its socket
	fio                                       # live-disk tests (verify) and benchmarks
)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "installing: ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
