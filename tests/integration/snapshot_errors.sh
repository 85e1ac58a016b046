#!/usr/bin/env bash
# Bad input and failures during a copy. Each ends in a clear error; a copy
# that fails after the request was accepted leaves a `failed` snapshot with
# its reason; the store stays intact and earlier snapshots export bit-exact.
#   a. register-disk of a missing path, a character device, a directory
#   b. a registered image removed, a registered loop device detached
#   c. a loop device shrinking under the copy (losetup -c)
#   d. an image with a read lease opened for writing during the copy
#   f. read errors (EIO) from a loop device and from an image file, made
#      with a btrfs data-checksum mismatch (no device-mapper needed)
#   e. a full store (state folder on a small tmpfs), then room again after gc
. "$(dirname "$0")/lib.sh"
need_root
need losetup
need sqlite3
[ -e /dev/loop-control ] || skip "no loop devices"

use_state
# The images dsnap reads with a lease must be on a file system without reflinks.
case $(stat -f -c %T "$SCRATCH") in
btrfs | xfs)
	mount_on_exit -t tmpfs -o size=1600m dsnap-it "$SCRATCH/plain"
	plain=$SCRATCH/plain
	;;
*) plain=$SCRATCH ;;
esac

disks_listed() { ds describe-disks | tail -n +2 | wc -l; }

# create-snapshot in the background; returns once it has printed the
# snapshot id, that is once the point in time is held and the copy runs.
start_snapshot() {
	rm -f "$SCRATCH/bg.out" # not truncated by the job itself: it may not have started yet
	ds --quiet create-snapshot --disk-id "$1" >"$SCRATCH/bg.out" 2>"$SCRATCH/bg.err" &
	bg=$!
	on_exit "stop_job $bg"
	for ((i = 0; i < 400; i++)); do
		[ -s "$SCRATCH/bg.out" ] || kill -0 "$bg" 2>/dev/null || break
		[ -s "$SCRATCH/bg.out" ] && break
		sleep 0.025
	done
	snap=$(head -n 1 "$SCRATCH/bg.out")
	[[ $snap =~ ^s-[a-z0-9]{20}$ ]] || fail "create-snapshot printed no id: $(cat "$SCRATCH/bg.err")"
}

# Waits for it: it must exit 1, with the snapshot failed for the reason
# given. (describe-snapshots has no field for the reason: in this process
# it is the engine's warning on stderr.)
expect_failed_snapshot() {
	local rc=0 err
	wait "$bg" || rc=$?
	[ "$rc" = 1 ] || fail "create-snapshot exited $rc, not 1 ($1)"
	grep -q "snapshot $snap ended failed" "$SCRATCH/bg.err" || fail "unclear end: $(cat "$SCRATCH/bg.err")"
	err=$(sed -n "s/.*snapshot $snap of d-[a-z0-9]* failed: //p" "$SCRATCH/bg.err")
	[[ $err == *$1* ]] || fail "snapshot failed for '$err', wanted '$1'"
	[ "$(snap_status "$snap")" = failed ] || fail "snapshot is $(snap_status "$snap"), not failed"
	echo "  failed as expected: $err"
}

store_intact() {
	ds store verify >"$SCRATCH/verify.out" 2>&1 || fail "store verify: $(tail -3 "$SCRATCH/verify.out")"
	grep -qx "0 bad chunks" "$SCRATCH/verify.out" || fail "store verify: $(cat "$SCRATCH/verify.out")"
}

# A snapshot taken before the failures, checked after each of them.
head -c 24M /dev/urandom >"$plain/keep.img"
truncate -s 40M "$plain/keep.img" # and a hole
keep_disk=$(ds register-disk --path "$plain/keep.img")
keep=$(ds --quiet create-snapshot --disk-id "$keep_disk")
cp --sparse=always "$plain/keep.img" "$SCRATCH/keep-before.img"
keep_exports() {
	rm -f "$SCRATCH/keep-export.img"
	ds export-snapshot --snapshot-id "$keep" --path "$SCRATCH/keep-export.img"
	cmp "$SCRATCH/keep-export.img" "$SCRATCH/keep-before.img" || fail "the earlier snapshot no longer exports bit-exact"
}

