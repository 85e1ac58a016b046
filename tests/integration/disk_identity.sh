#!/usr/bin/env bash
# A disk is known by its backing file's device and inode. A file made after
# a registered one was removed often gets the same inode number; it is a
# different disk all the same: the old disk stays missing (no snapshot, no
# reset onto the new file) and the new file can be registered.
. "$(dirname "$0")/lib.sh"
need_root
need losetup
need mkfs.ext4
[ -e /dev/loop-control ] || skip "no loop devices"

use_state
# A small ext4 of the test's own, so the removed file's inode number is
# given to the next file made (ext4 takes the first free one of the group).
truncate -s 64M "$SCRATCH/fs.img"
mkfs.ext4 -q -F "$SCRATCH/fs.img"
loop_attach fsdev "$SCRATCH/fs.img"
fs=$SCRATCH/fs
mount_on_exit "$fsdev" "$fs"

# Removes $1, makes $2 with other random data; 0 when $2 took $1's inode.
replace_file() {
	local ino
	ino=$(stat -c %i "$1")
	rm "$1"
	head -c 8M /dev/urandom >"$2"
	[ "$(stat -c %i "$2")" = "$ino" ]
}

echo "== a loop device"
head -c 8M /dev/urandom >"$fs/c.img"
loop_attach cdev "$fs/c.img"
c=$(ds register-disk --path "$cdev")
csnap=$(ds --quiet create-snapshot --disk-id "$c")
losetup -d "$cdev"
replace_file "$fs/c.img" "$fs/d.img" || skip "the new file did not reuse the inode number"
cp "$fs/d.img" "$SCRATCH/d-before.img"
loop_attach ddev "$fs/d.img"
[ "$(disk_present "$c")" = false ] ||
	fail "the detached disk is taken for another file's loop device: $(ds describe-disks --disk-ids "$c")"
expect_exit 1 ds create-snapshot --disk-id "$c"
expect_err "IncorrectDiskStatus"
expect_exit 1 ds reset-disk --disk-id "$c" --snapshot-id "$csnap"
cmp -s "$ddev" "$SCRATCH/d-before.img" || fail "reset-disk of the detached disk overwrote another file"

echo "== an image file"
head -c 8M /dev/urandom >"$fs/a.img"
a=$(ds register-disk --path "$fs/a.img")
replace_file "$fs/a.img" "$fs/b.img" || skip "the new file did not reuse the inode number"
[ "$(disk_present "$a")" = false ] || fail "the removed image is not listed missing"
# (RegisterDisk of a registered disk answers its id.)
b=$(ds register-disk --path "$fs/b.img" 2>"$SCRATCH/err") || fail "register-disk of the new image: $(cat "$SCRATCH/err")"
[ "$b" != "$a" ] || fail "the new image is taken for the removed one (same id $a)"
rm "$fs/b.img"
ds delete-disk --disk-id "$b"
echo "ok"
