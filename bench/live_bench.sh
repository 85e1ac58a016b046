#!/usr/bin/env bash
# Live disks, measured with fio (io_uring, O_DIRECT, QD32) on a 4 GiB image:
#
#  attach: 4 KiB randwrite, randread, 70/30 randrw and 1 MiB sequential
#    write on a raw loop device over a copy of the image and on the image
#    attached through dsnapd, on each FUSE transport, one after the other
#    in each run (so that the VM's drift touches both alike): IOPS, and the
#    median of the runs' attached/raw.
#  impact: on the attached disk, each workload (the three 4 KiB ones and
#    1 MiB sequential write) runs BEFORE_S seconds with no snapshot, then
#    again while a snapshot is being created (from its request to its
#    end): IOPS and p99 latency during / before, the copy's duration and
#    the overlay's peak. The last workload, ext4, is 70/30 randrw on a
#    2 GiB file of an ext4 made on the attached disk.
#    IMPACT_JOBS picks workloads (default "randwrite randread randrw
#    seqwrite ext4").
#
#   sudo bench/live_bench.sh [attach|impact|all] [BUILD_DIR]
#
# Medians of RUNS (default 3). Root (loop devices, FUSE). Without a build
# folder it builds a Release tree in build-bench/. Everything it makes lives
# under one folder in /var/tmp, removed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
. "$here/lib.sh"
what=${1:-all}
build=${2:-}
RUNS=${RUNS:-3}
SIZE_MB=${SIZE_MB:-4096}
RUNTIME=${RUNTIME:-20}   # attach: seconds per fio run
BEFORE_S=${BEFORE_S:-15} # impact: seconds without a snapshot
TRANSPORTS=${TRANSPORTS:-"on off"}
IMPACT_JOBS=${IMPACT_JOBS:-"randwrite randread randrw seqwrite ext4"}

[ "$(id -u)" = 0 ] || { echo "live_bench: needs root"; exit 77; }
command -v fio >/dev/null || { echo "live_bench: needs fio"; exit 77; }
if [ -z "$build" ]; then
	bench_build "$src" dsnap-cli dsnapd
	build=$src/build-bench
fi
DSNAP=$build/cli/dsnap
DSNAPD=$build/daemon/dsnapd

