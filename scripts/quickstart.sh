#!/usr/bin/env bash
# The quick start: installs build dependencies, builds dsnap, starts dsnapd
# on a state folder of its own, creates a demo disk with a file system full
# of files, snapshots it, lists the snapshot, changes the disk, resets it
# from the snapshot and shows it is bit for bit what it was. It stops the
# daemon and removes everything it made when done (or interrupted).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*"; }

say "Installing build dependencies (if any are missing)"
scripts/deps.sh
say "Building dsnap"
scripts/build.sh -DDSNAP_TESTS=OFF -DDSNAP_BENCH=OFF
bin=$PWD/build

demo=$(mktemp -d /tmp/dsnap-demo.XXXXXX)
daemon=
cleanup() {
	if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
		kill "$daemon"
		wait "$daemon" 2>/dev/null || true
	fi
	rm -rf "$demo"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export DSNAP_SOCKET=$demo/dsnapd.sock
dsnap() { "$bin/cli/dsnap" "$@"; }

say "Starting dsnapd (state in $demo/state, socket $DSNAP_SOCKET)"
"$bin/daemon/dsnapd" --state "$demo/state" --socket "$DSNAP_SOCKET" 2>"$demo/dsnapd.log" &
daemon=$!
for _ in $(seq 50); do
	[ -S "$DSNAP_SOCKET" ] && break
	sleep 0.1
done
[ -S "$DSNAP_SOCKET" ] || { cat "$demo/dsnapd.log"; exit 1; }
echo "dsnapd is running as pid $daemon"

say "Creating a 1 GiB demo disk and putting an ext4 file system with real files on it"
disk=$(dsnap create-disk --size 1 --disk-name demo)
img=$(dsnap --output json describe-disks --disk-ids "$disk" | sed -n 's/.*"SourcePath":"\([^"]*\)".*/\1/p')
mkdir -p "$demo/files"
cp -r /usr/share/doc "$demo/files/doc" 2>/dev/null || true
/sbin/mkfs.ext4 -q -F -d "$demo/files" -L demo "$img"
before=$(sha256sum <"$img" | cut -d' ' -f1)
echo "disk $disk is the image $img, $(find "$demo/files" -type f | wc -l) files, sha256 ${before:0:16}…"

say "Taking a snapshot (the request returns at once; --wait follows the copy)"
snap=$(dsnap create-snapshot --disk-id "$disk" --snapshot-name first-look --tag purpose=demo --wait)
echo "snapshot $snap"

say "Listing snapshots"
dsnap describe-snapshots
dsnap describe-snapshots-usage

say "Changing the disk: overwriting its first 8 MiB with random bytes"
dd if=/dev/urandom of="$img" bs=1M count=8 conv=notrunc status=none
echo "its sha256 is now $(sha256sum <"$img" | cut -c1-16)…; the file system is broken"

say "Resetting the disk from the snapshot"
dsnap reset-disk --disk-id "$disk" --snapshot-id "$snap"
after=$(sha256sum <"$img" | cut -d' ' -f1)
if [ "$after" = "$before" ]; then
	echo "the disk is bit for bit what it was when the snapshot was taken (sha256 ${after:0:16}…)"
else
	echo "the disk differs from the snapshot: this is a bug" >&2
	exit 1
fi
/sbin/e2fsck -fn "$img" >/dev/null 2>&1 && echo "and its file system checks clean (e2fsck -n)"

say "Checking every chunk of the snapshot"
dsnap verify-snapshot --snapshot-id "$snap"

say "Done"
echo "dsnapd is stopped and $demo removed. To keep a daemon, run build/daemon/dsnapd"
echo "(man page: doc/man/dsnapd.8.md) and use build/cli/dsnap --help."
