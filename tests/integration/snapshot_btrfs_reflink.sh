#!/usr/bin/env bash
# An ext4 image on btrfs, attached to a loop device and mounted, written to
# all along: its snapshot is taken through a reflink clone (a lease cannot
# be had while the loop driver has the file open for writing). The export,
# mounted (ext4 replays its journal), has every file synced before the
# snapshot, intact, and is fsck-clean. The same kind of image in use on a
# file system without reflinks is refused, and no snapshot is recorded.
. "$(dirname "$0")/lib.sh"
need_root
need losetup
need mkfs.btrfs
need mkfs.ext4
need e2fsck
need sha256sum
[ -e /dev/loop-control ] || skip "no loop devices"
grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null || true
grep -qw btrfs /proc/filesystems || skip "no btrfs in this kernel"

use_state
make_tree "$SCRATCH/tree"

# The btrfs file system, and the image inside it, in use.
truncate -s 1G "$SCRATCH/btrfs.img"
loop_attach bdev "$SCRATCH/btrfs.img"
mkfs.btrfs -q -f "$bdev" >/dev/null
mount_on_exit "$bdev" "$SCRATCH/btrfs"
img=$SCRATCH/btrfs/disk.img
truncate -s 512M "$img"
mkfs.ext4 -q -F "$img"
loop_attach idev "$img"
mnt=$SCRATCH/inner
mount_on_exit "$idev" "$mnt"
cp -r "$SCRATCH/tree/." "$mnt/"
mkdir "$mnt/written"
sync
(cd "$mnt" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum) >"$SCRATCH/sums"

disk=$(ds register-disk --path "$img")

# A writer that keeps adding files (and syncing now and then) through the
# inner file system, so the image changes before, during and after the clone.
(
	i=0
	while :; do
		head -c 256K /dev/urandom >"$mnt/written/$i.bin"
		i=$((i + 1))
		[ $((i % 16)) != 0 ] || sync -f "$mnt/written"
	done
) &
writer=$!
on_exit "stop_job $writer"
sleep 1

ds --quiet create-snapshot --disk-id "$disk" >"$SCRATCH/snap.out" 2>"$SCRATCH/snap.err" ||
	fail "snapshot of an image in use on btrfs: $(cat "$SCRATCH/snap.err")"
snap=$(cat "$SCRATCH/snap.out")
sleep 1
stop_job "$writer"
n=$(find "$mnt/written" -type f | wc -l)
echo "the writer wrote $n files"
[ "$n" -gt 8 ] || fail "the writer wrote only $n files"
[ "$(snap_status "$snap")" = accomplished ] || fail "snapshot status $(snap_status "$snap")"

# The export: mounted read-write, so ext4 replays its journal as after a crash.
ds export-snapshot --snapshot-id "$snap" --path "$SCRATCH/export.img"
loop_attach edev "$SCRATCH/export.img"
mount_on_exit "$edev" "$SCRATCH/emnt"
(cd "$SCRATCH/emnt" && sha256sum --quiet -c "$SCRATCH/sums") >"$SCRATCH/check.out" 2>&1 ||
	fail "files synced before the snapshot differ in the export: $(head -5 "$SCRATCH/check.out")"
umount "$SCRATCH/emnt"
losetup -d "$edev"
e2fsck -fn "$SCRATCH/export.img" >"$SCRATCH/fsck.out" 2>&1 ||
	fail "fsck of the export: $(tail -5 "$SCRATCH/fsck.out")"

# The same on a file system without reflinks: refused, nothing recorded.
plain=$SCRATCH
case $(stat -f -c %T "$SCRATCH") in
btrfs | xfs)
	mount_on_exit -t tmpfs -o size=64m dsnap-it "$SCRATCH/tmpfs"
	plain=$SCRATCH/tmpfs
	;;
esac
truncate -s 64M "$plain/plain.img"
mkfs.ext4 -q -F "$plain/plain.img"
pdisk=$(ds register-disk --path "$plain/plain.img")
loop_attach pdev "$plain/plain.img"
expect_exit 1 ds create-snapshot --disk-id "$pdisk"
expect_err "IncorrectDiskStatus"
[ -z "$(disk_snapshots "$pdisk")" ] || fail "a refused snapshot was recorded"
losetup -d "$pdev"
ds --quiet create-snapshot --disk-id "$pdisk" >/dev/null || fail "snapshot of the idle image"
echo "ok"
