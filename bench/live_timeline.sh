#!/usr/bin/env bash
# What a snapshot costs a live disk's users, second by second.
#
#   sudo bench/live_timeline.sh [BUILD_DIR]
#
# Each run starts a fresh dsnapd (fresh state and store), attaches an image
# of random bytes, waits for the overlay log written in advance, then runs
# fio (io_uring, O_DIRECT, QD32, 4 KiB JOB) on the attached disk with a
# per-second IOPS log and creates a snapshot at t = 15 s. It prints, per
# run: the ratio of mean IOPS from t = 16 s to the copy's end to mean IOPS
# from t = 3 to 15 s (same fio run), both means, the copy's duration, the
# device's cache flushes during the copy (/sys/block/DEV/stat, DEV holding
# the image), then, with fio still running, how long the merge of the
# redirected blocks took after the copy and the ratio of mean IOPS during
# it to before, the overlay's peak, and the per-second IOPS in thousands.
# The copy is a full one each time (a fresh store).
#
# Settings (environment): RUNS (3), SIZE_MB (2048), JOB (randwrite |
# randread | randrw: 70/30), CONF (extra dsnapd.conf lines, e.g.
# "copy_busy_rate = 16"), TRANSPORT (on | off: fuse_uring), NEXT (1: a
# second snapshot is requested as soon as the copy has ended, and the
# time its request took, waiting for the merge, is printed), MERGE (0: fio
# stops when the copy has ended; the merge is not measured). Root (loop
# devices, FUSE); exits 77 without root or fio. Everything it makes lives
# under one folder in /var/tmp, removed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
. "$here/lib.sh"
build=${1:-}
RUNS=${RUNS:-3}
SIZE_MB=${SIZE_MB:-2048}
JOB=${JOB:-randwrite}
CONF=${CONF:-}
TRANSPORT=${TRANSPORT:-on}
MERGE=${MERGE:-1}

[ "$(id -u)" = 0 ] || { echo "live_timeline: needs root"; exit 77; }
command -v fio >/dev/null || { echo "live_timeline: needs fio"; exit 77; }
case $JOB in
randwrite | randread) rw=$JOB ;;
randrw) rw="randrw --rwmixread=70" ;;
*) echo "live_timeline: JOB is randwrite, randread or randrw" >&2; exit 2 ;;
esac
if [ -z "$build" ]; then
	bench_build "$src" dsnap-cli dsnapd
	build=$src/build-bench
fi
DSNAP=$build/cli/dsnap
DSNAPD=$build/daemon/dsnapd

