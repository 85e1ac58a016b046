#!/usr/bin/env bash
# An ext4 image full of real files: snapshot, change, snapshot again, restore
# both bit-exact; the second snapshot stores only what changed; a damaged
# pack is found by verify and refused by restore.
. "$(dirname "$0")/lib.sh"
need mkfs.ext4
need e2fsck
need debugfs
need sqlite3

"$DSNAP" --quiet store init

make_tree "$SCRATCH/tree"
truncate -s 512M "$SCRATCH/disk.img"
mkfs.ext4 -q -F -d "$SCRATCH/tree" "$SCRATCH/disk.img"
cp --sparse=always "$SCRATCH/disk.img" "$SCRATCH/before.img"

snap1=$("$DSNAP" --quiet store snapshot "$SCRATCH/disk.img")
[[ $snap1 =~ ^[0-9a-f]{32}$ ]] || fail "snapshot id '$snap1'"
size1=$(stored_bytes)
echo "first snapshot $snap1 stored $size1 bytes"

# Change a little: replace one file's contents inside the image.
head -c 1M /dev/urandom >"$SCRATCH/new.bin"
debugfs -w -R "rm /random.bin" "$SCRATCH/disk.img" >/dev/null 2>&1
debugfs -w -R "write $SCRATCH/new.bin /random.bin" "$SCRATCH/disk.img" >/dev/null 2>&1
cmp -s "$SCRATCH/disk.img" "$SCRATCH/before.img" && fail "image did not change"

snap2=$("$DSNAP" --quiet store snapshot "$SCRATCH/disk.img")
size2=$(stored_bytes)
growth=$((size2 - size1))
echo "second snapshot $snap2 grew the store by $growth bytes"
# 1 MiB of new random data plus metadata and manifest pieces; far less than a copy.
[ "$growth" -lt $((4 * 1024 * 1024)) ] || fail "second snapshot stored $growth bytes"

"$DSNAP" --quiet store restore "$snap1" "$SCRATCH/r1.img"
cmp "$SCRATCH/r1.img" "$SCRATCH/before.img" || fail "restore of snapshot 1 differs"
e2fsck -fn "$SCRATCH/r1.img" >/dev/null || fail "fsck of restored image"
"$DSNAP" --quiet store restore "$snap2" "$SCRATCH/r2.img"
cmp "$SCRATCH/r2.img" "$SCRATCH/disk.img" || fail "restore of snapshot 2 differs"
# Zero chunks come back as holes.
[ "$(du -k "$SCRATCH/r1.img" | cut -f1)" -lt $((512 * 1024)) ] || fail "restore is not sparse"

# A restore never overwrites an existing file.
if "$DSNAP" --quiet store restore "$snap1" "$SCRATCH/r1.img" 2>/dev/null; then
	fail "restore overwrote an existing file"
fi

"$DSNAP" store verify | grep -q '^0 bad chunks$' || fail "verify of a clean store"

# GC keeping snapshot 2 only: snapshot 2 still restores, 1 does not.
"$DSNAP" --quiet store gc --keep "$snap2" >/dev/null
"$DSNAP" --quiet store restore "$snap2" "$SCRATCH/r3.img"
cmp "$SCRATCH/r3.img" "$SCRATCH/disk.img" || fail "restore after gc differs"
"$DSNAP" store verify >/dev/null || fail "verify after gc"

# Damage: flip one byte in the middle of the payload of the biggest live record.
read -r pack off len < <(sqlite3 -separator ' ' "$DSNAP_STORE/store.db" \
	"SELECT printf('%08x', pack), off, len FROM chunks ORDER BY len DESC LIMIT 1")
printf '\xa5' | dd of="$DSNAP_STORE/packs/$pack.pack" bs=1 seek=$((off + len / 2)) conv=notrunc status=none
set +e
"$DSNAP" store verify >"$SCRATCH/verify.out" 2>/dev/null
rc=$?
set -e
[ "$rc" = 3 ] || fail "verify exit $rc after damage"
grep -q '^bad chunk [0-9a-f]\{32\}: Bad message$' "$SCRATCH/verify.out" || fail "verify did not name the chunk"
if "$DSNAP" --quiet store restore "$snap2" "$SCRATCH/r4.img" 2>"$SCRATCH/restore.err"; then
	fail "restore of a damaged snapshot succeeded"
fi
grep -q "chunk [0-9a-f]\{32\}" "$SCRATCH/restore.err" || fail "restore error does not name the chunk"
[ ! -e "$SCRATCH/r4.img" ] || fail "failed restore left its output behind"
echo "ok"
