#!/usr/bin/env bash
# kill -9 of dsnapd during a snapshot of an attached disk under random
# writes, at a random moment of the copy or of the merge behind it, on both
# FUSE transports. Each round: a snapshot taken with no writes (the earlier
# snapshot) and the disk's content then; a writer (crash_writer.py) doing
# random 4 KiB O_DIRECT writes, logging each before and after; CreateSnapshot;
# a random 0.3-9 s; kill -9; the writer stops at its first I/O error; dsnapd
# starts again and must clean up the dead FUSE mount and loop device and
# attach the disk again. Then:
#  a. every write the writer completed is on the new device, none reverted,
#     nothing else changed (the write in flight at the kill may have landed);
#  b. the interrupted snapshot is failed, or accomplished when the kill came
#     after its copy (then it must be the disk after some prefix of the writes);
#  c. the earlier snapshot still exports bit for bit;
#  d. the next snapshot is a full copy (a crash leaves no trusted
#     changed-block bitmap), accomplishes, and exports the disk as it is. It
#     is the earlier snapshot of the next round.
# LIVE_CRASH_ROUNDS sets the rounds per transport (default 2), LIVE_CRASH_DELAY
# the seconds from CreateSnapshot to the kill (default random, 0.3-9);
# LIVE_CRASH_KEEP=DIR keeps the logs and images of a failed check there.
. "$(dirname "$0")/lib.sh"
need_root
need python3

need curl
[ -e /dev/fuse ] && [ -e /dev/loop-control ] || skip "no FUSE or loop devices"
on_exit daemon_stop
SIZE_MB=256
ROUNDS=${LIVE_CRASH_ROUNDS:-2}
WRITER=$(realpath "$(dirname "$0")/crash_writer.py")
LOG=$SCRATCH/dsnapd.log

snap_field() { # snapshot, field
	dsd --output json describe-snapshots --snapshot-ids "$1" | json "d['Snapshots']['Snapshot'][0]['$2']"
}
# Waits for a snapshot to end; prints its status.
wait_snap() {
	local st
	for _ in $(seq 600); do
		st=$(snap_field "$1" Status)
		[ "$st" = progressing ] || break
		sleep 0.2
	done
	echo "$st"
}
wait_accomplished() {
	local st
	st=$(wait_snap "$1")
	[ "$st" = accomplished ] || fail "snapshot $1 ended '$st': $(tail -5 "$LOG")"
}
export_snap() { # snapshot, file
	rm -f "$2"
	dsd export-snapshot --snapshot-id "$1" --path "$2" >/dev/null || fail "export of $1"
}
read_dev() { dd if="$1" of="$2" bs=1M iflag=direct status=none || fail "cannot read $1"; }
# Running, not a zombie.
alive() {
	local st
	st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
	[ -n "$st" ] && [ "$st" != Z ]
}
# On a failure: with LIVE_CRASH_KEEP=DIR, what it is judged on is kept there
# (the scratch folder goes).
keep_fail() {
	if [ -n "${LIVE_CRASH_KEEP:-}" ]; then
		mkdir -p "$LIVE_CRASH_KEEP"
		cp -a "$SCRATCH"/*.log "$SCRATCH"/*.img "$LIVE_CRASH_KEEP"/ 2>/dev/null || true
		echo "kept in $LIVE_CRASH_KEEP: the dsnapd and writer logs, the images" >&2
	fi
	fail "$@"
}
# Loop devices served by the disk's FUSE mount (a dead one's included).
disk_loops() {
	local f
	for f in /sys/block/loop*/loop/backing_file; do
		[ -e "$f" ] || continue
		[ "$(sed 's/ (deleted)$//' "$f")" = "$SCRATCH/state/mnt/$disk/disk" ] && basename "${f%/loop/backing_file}"
	done
	return 0
}

