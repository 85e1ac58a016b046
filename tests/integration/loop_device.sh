#!/usr/bin/env bash
# A real loop device with XFS: refused while mounted, snapshot when not,
# restore bit-exact; mounted read-only, the restored image has the same files.
. "$(dirname "$0")/lib.sh"
need_root
need losetup
need mkfs.xfs
[ -e /dev/loop-control ] || skip "no loop devices"

"$DSNAP" --quiet store init
make_tree "$SCRATCH/tree"
truncate -s 512M "$SCRATCH/backing.img"
dev=$(losetup --find --show "$SCRATCH/backing.img") || skip "cannot set up a loop device"
on_exit "losetup -d $dev"
mkfs.xfs -q -f "$dev"
mkdir "$SCRATCH/mnt"
mount "$dev" "$SCRATCH/mnt"
on_exit "umount $SCRATCH/mnt"
cp -r "$SCRATCH/tree/." "$SCRATCH/mnt/"
tree_sums "$SCRATCH/mnt" >"$SCRATCH/sums"

if "$DSNAP" --quiet store snapshot "$dev" 2>"$SCRATCH/err"; then
	fail "snapshot of a mounted device was taken"
fi
grep -q "in use" "$SCRATCH/err" || fail "unclear error: $(cat "$SCRATCH/err")"

umount "$SCRATCH/mnt"
snap=$("$DSNAP" --quiet store snapshot "$dev")
"$DSNAP" --quiet store restore "$snap" "$SCRATCH/restored.img"
cmp "$SCRATCH/restored.img" "$dev" || fail "restored image differs from the device"
xfs_repair -n "$SCRATCH/restored.img" >/dev/null 2>&1 || fail "xfs_repair -n on the restored image"

rdev=$(losetup --find --show --read-only "$SCRATCH/restored.img")
on_exit "losetup -d $rdev"
mkdir "$SCRATCH/rmnt"
mount -o ro,norecovery "$rdev" "$SCRATCH/rmnt"
on_exit "umount $SCRATCH/rmnt"
tree_sums "$SCRATCH/rmnt" | diff -q - "$SCRATCH/sums" >/dev/null || fail "file checksums differ"
echo "ok"