tmp=$(mktemp -d /var/tmp/dsnap-livebench.XXXXXX)
img=$tmp/disk.img
sock=$tmp/dsnapd.sock
pid= raw= disk=
cleanup() {
	[ -n "$raw" ] && losetup -d "$raw" 2>/dev/null
	mountpoint -q "$tmp/fs" && umount "$tmp/fs"
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	umount -l "$tmp"/state/mnt/* 2>/dev/null || true
	rm -rf "$tmp"
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

ds() { "$DSNAP" --socket "$sock" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

start_daemon() { # transport; sets dev
	printf 'fuse_uring = %s\n' "$1" >"$tmp/dsnapd.conf"
	"$DSNAPD" --socket "$sock" --state "$tmp/state" --config "$tmp/dsnapd.conf" 2>>"$tmp/dsnapd.log" &
	pid=$!
	for _ in $(seq 100); do
		ds describe-disks >/dev/null 2>&1 && break
		sleep 0.1
	done
	[ -n "$disk" ] || disk=$(ds --quiet register-disk --path "$img")
	dev=$(ds --output json call AttachDisk DiskId="$disk" | json 'd["Device"]')
	# dsnapd writes the overlay log in advance (overlay_prewrite: the
	# disk's size up to 4 GiB) at idle priority: measure once it is done
	local want=$((SIZE_MB < 4096 ? SIZE_MB : 4096)) have=0
	for _ in $(seq 1200); do
		have=$(du -m "$tmp/state/overlay/$disk" 2>/dev/null | cut -f1)
		[ "${have:-0}" -ge "$want" ] && break
		sleep 0.5
	done
}
stop_daemon() {
	ds call DetachDisk DiskId="$disk" >/dev/null
	kill "$pid" && wait "$pid" 2>/dev/null || true
	pid=
}

# fio JOB DEVICE SECONDS [extra…] -> "iops p99_us"
fio_run() {
	local job=$1 dev=$2 secs=$3 rw bs=4k
	shift 3
	case $job in
	randwrite | randread) rw=$job ;;
	randrw) rw="randrw --rwmixread=70" ;;
	seqwrite) rw=write bs=1M ;;
	esac
	# shellcheck disable=SC2086
	fio --name=b --filename="$dev" --ioengine=io_uring --direct=1 --iodepth=32 --bs=$bs \
		--rw=$rw --time_based --runtime="$secs" --randrepeat=0 --norandommap \
		--output-format=json "$@" 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):])["jobs"][0]
iops = j["read"]["iops"] + j["write"]["iops"]
p99 = max(j[d]["clat_ns"].get("percentile", {}).get("99.000000", 0) for d in ("read", "write"))
print("%.0f %.0f" % (iops, p99 / 1000))'
}

machine_info "$tmp" "$src"
echo "fio:     $(fio --version), QD32, O_DIRECT, io_uring; medians of $RUNS"

# The image is written full first: no holes, so every read touches the
# disk. With O_DIRECT: pages of it in the page cache would cost the raw
# loop device (which drops them on its writes) and not dsnapd (which drops
# them all when it attaches), as they would not for an image written long ago.
dd if=/dev/urandom of="$img" bs=1M count="$SIZE_MB" status=none oflag=direct

if [ "$what" = attach ] || [ "$what" = all ]; then
	echo
	echo "== attach: attached / raw loop device, ${RUNTIME}s per run"
	printf '%-10s %-10s %10s %10s %8s   %s\n' workload transport "raw IOPS" "attached" ratio "per run"
	dd if="$img" of="$tmp/raw.img" bs=1M iflag=direct oflag=direct status=none
	raw=$(losetup --find --show --direct-io=on "$tmp/raw.img")
	for t in $TRANSPORTS; do
		start_daemon "$t"
		tname=$(ds --output json describe-disks --disk-ids "$disk" | json 'd["Disks"]["Disk"][0]["Transport"]')
		for job in randwrite randread randrw seqwrite; do
			: >"$tmp/rows"
			for _ in $(seq "$RUNS"); do
				r=$(fio_run $job "$raw" "$RUNTIME" | cut -d' ' -f1)
				a=$(fio_run $job "$dev" "$RUNTIME" | cut -d' ' -f1)
				echo "$r $a $(ratio "$a" "$r")" >>"$tmp/rows"
			done
			col() { awk -v c="$1" '{ print $c }' "$tmp/rows" | median; }
			printf '%-10s %-10s %10s %10s %8s   %s\n' "$job" "$tname" "$(col 1)" "$(col 2)" "$(col 3)" \
				"$(awk '{ printf "%s ", $3 }' "$tmp/rows")"
		done
		stop_daemon
	done
	losetup -d "$raw"
	raw=
fi

if [ "$what" = impact ] || [ "$what" = all ]; then
	echo
	echo "== impact: IOPS and p99 while a snapshot is being created / before (same disk, same run)"
	printf '%-10s %-10s %9s %9s %6s %8s %8s %6s %8s %9s\n' workload transport "IOPS bef" "IOPS dur" ratio \
		"p99 bef" "p99 dur" ratio "copy s" "overlay"
	for t in $TRANSPORTS; do
		start_daemon "$t"
		tname=$(ds --output json describe-disks --disk-ids "$disk" | json 'd["Disks"]["Disk"][0]["Transport"]')
		for job in $IMPACT_JOBS; do
			: >"$tmp/rows"
			target=$dev fjob=$job extra=()
			if [ "$job" = ext4 ]; then
				# a file system on the attached disk, a file laid out once
				mkfs.ext4 -q -F "$dev"
				mkdir -p "$tmp/fs"
				mount "$dev" "$tmp/fs"
				target=$tmp/fs/fio.dat fjob=randrw extra=(--size=2g)
				fio --name=layout --filename="$target" --size=2g --rw=write --bs=1M \
					--direct=1 >/dev/null
			fi
			for _ in $(seq "$RUNS"); do
				read -r ib pb < <(fio_run $fjob "$target" "$BEFORE_S" "${extra[@]}")
				t0=$(date +%s.%N)
				snap=$(ds --quiet create-snapshot --disk-id "$disk")
				# fio until the copy ends (its runtime is a ceiling).
				fio_run $fjob "$target" 600 "${extra[@]}" >"$tmp/during" &
				fpid=$!
				while bench_copying "$tmp/dsnapd.log" "$snap"; do sleep 0.5; done
				t1=$(date +%s.%N)
				pkill -INT -f "fio --name=b --filename=$target" 2>/dev/null || true
				wait $fpid || true
				read -r id pd <"$tmp/during"
				# the merge runs on; the next round waits for it
				for _ in $(seq 600); do
					grep -q "snapshot $snap of $disk: overlay peak" "$tmp/dsnapd.log" && break
					sleep 0.2
				done
				peak=$(sed -n "s/.*snapshot $snap of $disk: overlay peak \([0-9]*\) KiB.*/\1/p" "$tmp/dsnapd.log")
				# gone, it leaves no base for an incremental: every round is a full copy
				ds delete-snapshot --snapshot-id "$snap" >/dev/null
				echo "$ib $id $(ratio "$id" "$ib") $pb $pd $(ratio "$pd" "$pb")" \
					"$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') $((${peak:-0} / 1024))" >>"$tmp/rows"
			done
			col() { awk -v c="$1" '{ print $c }' "$tmp/rows" | median; }
			# medians of each column; the ratios are medians of per-run ratios
			printf '%-10s %-10s %9s %9s %6s %8s %8s %6s %8s %9s\n' "$job" "$tname" "$(col 1)" \
				"$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)" "$(col 7)" "$(col 8) MiB"
			if [ "$job" = ext4 ]; then
				umount "$tmp/fs"
			fi
		done
		stop_daemon
	done
fi