echo "== a. paths that are not disks"
expect_exit 1 ds register-disk --path "$SCRATCH/no-such.img"
expect_err "InvalidPath.NotFound"
expect_exit 1 ds register-disk --path /dev/null
expect_err "DiskCategory.OperationNotSupported"
mkdir "$SCRATCH/folder"
expect_exit 1 ds register-disk --path "$SCRATCH/folder"
expect_err "DiskCategory.OperationNotSupported"
[ "$(disks_listed)" = 1 ] || fail "a refused path was registered: $(ds describe-disks)"

echo "== b. disks gone from the host"
# (Both files made first: a file made after the rm could get the removed
# one's inode number; disk_identity.sh is about that.)
head -c 4M /dev/urandom >"$plain/gone.img"
head -c 4M /dev/urandom >"$SCRATCH/detached.img"
gone=$(ds register-disk --path "$plain/gone.img")
rm "$plain/gone.img"
[ "$(disk_present "$gone")" = false ] || fail "a removed image is not listed missing"
expect_exit 1 ds create-snapshot --disk-id "$gone"
expect_err "IncorrectDiskStatus"
loop_attach ldev "$SCRATCH/detached.img"
ldisk=$(ds register-disk --path "$ldev")
losetup -d "$ldev"
[ "$(disk_present "$ldisk")" = false ] || fail "a detached loop device is not listed missing"
expect_exit 1 ds create-snapshot --disk-id "$ldisk"
expect_err "IncorrectDiskStatus"
[ -z "$(disk_snapshots "$gone")$(disk_snapshots "$ldisk")" ] ||
	fail "a snapshot of a missing disk was recorded"
# Forget them (a later file may reuse the removed one's inode number).
ds delete-disk --disk-id "$gone"
ds delete-disk --disk-id "$ldisk"
[ "$(disks_listed)" = 1 ] || fail "deleted disks still listed: $(ds describe-disks)"

# 1 GiB of random data, not in the page cache: a copy of it takes seconds.
big=$plain/big.img
head -c 1G /dev/urandom >"$big"
head -c 200M "$big" >"$SCRATCH/full.img"
dd if="$big" iflag=nocache count=0 status=none

echo "== d. an image opened for writing during the copy"
bdisk=$(ds register-disk --path "$big")
start_snapshot "$bdisk"
t0=$(date +%s%N)
timeout 40 sh -c ': >>"$1"' sh "$big" || fail "could not open the image for writing"
t1=$(date +%s%N)
echo "  the writer's open waited $(((t1 - t0) / 1000000)) ms for the lease"
[ $((t1 - t0)) -lt 10000000000 ] || fail "the writer waited $(((t1 - t0) / 1000000)) ms: the lease was held on"
expect_failed_snapshot "opened for writing during the copy"
ds delete-disk --disk-id "$bdisk"
[ -s "$big" ] || fail "delete-disk removed an image dsnap did not create"
store_intact
keep_exports

echo "== c. a loop device shrinking during the copy"
dd if="$big" iflag=nocache count=0 status=none
loop_attach bdev "$big"
sdisk=$(ds register-disk --path "$bdev")
start_snapshot "$sdisk"
truncate -s 4M "$big"
losetup -c "$bdev"
expect_failed_snapshot "shrank"
store_intact
keep_exports
losetup -d "$bdev"
rm -f "$big"

echo "== f. read errors"
if ! command -v mkfs.btrfs >/dev/null || ! { grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null; }; then
	echo "  SKIPPED: needs btrfs (mkfs.btrfs and the kernel module) to make a read fail"
