#!/usr/bin/env bash
# AttachDisk through dsnapd on both FUSE transports: a file system made and
# filled on the attached device lands in the disk's image; DetachDisk is
# refused while the device is mounted; a kill -9 of dsnapd is followed by
# a restart that cleans up the dead mount and loop device and attaches the
# disk again. (Snapshots of attached disks: live_snapshot.sh.)
. "$(dirname "$0")/lib.sh"
need_root
need mkfs.ext4
need curl
[ -e /dev/fuse ] && [ -e /dev/loop-control ] || skip "no FUSE or loop devices"
on_exit daemon_stop
ds() { dsd "$@"; }

for transport in on off; do
	echo "== fuse_uring = $transport"
	printf 'fuse_uring = %s\n' "$transport" >"$SCRATCH/dsnapd.conf"
	rm -rf "$SCRATCH/state"
	daemon_start
	truncate -s 512M "$SCRATCH/disk.img"
	attach_new disk dev "$SCRATCH/disk.img"
	info=$(ds --output json describe-disks --disk-ids "$disk")
	[ "$(echo "$info" | json 'd["Disks"]["Disk"][0]["Status"]')" = In_use ] || fail "not In_use"
	[ "$(echo "$info" | json 'd["Disks"]["Disk"][0]["Device"]')" = "$dev" ] || fail "Device"
	want=$([ "$transport" = on ] && echo io_uring || echo /dev/fuse)
	got=$(echo "$info" | json 'd["Disks"]["Disk"][0]["Transport"]')
	[ "$transport" = off ] || [ "$got" = "$want" ] || echo "note: kernel offered $got"
	[ "$transport" = on ] || [ "$got" = /dev/fuse ] || fail "transport $got with fuse_uring=off"

	mkfs.ext4 -q -F "$dev"
	mkdir -p "$SCRATCH/mnt"
	mount "$dev" "$SCRATCH/mnt"
	cp -r /usr/include "$SCRATCH/mnt/include"
	head -c 20M /dev/urandom >"$SCRATCH/mnt/random.bin"
	sync
	tree_sums "$SCRATCH/mnt" >"$SCRATCH/sums"
	ds call DetachDisk DiskId="$disk" 2>"$SCRATCH/err" && fail "detached while mounted"
	grep -q IncorrectDiskStatus.InUse "$SCRATCH/err" || fail "unclear refusal: $(cat "$SCRATCH/err")"

	# kill -9 with the file system unmounted: the restart re-attaches.
	umount "$SCRATCH/mnt"
	daemon_kill9
	daemon_start
	dev2=$(ds --output json describe-disks --disk-ids "$disk" | json 'd["Disks"]["Disk"][0]["Device"]')
	[[ $dev2 == /dev/loop* ]] || fail "not attached again after a restart: '$dev2'"
	on_exit "loop_detach $dev2 $SCRATCH/state/mnt/$disk/disk"
	grep -q " $SCRATCH/state/mnt/$disk fuse.dsnap " /proc/mounts || fail "no FUSE mount"
	[ "$(grep -c "$SCRATCH/state/mnt/$disk" /proc/mounts)" = 1 ] || fail "stale mounts left"
	mount "$dev2" "$SCRATCH/mnt"
	tree_sums "$SCRATCH/mnt" | diff -q - "$SCRATCH/sums" >/dev/null || fail "files changed"
	umount "$SCRATCH/mnt"
	ds call DetachDisk DiskId="$disk" >/dev/null
	[ "$(ds --output json describe-disks --disk-ids "$disk" | json 'd["Disks"]["Disk"][0]["Status"]')" = Available ] ||
		fail "not Available after DetachDisk"
	grep -q "$SCRATCH/state/mnt/$disk" /proc/mounts && fail "FUSE mount left after detach"
	# The image holds the file system: fsck it directly.
	e2fsck -fn "$SCRATCH/disk.img" >/dev/null 2>&1 || fail "fsck of the image"
	daemon_stop
	rm -f "$SCRATCH/disk.img"
done
echo ok
