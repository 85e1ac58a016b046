#!/usr/bin/env bash
# The quick start: installs build dependencies, builds dsnap, makes a demo
# disk image with a file system full of files, snapshots it into a store
# under ./demo/, changes the image, restores the snapshot and shows that it
# is the image as it was. Cleans up the demo files when done (the store
# stays in ./demo/store so you can look at it; remove it with rm -rf demo).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*"; }

say "Installing build dependencies (if any are missing)"
scripts/deps.sh
say "Building dsnap"
scripts/build.sh -DDSNAP_TESTS=OFF -DDSNAP_BENCH=OFF
DSNAP=$PWD/build/cli/dsnap

export DSNAP_STORE=$PWD/demo/store
work=$(mktemp -d /tmp/dsnap-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [ ! -e "$DSNAP_STORE/store.db" ]; then
	say "Creating a store in $DSNAP_STORE"
	mkdir -p demo
	"$DSNAP" store init
fi

say "Making a 256 MiB demo disk image with an ext4 file system and real files"
mkdir -p "$work/files"
cp -r /usr/share/doc "$work/files/doc" 2>/dev/null || true
truncate -s 256M "$work/disk.img"
/sbin/mkfs.ext4 -q -F -d "$work/files" -L demo "$work/disk.img"
sha_before=$(sha256sum <"$work/disk.img" | cut -d' ' -f1)
echo "disk.img: $(du -h --apparent-size "$work/disk.img" | cut -f1) with $(find "$work/files" -type f | wc -l) files, sha256 ${sha_before:0:16}…"

say "Taking a snapshot"
snap=$("$DSNAP" store snapshot "$work/disk.img")
echo "snapshot id: $snap"
"$DSNAP" store stats

say "Changing the disk (overwriting its first 8 MiB with random bytes)"
dd if=/dev/urandom of="$work/disk.img" bs=1M count=8 conv=notrunc status=none
echo "disk.img sha256 is now $(sha256sum <"$work/disk.img" | cut -c1-16)…"

say "Restoring the snapshot into a new image"
"$DSNAP" store restore "$snap" "$work/restored.img"
sha_restored=$(sha256sum <"$work/restored.img" | cut -d' ' -f1)
if [ "$sha_restored" = "$sha_before" ]; then
	echo "restored.img is bit for bit the disk as it was when the snapshot was taken."
else
	echo "restored.img differs from the snapshot: this is a bug" >&2
	exit 1
fi
/sbin/e2fsck -fn "$work/restored.img" >/dev/null 2>&1 && echo "its file system checks clean (e2fsck -n)."

say "Verifying every chunk in the store"
"$DSNAP" store verify
echo
echo "Done. The store is in $DSNAP_STORE; 'build/cli/dsnap --help' lists the commands."