else
	# A file on btrfs with one block whose data no longer matches its
	# checksum: reading it fails with EIO, and so does reading a loop
	# device over the file.
	truncate -s 512M "$SCRATCH/btrfs.img"
	mkfs.btrfs -q -f -d single -m single "$SCRATCH/btrfs.img" >/dev/null
	loop_attach fdev "$SCRATCH/btrfs.img"
	mount_on_exit "$fdev" "$SCRATCH/btrfs"
	head -c 32M /dev/urandom >"$SCRATCH/btrfs/eio.img"
	marker=dsnap-eio-marker-$RANDOM$RANDOM$RANDOM
	printf '%s' "$marker" | dd of="$SCRATCH/btrfs/eio.img" bs=4096 seek=2000 conv=notrunc status=none
	umount "$SCRATCH/btrfs"
	losetup -d "$fdev"
	at=$(grep -boa "$marker" "$SCRATCH/btrfs.img" | head -n 1 | cut -d: -f1)
	[ -n "$at" ] || fail "marker not found in the btrfs image"
	printf 'X' | dd of="$SCRATCH/btrfs.img" bs=1 seek=$((at + 100)) conv=notrunc status=none
	loop_attach fdev "$SCRATCH/btrfs.img"
	mount_on_exit "$fdev" "$SCRATCH/btrfs"
	if dd if="$SCRATCH/btrfs/eio.img" of=/dev/null bs=1M status=none 2>/dev/null; then
		fail "reading the damaged file did not fail"
	fi

	# A loop device over it.
	loop_attach edev "$SCRATCH/btrfs/eio.img" --read-only
	edisk=$(ds register-disk --path "$edev")
	start_snapshot "$edisk"
	expect_failed_snapshot "read error"
	losetup -d "$edev"

	# The image file itself (copied through a reflink clone). Its identity
	# is the loop device's (the backing file), so that disk goes first.
	ds delete-disk --disk-id "$edisk"
	fdisk=$(ds register-disk --path "$SCRATCH/btrfs/eio.img")
	start_snapshot "$fdisk"
	expect_failed_snapshot "read error"
	store_intact
	keep_exports
fi

# The failed snapshots go, and their chunks with them; the earlier one stays.
for s in $(ds describe-snapshots | awk 'NR > 1 && $3 == "failed" {print $1}'); do
	ds delete-snapshot --snapshot-id "$s"
done
ds gc >/dev/null
[ "$(ds describe-snapshots | tail -n +2 | wc -l)" = 1 ] || fail "snapshots left: $(ds describe-snapshots)"
store_intact
keep_exports
echo "== e. a full store"
mount_on_exit -t tmpfs -o size=64m dsnap-it "$SCRATCH/small"
small=$SCRATCH/small/state
head -c 8M /dev/urandom >"$plain/small.img"
d1=$(ds --state "$small" register-disk --path "$plain/small.img")
s1=$(ds --state "$small" --quiet create-snapshot --disk-id "$d1")
cp "$plain/small.img" "$SCRATCH/small-before.img"
d2=$(ds --state "$small" register-disk --path "$SCRATCH/full.img")
DSNAP_STATE=$small start_snapshot "$d2"
DSNAP_STATE=$small expect_failed_snapshot "full"
free_full=$(df -B1 --output=avail "$SCRATCH/small" | tail -n 1)
DSNAP_STATE=$small store_intact
ds --state "$small" export-snapshot --snapshot-id "$s1" --path "$SCRATCH/small-export.img"
cmp "$SCRATCH/small-export.img" "$SCRATCH/small-before.img" || fail "the first snapshot no longer exports bit-exact"
ds --state "$small" delete-snapshot --snapshot-id "$snap"
ds --state "$small" gc >"$SCRATCH/gc.out" 2>&1 || fail "gc of the full store: $(cat "$SCRATCH/gc.out")"
free_gc=$(df -B1 --output=avail "$SCRATCH/small" | tail -n 1)
echo "  free in the store's file system: $free_full bytes when full, $free_gc after gc"
[ "$free_gc" -gt $((32 << 20)) ] || fail "gc left only $free_gc bytes free"
head -c 16M /dev/urandom >"$plain/small.img"
ds --state "$small" --quiet create-snapshot --disk-id "$d1" >/dev/null || fail "no room after gc"
DSNAP_STATE=$small store_intact
rm -f "$SCRATCH/full.img"

echo "ok"
