#!/usr/bin/env bash
# Snapshots of an attached disk while it is written, on both FUSE
# transports (the copy-on-write tracker, engine/cow/):
#  1. the disk holds pattern A; right after CreateSnapshot returns, the
#     whole disk is overwritten with pattern B while the copy runs: the
#     snapshot is exactly A, the disk exactly B;
#  2. random 4 KiB writes (fio, verified) race the copier: the snapshot is
#     exactly the disk before them, fio verifies what it wrote;
#  3. several snapshots in a row, each with writes during its copy;
#  4. ext4 under a file-writing workload: the snapshot's file system is
#     clean once its journal is replayed and holds exactly the files
#     synced before the request;
#  5. the next snapshot after a small change is incremental: it reads
#     about what changed and still exports the whole disk bit for bit;
#  6. instant access: the snapshot of a mounted ext4 is attached read-only
#     and mounted while its copy runs and the disk is written; its files
#     are those of the point in time.
. "$(dirname "$0")/lib.sh"
need_root
need mkfs.ext4
need fio
need curl
[ -e /dev/fuse ] && [ -e /dev/loop-control ] || skip "no FUSE or loop devices"
on_exit daemon_stop
SIZE_MB=128

# Waits for a snapshot to end; fails unless accomplished.
wait_snap() {
	local st
	for _ in $(seq 600); do
		st=$(dsd --output json describe-snapshots --snapshot-ids "$1" |
			json 'd["Snapshots"]["Snapshot"][0]["Status"]')
		[ "$st" = progressing ] || break
		sleep 0.2
	done
	[ "$st" = accomplished ] || fail "snapshot $1 ended '$st': $(tail -5 "$SCRATCH/dsnapd.log")"
}
still_copying() {
	dsd --output json describe-snapshots --snapshot-ids "$1" |
		json 'd["Snapshots"]["Snapshot"][0]["Status"] == "progressing"'
}
export_cmp() { # snapshot, expected image
	rm -f "$SCRATCH/export.img"
	dsd export-snapshot --snapshot-id "$1" --path "$SCRATCH/export.img" >/dev/null
	cmp "$SCRATCH/export.img" "$2" || fail "${3:-snapshot $1} is not the disk at its point in time"
}
read_dev() { dd if="$1" of="$2" bs=1M iflag=direct status=none; }
write_dev() { dd if="$2" of="$1" bs=1M oflag=direct conv=fsync,notrunc status=none "${@:3}"; }

head -c ${SIZE_MB}M /dev/urandom >"$SCRATCH/A"
head -c ${SIZE_MB}M /dev/urandom >"$SCRATCH/B"