tmp=$(mktemp -d /var/tmp/dsnap-timeline.XXXXXX)
img=$tmp/disk.img
pid='' fpid='' disk='' run=''
cleanup() {
	[ -n "$fpid" ] && kill -INT "$fpid" 2>/dev/null && wait "$fpid" 2>/dev/null
	if [ -n "$pid" ]; then
		[ -n "$disk" ] && "$DSNAP" --socket "$run/sock" call DetachDisk DiskId="$disk" >/dev/null 2>&1
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	fi
	umount -l "$tmp"/run*/state/mnt/* 2>/dev/null || true
	rm -rf "$tmp"
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# The block device under the image's file system, for its flush count.
dev=$(lsblk -no PKNAME "$(df -P "$tmp" | awk 'NR == 2 { print $1 }')" 2>/dev/null | head -n 1)
[ -n "$dev" ] || dev=$(basename "$(df -P "$tmp" | awk 'NR == 2 { print $1 }')")
flushes() { awk '{ print $16 }' "/sys/block/$dev/stat" 2>/dev/null || echo 0; }

machine_info "$tmp" "$src"
echo "fio:     $(fio --version), 4 KiB $JOB, QD32, O_DIRECT, io_uring; ${SIZE_MB} MiB image; transport $TRANSPORT"
[ -n "$CONF" ] && echo "conf:    $CONF"
dd if=/dev/urandom of="$img" bs=1M count="$SIZE_MB" status=none
printf '%-4s %6s %9s %9s %7s %8s %8s %7s %8s  %s\n' run ratio "IOPS bef" "IOPS dur" "copy s" \
	flushes "merge s" "ratio m" "peak MiB" "IOPS per second (thousands)"
for r in $(seq "$RUNS"); do
	run=$tmp/run$r
	mkdir -p "$run"
	printf 'fuse_uring = %s\n%s\n' "$TRANSPORT" "$CONF" >"$run/dsnapd.conf"
	"$DSNAPD" --socket "$run/sock" --state "$run/state" --config "$run/dsnapd.conf" 2>>"$run/log" &
	pid=$!
	for _ in $(seq 100); do
		"$DSNAP" --socket "$run/sock" describe-disks >/dev/null 2>&1 && break
		sleep 0.1
	done
	ds() { "$DSNAP" --socket "$run/sock" "$@"; }
	disk=$(ds --quiet register-disk --path "$img")
	target=$(ds --output json call AttachDisk DiskId="$disk" | json 'd["Device"]')
	want=$((SIZE_MB < 4096 ? SIZE_MB : 4096))
	for _ in $(seq 1200); do
		[ "$(du -m "$run/state/overlay/$disk" 2>/dev/null | cut -f1)" -ge "$want" ] 2>/dev/null && break
		sleep 0.5
	done
	# shellcheck disable=SC2086
	fio --name=timeline --filename="$target" --ioengine=io_uring --direct=1 --iodepth=32 \
		--bs=4k --rw=$rw --time_based --runtime=3600 --randrepeat=0 --norandommap \
		--write_iops_log="$run/iops" --log_avg_msec=1000 >/dev/null 2>&1 &
	fpid=$!
	sleep 15
	f0=$(flushes)
	t0=$(date +%s.%N)
	snap=$(ds --quiet create-snapshot --disk-id "$disk")
	while bench_copying "$run/log" "$snap"; do sleep 0.5; done
	t1=$(date +%s.%N)
	f1=$(flushes)
	if [ "${NEXT:-0}" = 1 ]; then
		ds --quiet create-snapshot --disk-id "$disk" >/dev/null 2>"$run/next.err" &&
			echo "run $r: the next snapshot's request took $(awk -v a="$t1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" ||
			echo "run $r: the next snapshot was refused: $(cat "$run/next.err")"
	fi
	# The merge runs on after the copy, under the same load; dsnapd logs
	# the overlay's peak when it has ended.
	for _ in $(seq 1200); do
		[ "$MERGE" = 0 ] && break
		grep -q 'merged back' "$run/log" && break
		sleep 0.5
	done
	t2=$(date +%s.%N)
	kill -INT "$fpid"
	wait "$fpid" || true
	fpid=
	copy=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')
	merge=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.0f", b - a }')
	peak=$(sed -n 's/.*overlay peak \([0-9]*\) KiB.*/\1/p' "$run/log" | tail -n 1)
	# fio's log: msec, IOPS, direction, ...; read and write of one second add up.
	cat "$run"/iops*.log | awk -F, -v end=$((15 + copy)) -v mend=$((15 + copy + merge)) \
		-v run="$r" -v copy="$copy" -v merge="$merge" -v fl=$((f1 - f0)) -v peak="${peak:-0}" '
		{ t = int($1 / 1000); s[t] += $2; if (t > last) last = t }
		END {
			for (t = 3; t < 15; t++) if (t in s) { b += s[t]; nb++ }
			for (t = 16; t < end; t++) if (t in s) { d += s[t]; nd++ }
			for (t = end + 1; t < mend; t++) if (t in s) { m += s[t]; nm++ }
			line = ""
			for (t = 1; t <= last; t++) line = line sprintf("%d%s", s[t] / 1000, t == 15 || t == end ? " | " : " ")
			if (nb == 0 || nd == 0) { printf "%-4s no IOPS logged\n", run; exit }
			printf "%-4s %6.2f %9d %9d %7d %8d %8d %7s %8d  %s\n", run, (d / nd) / (b / nb), b / nb,
				d / nd, copy, fl, merge, nm ? sprintf("%.2f", (m / nm) / (b / nb)) : "-",
				peak / 1024, line
		}'
	ds call DetachDisk DiskId="$disk" >/dev/null 2>&1 || true
	kill "$pid" && wait "$pid" 2>/dev/null || true
	pid='' disk=''
	rm -rf "$run"
done
