#!/usr/bin/env bash
# The quick start: installs build dependencies, builds dsnap, starts dsnapd
# on a state folder of its own, creates a demo disk with a file system full
# of files, snapshots it, lists the snapshot, changes the disk, resets it
# from the snapshot and shows it is bit for bit what it was. As root (with
# FUSE and loop devices) it then attaches a second disk, mounts a file
# system on it, snapshots it while files are being written, follows the
# copy's progress, and restores it. It stops the daemon and removes
# everything it made when done (or interrupted).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*"; }

say "Installing build dependencies (if any are missing)"
scripts/deps.sh
say "Building dsnap"
scripts/build.sh -DDSNAP_TESTS=OFF -DDSNAP_BENCH=OFF
bin=$PWD/build

demo=$(mktemp -d /tmp/dsnap-demo.XXXXXX)
daemon= live= writer=
cleanup() {
	set +e
	touch "$demo/stop"
	[ -n "$writer" ] && wait "$writer" 2>/dev/null
	mountpoint -q "$demo/mnt" 2>/dev/null && { umount "$demo/mnt" || umount -l "$demo/mnt"; }
	[ -n "$live" ] && "$bin/cli/dsnap" detach-disk --disk-id "$live" >/dev/null 2>&1
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
"$bin/daemon/dsnapd" --state "$demo/state" --socket "$DSNAP_SOCKET" >"$demo/dsnapd.log" 2>&1 &
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

if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ] && [ -e /dev/loop-control ]; then
	say "Attaching a second disk: dsnapd serves it as a loop device"
	live=$(dsnap create-disk --size 1 --disk-name live-demo)
	dev=$(dsnap --output json attach-disk --disk-id "$live" | sed -n 's/.*"Device":"\([^"]*\)".*/\1/p')
	echo "disk $live is $dev; mkfs, mount and write it like any disk"
	/sbin/mkfs.ext4 -q -F -L live "$dev"
	mkdir -p "$demo/mnt"
	mount "$dev" "$demo/mnt"
	cp -r "$demo/files/doc" "$demo/mnt/before"
	sync
	(cd "$demo/mnt" && find before -type f -print0 | sort -z | xargs -0 sha256sum) >"$demo/sums"
	echo "$(wc -l <"$demo/sums") files written and synced"

	say "Snapshotting it while files are being written"
	(n=0; while [ ! -e "$demo/stop" ]; do cp -r "$demo/files/doc" "$demo/mnt/during$n" || break
		n=$((n + 1)); done) &
	writer=$!
	sleep 1
	snap2=$(dsnap create-snapshot --disk-id "$live" --snapshot-name while-writing)
	echo "snapshot $snap2: the point in time is fixed, the copy runs behind the writes"
	while dsnap describe-snapshots --snapshot-ids "$snap2" | grep -q progressing; do
		dsnap describe-snapshots --snapshot-ids "$snap2" | tail -n 1
		sleep 0.5
	done
	dsnap describe-snapshots --snapshot-ids "$snap2"
	touch "$demo/stop"
	wait "$writer" || true
	writer=
	echo "the writer copied $(find "$demo/mnt" -maxdepth 1 -name 'during*' | wc -l) folders meanwhile"

	say "Restoring the disk from the snapshot"
	umount "$demo/mnt"
	dsnap detach-disk --disk-id "$live" >/dev/null
	live_=$live live=
	dsnap reset-disk --disk-id "$live_" --snapshot-id "$snap2"
	live=$live_
	dev=$(dsnap --output json attach-disk --disk-id "$live" | sed -n 's/.*"Device":"\([^"]*\)".*/\1/p')
	mount "$dev" "$demo/mnt"
	if (cd "$demo/mnt" && sha256sum --quiet -c "$demo/sums"); then
		echo "every file synced before the snapshot is back, bit for bit"
	else
		echo "files synced before the snapshot differ: this is a bug" >&2
		exit 1
	fi
	umount "$demo/mnt"
	dsnap detach-disk --disk-id "$live" >/dev/null
	live=
else
	say "Skipping live disks (attach, snapshot while writing): they need root, FUSE and loop devices"
fi

say "Done"
echo "dsnapd is stopped and $demo removed. To keep a daemon, run build/daemon/dsnapd"
echo "(man page: doc/man/dsnapd.8.md) and use build/cli/dsnap --help."