for transport in on off; do
	echo "== fuse_uring = $transport"
	# Copies at 32 MiB/s, busy or not: 4 s for the disk, so the writes
	# below race them.
	printf 'fuse_uring = %s\ncopy_max_rate = 32\ncopy_busy_rate = 32\n' "$transport" \
		>"$SCRATCH/dsnapd.conf"
	rm -rf "$SCRATCH/state" "$SCRATCH/disk.img"
	daemon_start
	truncate -s ${SIZE_MB}M "$SCRATCH/disk.img"
	attach_new disk dev "$SCRATCH/disk.img"

	echo "-- 1. pattern A, snapshot, overwrite with B during the copy"
	write_dev "$dev" "$SCRATCH/A"
	snap=$(dsd --quiet create-snapshot --disk-id "$disk")
	write_dev "$dev" "$SCRATCH/B"
	[ "$(still_copying "$snap")" = True ] || fail "the copy ended before the overwrite did"
	wait_snap "$snap"
	export_cmp "$snap" "$SCRATCH/A" "the snapshot (pattern A)"
	read_dev "$dev" "$SCRATCH/now"
	cmp "$SCRATCH/now" "$SCRATCH/B" || fail "the disk is not pattern B"
	grep -q "snapshot $snap of $disk accomplished: full copy" "$SCRATCH/dsnapd.log" ||
		fail "the first snapshot was not a full copy"

	echo "-- 2. random 4 KiB writes racing the copier, verified by fio"
	snap=$(dsd --quiet create-snapshot --disk-id "$disk")
	fio --name=race --filename="$dev" --rw=randwrite --bs=4k --direct=1 --ioengine=io_uring \
		--iodepth=32 --size=${SIZE_MB}M --io_size=48M --verify=crc32c --verify_fatal=1 \
		--randrepeat=0 --verify_state_save=0 --output="$SCRATCH/fio.out" || fail "fio: $(cat "$SCRATCH/fio.out")"
	wait_snap "$snap"
	export_cmp "$snap" "$SCRATCH/B" "the snapshot under random writes"

	echo "-- 3. three snapshots in a row, each written during its copy"
	snaps=()
	for i in 1 2 3; do
		read_dev "$dev" "$SCRATCH/expect$i"
		snaps+=("$(dsd --quiet create-snapshot --disk-id "$disk")")
		head -c 16M /dev/urandom >"$SCRATCH/piece"
		write_dev "$dev" "$SCRATCH/piece" seek=$((RANDOM % (SIZE_MB - 16)))
		wait_snap "${snaps[-1]}"
	done
	for i in 1 2 3; do export_cmp "${snaps[i - 1]}" "$SCRATCH/expect$i" "snapshot $i of 3"; done

	echo "-- 4. ext4 with files being written"
	mkfs.ext4 -q -F "$dev"
	mount_on_exit "$dev" "$SCRATCH/mnt"
	cp -r /usr/include/linux "$SCRATCH/mnt/before"
	sync
	tree_sums "$SCRATCH/mnt" >"$SCRATCH/sums"
	(n=0; while :; do cp -r /usr/include/linux "$SCRATCH/mnt/during$n" 2>/dev/null || true
		n=$((n + 1)); done) &
	writer=$!
	on_exit "stop_job $writer"
	sleep 1
	snap=$(dsd --quiet create-snapshot --disk-id "$disk")
	wait_snap "$snap"
	stop_job $writer
	dsd export-snapshot --snapshot-id "$snap" --path "$SCRATCH/fs.img" >/dev/null
	loop_attach fsdev "$SCRATCH/fs.img"
	mount_on_exit "$fsdev" "$SCRATCH/fsmnt" # replays the journal
	umount "$SCRATCH/fsmnt"
	e2fsck -fn "$fsdev" >"$SCRATCH/fsck" 2>&1 || fail "fsck of the snapshot: $(cat "$SCRATCH/fsck")"
	mount -o ro "$fsdev" "$SCRATCH/fsmnt"
	(cd "$SCRATCH/fsmnt" && sha256sum --quiet -c "$SCRATCH/sums") ||
		fail "files synced before the snapshot differ in it"
	umount "$SCRATCH/fsmnt"
	losetup -d "$fsdev"
	umount "$SCRATCH/mnt"
	rm -f "$SCRATCH/fs.img"

	echo "-- 5. an incremental after a small change"
	snap=$(dsd --quiet create-snapshot --disk-id "$disk")
	wait_snap "$snap"
	head -c 2M /dev/urandom >"$SCRATCH/piece"
	write_dev "$dev" "$SCRATCH/piece" seek=100
	read_dev "$dev" "$SCRATCH/expect"
	snap=$(dsd --quiet create-snapshot --disk-id "$disk")
	wait_snap "$snap"
	line=$(grep "snapshot $snap of $disk accomplished" "$SCRATCH/dsnapd.log")
	echo "   $line"
	[[ $line == *"incremental copy"* ]] || fail "not incremental: $line"
	read=$(echo "$line" | sed -n 's/.*, \([0-9]*\) bytes read.*/\1/p')
	# 2 MiB changed; the audit rereads one unchanged chunk in 512.
	[ "$read" -le $((4 << 20)) ] || fail "the incremental read $read bytes for a 2 MiB change"
	export_cmp "$snap" "$SCRATCH/expect" "the incremental snapshot"

	dsd call DetachDisk DiskId="$disk" >/dev/null
	cmp "$SCRATCH/disk.img" "$SCRATCH/expect" || fail "the image is not what the disk held"

	echo "-- 6. a snapshot mounted read-only while it is copied"
	dsd call AttachDisk DiskId="$disk" >/dev/null
	dev=$(dsd --output json describe-disks --disk-ids "$disk" | json 'd["Disks"]["Disk"][0]["Device"]')
	write_dev "$dev" "$SCRATCH/A" # every chunk changed: the copy reads the whole disk (4 s)
	mkfs.ext4 -q -F -E nodiscard "$dev" # discards would make holes: nothing to read
	mount_on_exit "$dev" "$SCRATCH/mnt"
	cp -r /usr/include/linux "$SCRATCH/mnt/before"
	sync
	fsfreeze -f "$SCRATCH/mnt" && fsfreeze -u "$SCRATCH/mnt" # the journal checkpointed
	tree_sums "$SCRATCH/mnt" >"$SCRATCH/sums"
	snap=$(dsd --quiet create-snapshot --disk-id "$disk")
	sdev=$(dsd --output json call AttachSnapshot SnapshotId="$snap" | json 'd["Device"]')
	on_exit "dsd call DetachSnapshot SnapshotId=$snap"
	# ro,noload: a snapshot of a mounted ext4 is crash-consistent; its
	# device is read-only, so the journal is not replayed.
	mount_on_exit -o ro,noload "$sdev" "$SCRATCH/smnt"
	[ "$(still_copying "$snap")" = True ] || fail "the copy ended before the snapshot was mounted"
	rm -rf "$SCRATCH/mnt/before" # the disk moves on while the snapshot is read
	cp -r /usr/include/linux "$SCRATCH/mnt/after"
	(cd "$SCRATCH/smnt" && sha256sum --quiet -c "$SCRATCH/sums") ||
		fail "the snapshot mounted during its copy does not hold the files"
	[ ! -e "$SCRATCH/smnt/after" ] || fail "the snapshot shows a file written after it"
	copying=$(still_copying "$snap")
	umount "$SCRATCH/smnt"
	expect_exit 1 "$DSNAP" --socket "$SCRATCH/dsnapd.sock" delete-snapshot --snapshot-id "$snap"
	dsd call DetachSnapshot SnapshotId="$snap" >/dev/null
	echo "   files read while the copy ran (still copying at the end: $copying)"
	wait_snap "$snap"
	# Accomplished, it attaches from the store alone.
	sdev=$(dsd --output json call AttachSnapshot SnapshotId="$snap" | json 'd["Device"]')
	mount -o ro,noload "$sdev" "$SCRATCH/smnt"
	(cd "$SCRATCH/smnt" && sha256sum --quiet -c "$SCRATCH/sums") ||
		fail "the accomplished snapshot, attached, does not hold the files"
	umount "$SCRATCH/smnt"
	dsd call DetachSnapshot SnapshotId="$snap" >/dev/null
	umount "$SCRATCH/mnt"
	daemon_stop
done
echo ok
