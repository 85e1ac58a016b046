#!/usr/bin/env bash
# Full-snapshot and restore throughput of a 4 GiB ext4 image holding about
# 2.9 GiB of real files from /usr, next to this machine's sequential read
# speed of the same image and its LZ4 speed. Median of RUNS (default 3).
#
#   sudo bench/snapshot_bench.sh [DSNAP_BINARY]
#
# Needs root (the image is filled through a loop mount). Without a binary
# it builds a Release tree in build-bench/. Everything it makes lives in
# one folder under /var/tmp, removed on exit. The page cache of the image
# and of the store is dropped before each timed step (dd iflag=nocache on
# those files only), so reads come from the disk, not from memory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
. "$here/lib.sh"
RUNS=${RUNS:-3}
SIZE=${SIZE:-4G}

[ "$(id -u)" = 0 ] || { echo "snapshot_bench: needs root (loop mount)"; exit 77; }
bin=${1:-}
if [ -z "$bin" ]; then
	bench_build "$src" dsnap-cli store_bench
	bin=$src/build-bench/cli/dsnap
fi
store_bench=$(dirname "$(dirname "$bin")")/bench/store_bench

tmp=$(mktemp -d /var/tmp/dsnap-snapbench.XXXXXX)
mnt=$tmp/mnt
dev=
cleanup() {
	mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
	[ -n "$dev" ] && losetup -d "$dev" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

drop_cache() { for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done; }
now() { date +%s.%N; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }

machine_info "$tmp" "$src"

echo
echo "== image: $SIZE ext4 with real files from /usr"
img=$tmp/disk.img
truncate -s "$SIZE" "$img"
mkfs.ext4 -q -F "$img"
dev=$(losetup --find --show "$img")
mkdir -p "$mnt"
mount "$dev" "$mnt"
for d in /usr/share /usr/lib/x86_64-linux-gnu /usr/bin /usr/include /usr/lib/gcc /usr/libexec \
	/usr/lib/python3.11; do
	[ -d "$d" ] && cp -a "$d" "$mnt/$(echo "$d" | tr / _)" 2>/dev/null || true
done
used=$(df -P "$mnt" | awk 'NR == 2 { print $3 * 1024 }')
umount "$mnt"
losetup -d "$dev"
dev=
bytes=$(stat -c %s "$img")
echo "$(awk -v u="$used" 'BEGIN { printf "%.2f", u / 2^30 }') GiB of files in a $(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 2^30 }') GiB image"

echo
echo "== sequential read of the image (dd bs=4M, page cache dropped)"
reads=()
for i in $(seq "$RUNS"); do
	drop_cache "$img"
	t0=$(now)
	dd if="$img" of=/dev/null bs=4M status=none
	t1=$(now)
	reads+=("$(mbps "$bytes" "$(echo "$t1 - $t0" | bc -l)")")
done
seq_read=$(printf '%s\n' "${reads[@]}" | median)
echo "runs: ${reads[*]} MB/s; median $seq_read MB/s"

echo
echo "== LZ4 on this machine (store_bench's single-core figure on 512 MiB of the image)"
lz4=
if [ -x "$store_bench" ]; then
	head -c 512M "$img" >"$tmp/sample"
	lz4=$("$store_bench" --runs 1 --store "$tmp" "$tmp/sample" | awk '/LZ4 compress, 1 core/ { print $NF }')
	rm -f "$tmp/sample"
	echo "LZ4 compress, 1 core: $lz4 MB/s (x $(nproc) cores = $((lz4 * $(nproc))) MB/s)"
fi

echo
echo "== dsnap: full snapshot (create-snapshot) and restore (export-snapshot)"
printf '%4s %10s %12s %10s %12s %12s\n' run snap_s snap_MB/s restore_s restore_MB/s stored_MiB
snaps=()
restores=()
for i in $(seq "$RUNS"); do
	state=$tmp/state$i
	id=$("$bin" --state "$state" register-disk --path "$img")
	drop_cache "$img"
	t0=$(now)
	sid=$("$bin" --quiet --state "$state" create-snapshot --disk-id "$id")
	t1=$(now)
	drop_cache "$state"/store/packs/*.pack
	t2=$(now)
	"$bin" --quiet --state "$state" export-snapshot --snapshot-id "$sid" --path "$tmp/out.img"
	t3=$(now)
	cmp "$img" "$tmp/out.img" || { echo "restore differs from the image" >&2; exit 1; }
	stored=$(du -sm "$state/store/packs" | cut -f1)
	s=$(mbps "$bytes" "$(echo "$t1 - $t0" | bc -l)")
	r=$(mbps "$bytes" "$(echo "$t3 - $t2" | bc -l)")
	snaps+=("$s")
	restores+=("$r")
	printf '%4s %10.2f %12s %10.2f %12s %12s\n' "$i" "$(echo "$t1 - $t0" | bc -l)" "$s" \
		"$(echo "$t3 - $t2" | bc -l)" "$r" "$stored"
	rm -rf "$state" "$tmp/out.img"
done
snap=$(printf '%s\n' "${snaps[@]}" | median)
restore=$(printf '%s\n' "${restores[@]}" | median)

echo
echo "== summary (median of $RUNS; MB/s = image bytes / seconds)"
echo "full snapshot:      $snap MB/s  ($(awk -v a="$snap" -v b="$seq_read" 'BEGIN { printf "%.2f", a / b }') x sequential read)"
echo "restore:            $restore MB/s  ($(awk -v a="$restore" -v b="$seq_read" 'BEGIN { printf "%.2f", a / b }') x sequential read)"
echo "sequential read:    $seq_read MB/s"
[ -n "$lz4" ] && echo "LZ4, 1 core:        $lz4 MB/s"
for f in snapshot:"$snap" restore:"$restore"; do
	name=${f%%:*}
	v=${f#*:}
	echo "target >= 1000 MB/s ($name): $([ "$v" -ge 1000 ] && echo met || echo "not met")"
done
