#!/usr/bin/env bash
# An ext4 image full of files: snapshot, change about 1%, snapshot again.
# The second snapshot adds about what changed to the store, not a copy;
# both export bit-exact. Deleting the first and collecting garbage frees
# what only it used and leaves the second whole.
. "$(dirname "$0")/lib.sh"
need_root
need losetup
need mkfs.ext4
need e2fsck
need sqlite3
[ -e /dev/loop-control ] || skip "no loop devices"

use_state
make_tree "$SCRATCH/tree"
img=$SCRATCH/disk.img
truncate -s 512M "$img"
mkfs.ext4 -q -F -d "$SCRATCH/tree" "$img"

# What the store's index says it holds: record bytes of every chunk.
index_bytes() { sqlite3 "$DSNAP_STATE/store/store.db" "SELECT CAST(total(len) AS INTEGER) FROM chunks"; }

disk=$(ds register-disk --path "$img")
snap1=$(ds --quiet create-snapshot --disk-id "$disk" --snapshot-name first)
cp --sparse=always "$img" "$SCRATCH/before1.img"
size1=$(stored_bytes)
idx1=$(index_bytes)
used=$(du -B1 "$img" | cut -f1)
echo "first snapshot: $size1 bytes stored for $used bytes of data"
[ "$size1" -gt $((100 << 20)) ] || fail "first snapshot stored only $size1 bytes"

# Change about 1% of the disk through the file system: 4 MiB rewritten in
# place inside a file (so the old data is gone from the disk) and a new 1 MiB
# file.
changed=$((5 << 20))
loop_attach dev "$img"
mount_on_exit "$dev" "$SCRATCH/mnt"
dd if=/dev/urandom of="$SCRATCH/mnt/random.bin" bs=1M seek=8 count=4 conv=notrunc status=none
head -c 1M /dev/urandom >"$SCRATCH/mnt/doc/new.bin"
umount "$SCRATCH/mnt"
losetup -d "$dev"
cmp -s "$img" "$SCRATCH/before1.img" && fail "the image did not change"

snap2=$(ds --quiet create-snapshot --disk-id "$disk" --snapshot-name second)
cp --sparse=always "$img" "$SCRATCH/before2.img"
size2=$(stored_bytes)
idx2=$(index_bytes)
growth=$((size2 - size1))
echo "second snapshot grew the store by $growth bytes (index: $((idx2 - idx1))) for $changed changed"
# New random data does not compress: at least the changed bytes, at most
# them plus journal, bitmaps, inode tables and manifest pieces.
[ "$growth" -ge $((changed * 9 / 10)) ] || fail "second snapshot stored only $growth bytes"
[ "$growth" -lt $((3 * changed + (4 << 20))) ] || fail "second snapshot stored $growth bytes"
[ "$((idx2 - idx1))" = "$growth" ] || fail "store stats and the index disagree: $growth vs $((idx2 - idx1))"
[ "$(snap_status "$snap2")" = accomplished ] || fail "snapshot 2 is $(snap_status "$snap2")"

ds export-snapshot --snapshot-id "$snap1" --path "$SCRATCH/e1.img"
cmp "$SCRATCH/e1.img" "$SCRATCH/before1.img" || fail "export of snapshot 1 differs"
ds export-snapshot --snapshot-id "$snap2" --path "$SCRATCH/e2.img"
cmp "$SCRATCH/e2.img" "$SCRATCH/before2.img" || fail "export of snapshot 2 differs"
e2fsck -fn "$SCRATCH/e2.img" >/dev/null 2>&1 || fail "fsck of export 2"
rm -f "$SCRATCH/e1.img" "$SCRATCH/e2.img"

# Without snapshot 1, what only it used (the old 4 MiB: 64 chunks) is garbage.
ds delete-snapshot --snapshot-id "$snap1"
[ -z "$(snap_status "$snap1")" ] || fail "snapshot 1 still listed"
ds gc >"$SCRATCH/gc.out"
cat "$SCRATCH/gc.out"
removed=$(awk '/^ChunksRemoved:/ {print $2}' "$SCRATCH/gc.out")
[ "${removed:-0}" -ge 60 ] || fail "gc removed ${removed:-0} chunks"
size3=$(stored_bytes)
[ "$size3" -lt "$size2" ] && [ "$size3" -ge $((size1 - (5 << 20))) ] || fail "after gc the store holds $size3 bytes"

ds export-snapshot --snapshot-id "$snap2" --path "$SCRATCH/e3.img"
cmp "$SCRATCH/e3.img" "$SCRATCH/before2.img" || fail "export of snapshot 2 after gc differs"
ds verify-snapshot --snapshot-id "$snap2" >"$SCRATCH/verify.out"
grep -qx "BadChunks: 0" "$SCRATCH/verify.out" || fail "verify-snapshot: $(cat "$SCRATCH/verify.out")"
ds store verify | grep -qx "0 bad chunks" || fail "store verify after gc"
expect_exit 1 ds export-snapshot --snapshot-id "$snap1" --path "$SCRATCH/e4.img"
[ ! -e "$SCRATCH/e4.img" ] || fail "export of a deleted snapshot left a file"
echo "ok"
