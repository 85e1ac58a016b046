#!/usr/bin/env bash
# A registered loop device with ext4, then XFS, full of real files: refused
# while mounted; snapshot when not; change the disk; the export is the disk
# as it was, byte for byte, fsck-clean, with the same files; reset-disk
# (refused while mounted) writes it back onto the device.
. "$(dirname "$0")/lib.sh"
need_root
need losetup
need mkfs.ext4
need e2fsck
need mkfs.xfs
need xfs_repair
[ -e /dev/loop-control ] || skip "no loop devices"

use_state
make_tree "$SCRATCH/tree"

fsck_clean() { # FS IMAGE-OR-DEVICE
	case $1 in
	ext4) e2fsck -fn "$2" >"$SCRATCH/fsck.out" 2>&1 ;;
	xfs) xfs_repair -n "$2" >"$SCRATCH/fsck.out" 2>&1 ;;
	esac || fail "$1 fsck of $2: $(tail -5 "$SCRATCH/fsck.out")"
}

# Changes files on the mounted disk: removes a folder, rewrites a file,
# adds one.
change_files() {
	rm -rf "$1/include/linux"
	head -c 3M /dev/urandom >"$1/random.bin"
	head -c 5M /dev/urandom >"$1/added.bin"
}

one_fs() {
	local fs=$1 dev rdev disk snap mnt=$SCRATCH/mnt-$1 rmnt=$SCRATCH/rmnt-$1
	local img=$SCRATCH/$fs.img before=$SCRATCH/$fs-before.img out=$SCRATCH/$fs-export.img
	local ro_opts=ro

	echo "== $fs"
	truncate -s 512M "$img"
	loop_attach dev "$img"
	case $fs in
	ext4) mkfs.ext4 -q -F "$dev" ;;
	xfs) mkfs.xfs -q -f "$dev"; ro_opts=ro,norecovery,nouuid ;;
	esac
	mount_on_exit "$dev" "$mnt"
	cp -r "$SCRATCH/tree/." "$mnt/"
	tree_sums "$mnt" >"$SCRATCH/$fs.sums"
	[ "$(wc -l <"$SCRATCH/$fs.sums")" -gt 1000 ] || fail "too few files on the $fs disk"

	disk=$(ds register-disk --path "$dev")
	[[ $disk =~ ^d-[a-z0-9]{20}$ ]] || fail "disk id '$disk'"

	# Mounted: no snapshot, nothing recorded.
	expect_exit 1 ds create-snapshot --disk-id "$disk"
	expect_err "IncorrectDiskStatus"
	[ -z "$(disk_snapshots "$disk")" ] || fail "a refused snapshot was recorded"
	umount "$mnt"

	snap=$(ds --quiet create-snapshot --disk-id "$disk" --snapshot-name "$fs")
	[[ $snap =~ ^s-[a-z0-9]{20}$ ]] || fail "snapshot id '$snap'"
	[ "$(snap_status "$snap")" = accomplished ] || fail "snapshot status $(snap_status "$snap")"
	cp --sparse=always "$img" "$before"
	cmp -s "$before" "$dev" || fail "the copy of the backing file differs from the device"

	mount "$dev" "$mnt"
	change_files "$mnt"
	umount "$mnt"
	cmp -s "$before" "$dev" && fail "the $fs disk did not change"

	ds export-snapshot --snapshot-id "$snap" --path "$out"
	cmp "$out" "$before" || fail "the $fs export differs from the disk at snapshot time"
	fsck_clean "$fs" "$out"
	loop_attach rdev "$out" --read-only
	mount_on_exit -o "$ro_opts" "$rdev" "$rmnt"
	tree_sums "$rmnt" | diff -q - "$SCRATCH/$fs.sums" >/dev/null || fail "$fs export: file checksums differ"
	umount "$rmnt"
	losetup -d "$rdev"

	# Mounted: no reset, the disk untouched.
	mount "$dev" "$mnt"
	expect_exit 1 ds reset-disk --disk-id "$disk" --snapshot-id "$snap"
	expect_err "IncorrectDiskStatus"
	[ -e "$mnt/added.bin" ] || fail "a refused reset changed the mounted disk"
	umount "$mnt"

	ds reset-disk --disk-id "$disk" --snapshot-id "$snap"
	cmp "$dev" "$before" || fail "the $fs device after reset-disk differs from the snapshot"
	fsck_clean "$fs" "$dev"
	mount "$dev" "$mnt"
	tree_sums "$mnt" | diff -q - "$SCRATCH/$fs.sums" >/dev/null || fail "$fs after reset: file checksums differ"
	umount "$mnt"
	ds describe-disks --disk-ids "$disk" | grep -q " Available " || fail "disk not Available after reset"
	[ "$(disk_present "$disk")" = true ] || fail "the disk is not found after reset"
	rm -f "$before" "$out"
}

for fs in ext4 xfs; do
	one_fs "$fs"
done
echo "ok"