for transport in on off; do
	echo "== fuse_uring = $transport"
	# Copies at 32 MiB/s, busy or not: about 8 s for the disk, so the
	# kills below fall into the copy or into the merge after it.
	printf 'fuse_uring = %s\ncopy_max_rate = 32\ncopy_busy_rate = 32\n' "$transport" \
		>"$SCRATCH/dsnapd.conf"
	rm -rf "$SCRATCH/state" "$SCRATCH"/*.img
	daemon_start
	head -c ${SIZE_MB}M /dev/urandom >"$SCRATCH/disk.img"
	attach_new disk dev "$SCRATCH/disk.img"

	# The earlier snapshot of the first round; its content is kept to the end.
	earlier=$(dsd --quiet create-snapshot --disk-id "$disk")
	wait_accomplished "$earlier"
	read_dev "$dev" "$SCRATCH/before.img"
	first=$earlier
	cp "$SCRATCH/before.img" "$SCRATCH/first.img"

	for round in $(seq "$ROUNDS"); do
		seed=$RANDOM
		delay=${LIVE_CRASH_DELAY:-$(printf '%d.%02d' $(((seed % 871 + 30) / 100)) $(((seed % 871 + 30) % 100)))}
		echo "-- round $round: kill -9 ${delay} s into a snapshot under random writes (seed $seed)"
		wlog=$SCRATCH/writes.log
		rm -f "$wlog"
		python3 "$WRITER" write "$dev" "$wlog" "$seed" &
		writer=$!
		on_exit "stop_job $writer"
		for _ in $(seq 200); do
			n=$(grep -c '^d' "$wlog" 2>/dev/null || true)
			[ "${n:-0}" -ge 100 ] && break
			alive "$writer" || fail "the writer died: $(cat "$wlog")"
			sleep 0.05
		done
		snap=$(dsd --quiet create-snapshot --disk-id "$disk")
		sleep "$delay"
		at=$(dsd --output json describe-snapshots --snapshot-ids "$snap" |
			json 'd["Snapshots"]["Snapshot"][0]["Status"] + " " + str(d["Snapshots"]["Snapshot"][0]["Progress"])')
		daemon_kill9
		echo "   killed with the snapshot $at"

		# The writer stops at its first failed write.
		for _ in $(seq 150); do alive "$writer" || break; sleep 0.1; done
		if alive "$writer"; then
			stop_job "$writer"
			fail "the writer still ran 15 s after the kill: its writes did not fail ($(tail -2 "$wlog"))"
		fi
		wait "$writer" || fail "the writer failed: $(tail -3 "$wlog")"
		tail -1 "$wlog" | grep -q '^e ' || fail "the writer stopped without an I/O error: $(tail -2 "$wlog")"

		logged=$(wc -l <"$LOG")
		daemon_start
		dev=$(dsd --output json describe-disks --disk-ids "$disk" | json 'd["Disks"]["Disk"][0]["Device"]')
		[[ $dev == /dev/loop* ]] || fail "not attached again after the restart: '$dev'"
		on_exit "loop_detach $dev $SCRATCH/state/mnt/$disk/disk"
		tail -n +$((logged + 1)) "$LOG" | { grep -E 'stale|crash|interrupted|trusted' || true; } |
			sed 's/^/   /'
		[ "$(grep -c " $SCRATCH/state/mnt/$disk fuse" /proc/mounts)" = 1 ] ||
			fail "FUSE mounts of the disk after the restart: $(grep "$SCRATCH/state/mnt/$disk" /proc/mounts)"
		[ "$(disk_loops)" = "${dev#/dev/}" ] || fail "loop devices on the disk: $(disk_loops | xargs), serving $dev"

		echo "   a. the writes on the new device $dev"
		read_dev "$dev" "$SCRATCH/after.img"
		python3 "$WRITER" check "$SCRATCH/after.img" "$wlog" "$SCRATCH/before.img" ||
			keep_fail "writes lost or reverted by the crash (seed $seed, kill after $delay s)"

		st=$(snap_field "$snap" Status)
		echo "   b. the interrupted snapshot is $st"
		case $st in
		failed) ;;
		accomplished)
			export_snap "$snap" "$SCRATCH/export.img"
			python3 "$WRITER" pit "$SCRATCH/export.img" "$wlog" "$SCRATCH/before.img" ||
				keep_fail "the snapshot accomplished before the kill is no point in time"
			;;
		*) fail "the interrupted snapshot is '$st'" ;;
		esac

		echo "   c. the earlier snapshot $earlier"
		export_snap "$earlier" "$SCRATCH/export.img"
		cmp -s "$SCRATCH/export.img" "$SCRATCH/before.img" || keep_fail "the earlier snapshot changed"

		echo "   d. the next snapshot"
		next=$(dsd --quiet create-snapshot --disk-id "$disk")
		wait_accomplished "$next"
		line=$(grep "snapshot $next of $disk accomplished" "$LOG")
		[[ $line == *"full copy"* ]] || fail "not a full copy after a crash: $line"
		read_dev "$dev" "$SCRATCH/before.img"
		export_snap "$next" "$SCRATCH/export.img"
		cmp -s "$SCRATCH/export.img" "$SCRATCH/before.img" || keep_fail "the next snapshot is not the disk"
		earlier=$next
	done

	echo "-- the first snapshot after $ROUNDS crashes"
	export_snap "$first" "$SCRATCH/export.img"
	cmp -s "$SCRATCH/export.img" "$SCRATCH/first.img" || fail "the first snapshot changed"
	dsd call DetachDisk DiskId="$disk" >/dev/null
	cmp -s "$SCRATCH/disk.img" "$SCRATCH/before.img" || fail "the image is not what the disk held"
	daemon_stop
	[ -z "$(disk_loops)" ] || fail "loop devices left: $(disk_loops | xargs)"
	! grep -q "$SCRATCH/state/mnt/$disk" /proc/mounts || fail "FUSE mount left"
done
echo ok
