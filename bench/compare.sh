#!/usr/bin/env bash
# Against other tools (issue 6): dsnap next to restic, borg and casync (the
# Debian packages) on the same ext4 image of SIZE_MB (default 4096) MiB
# holding about FILL_PCT (default 70) % of real files from SRC (default
# /usr), the rest free space. For each tool, medians of RUNS (default 3):
#
#  full     the first backup of the image
#  incr     a second backup into the same store after 1% of the files
#           changed (every 100th regular file by sorted path, from SEED:
#           a third overwritten in place, a third appended to, a third
#           rewritten to a new file and renamed over the old one)
#  restore  the second backup back into a new image file, then `sync` of
#           that file; compared with `cmp` against the image it came from
#  stored   bytes the tool's store holds after both backups (du -sb)
#  peak RSS the largest resident set of the step's processes
#
#   sudo [RUNS=3] [SIZE_MB=4096] [SRC=/usr] [REV=commit] bench/compare.sh [BUILD_DIR]
#
# Each tool is used as its documentation says for disk images:
#  dsnap   a private dsnapd; the image registered and attached (a loop
#          device served by dsnapd), its ext4 mounted; each snapshot taken
#          with the file system frozen (fsfreeze) and mounted, the change
#          made through the mount, so changed-block tracking sees it;
#          restore = ExportSnapshot. Store: 64 KiB chunks, LZ4, no
#          encryption (it has none).
#  restic  `restic backup --stdin --stdin-filename disk.img < IMAGE`
#          (0.14 has no block-device mode); repository format 2,
#          compression auto (zstd); restic always encrypts (AES-256).
#          restore = `restic restore latest --target DIR`.
#  borg    `borg init -e none`; `borg create --sparse --chunker-params
#          fixed,4194304 REPO::NAME IMAGE` (borg's notes: fixed 4 MiB
#          chunks for block devices and raw disk images); compression lz4
#          (default). restore = `borg extract --sparse`.
#  casync  `casync make --store=STORE disk.caibx IMAGE` (a blob index, as
#          for block devices), 64 KiB average chunks, zstd (defaults).
#          restore = `casync extract --store=STORE disk.caibx FILE`.
# The peers back up copies of the image taken while dsnap's snapshots
# held the file system frozen, so every tool stores exactly the same bytes.
#
# Page caches are dropped (echo 3 > /proc/sys/vm/drop_caches) before every
# timed step. Peak memory: `/usr/bin/time -v` "Maximum resident set size"
# of the command; for dsnap that is the client, plus VmHWM of dsnapd,
# which is started afresh for each step (so its high-water mark covers
# only attach, mount and that step).
#
# Root (loop devices, FUSE, mounts). Installs restic, borgbackup, casync
# and time with apt-get when missing. Without BUILD_DIR it builds a Release
# tree of the working tree in build-compare/, or with REV that commit
# (exported with git archive) in build-compare/rev/. Everything it makes lives in one folder under
# ${TMPDIR:-/var/tmp}, removed on every exit; it touches no device or
# mount it did not create.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
. "$here/lib.sh"
build=${1:-}
RUNS=${RUNS:-3}
SIZE_MB=${SIZE_MB:-4096}
SRC=${SRC:-/usr}
FILL_PCT=${FILL_PCT:-70}
SEED=${SEED:-6}
REV=${REV:-} # a git revision to build and measure instead of the working tree
BORG_CHUNKER=${BORG_CHUNKER:-fixed,4194304}
work=${TMPDIR:-/var/tmp}

die() { echo "compare: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "compare: needs root (loop devices, FUSE, mounts)"; exit 77; }
[ -d "$SRC" ] || die "SRC=$SRC is not a folder"

# -- tools ---------------------------------------------------------------------------------
missing=()
command -v restic >/dev/null || missing+=(restic)
command -v borg >/dev/null || missing+=(borgbackup)
command -v casync >/dev/null || missing+=(casync)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
	echo "compare: installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null ||
		die "apt-get install ${missing[*]} failed"
fi
for t in mkfs.ext4 fsfreeze losetup python3 cmp; do command -v $t >/dev/null || die "needs $t"; done

measured="working tree $(git -C "$src" describe --always --dirty 2>/dev/null || echo unknown)"
if [ -z "$build" ] && [ -n "$REV" ]; then
	# a committed revision, exported whole: edits in the tree do not leak in
	rev=$(git -C "$src" rev-parse --short "$REV^{commit}") || die "REV=$REV is not a commit"
	rm -rf "$src/build-compare/rev-src"
	mkdir -p "$src/build-compare/rev-src"
	git -C "$src" archive "$rev" | tar -x -C "$src/build-compare/rev-src"
	cmake -S "$src/build-compare/rev-src" -B "$src/build-compare/rev" -DCMAKE_BUILD_TYPE=Release \
		-DDSNAP_TESTS=OFF -DDSNAP_BENCH=OFF >/dev/null
	make -C "$src/build-compare/rev" -j"$(nproc)" dsnap-cli dsnapd >/dev/null
	build=$src/build-compare/rev
	measured="commit $rev"
elif [ -z "$build" ]; then
	cmake -S "$src" -B "$src/build-compare" -DCMAKE_BUILD_TYPE=Release -DDSNAP_TESTS=OFF \
		-DDSNAP_BENCH=OFF >/dev/null
	make -C "$src/build-compare" -j"$(nproc)" dsnap-cli dsnapd >/dev/null
	build=$src/build-compare
else
	measured="$build"
fi
DSNAP=$build/cli/dsnap
DSNAPD=$build/daemon/dsnapd
[ -x "$DSNAP" ] && [ -x "$DSNAPD" ] || die "no dsnap/dsnapd in $build"

# -- space: the source image, dsnap's disk, the two frozen copies, one store
# and one restored image at a time, with room to spare
need_mb=$((SIZE_MB * 6 + 2048))
free_mb=$(df -Pm "$work" | awk 'NR == 2 { print $4 }')
[ "$free_mb" -ge "$need_mb" ] ||
	die "$work has $free_mb MiB free, needs about $need_mb MiB (6 x SIZE_MB + 2 GiB); set TMPDIR"

tmp=$(mktemp -d "$work/dsnap-compare.XXXXXX")
tmp=$(realpath "$tmp")
mnt=$tmp/mnt
state=$tmp/state
sock=$tmp/dsnapd.sock
log=$tmp/dsnapd.log
results=$tmp/results
mkdir -p "$mnt"
: >"$results"
pid='' frozen='' disk='' attached='' gold_dev=''

cleanup() {
	local m l back
	[ -n "$frozen" ] && fsfreeze -u "$mnt" 2>/dev/null
	mountpoint -q "$mnt" 2>/dev/null && umount "$mnt" 2>/dev/null
	if [ -n "$attached" ] && [ -n "$pid" ]; then
		"$DSNAP" --socket "$sock" detach-disk --disk-id "$disk" >/dev/null 2>&1
	fi
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	# loop devices over files in this folder only (ours: the folder is private)
	for l in /sys/block/loop*/loop/backing_file; do
		[ -e "$l" ] || continue
		back=$(cat "$l" 2>/dev/null) || continue
		case ${back% (deleted)} in "$tmp"/*)
			m=${l#/sys/block/}
			losetup -d "/dev/${m%%/*}" 2>/dev/null
			;;
		esac
	done
	# mounts left below this folder (dsnapd's FUSE mounts if it died)
	awk -v t="$tmp/" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null; done
	rm -rf --one-file-system "$tmp"
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# -- helpers -------------------------------------------------------------------------------
ds() { "$DSNAP" --socket "$sock" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
put() { echo "$1 $2 $3" >>"$results"; } # tool key value
get() { awk -v t="$1" -v k="$2" '$1 == t && $2 == k { print $3 }' "$results"; }
med() { get "$1" "$2" | median; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
fmt() { awk -v v="$1" -v d="${2:-1}" 'BEGIN { printf "%.*f", d, v }'; }
apparent() { du -scb "$@" | awk 'END { print $1 }'; }
allocated() { du -sc --block-size=1 "$@" | awk 'END { print $1 }'; }

# timed OUT CMD…: runs CMD under /usr/bin/time -v (stdout to OUT); sets
# T_START (wall clock before) and RSS_KB. The caller takes the end time.
timed() {
	local out=$1
	shift
	T_START=$(now)
	/usr/bin/time -v -o "$tmp/time.txt" "$@" >"$out" || {
		cat "$tmp/time.txt" >&2
		die "failed: $*"
	}
	RSS_KB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tmp/time.txt")
}
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

start_daemon() {
	: >"$tmp/dsnapd.conf"
	"$DSNAPD" --socket "$sock" --state "$state" --config "$tmp/dsnapd.conf" 2>>"$log" &
	pid=$!
	for _ in $(seq 100); do
		ds describe-disks >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	tail "$log" >&2
	die "dsnapd did not start"
}
stop_daemon() {
	kill "$pid" && wait "$pid" 2>/dev/null || true
	pid=
}
hwm_kb() { awk '/^VmHWM/ { print $2 }' "/proc/$pid/status"; }
attach() { # sets dev
	dev=$(ds --output json call AttachDisk DiskId="$disk" | json 'd["Device"]')
	[[ $dev == /dev/loop* ]] || die "AttachDisk answered '$dev'"
	attached=1
}
detach() {
	for _ in $(seq 50); do
		ds detach-disk --disk-id "$disk" >/dev/null 2>"$tmp/detach.err" && { attached=; return 0; }
		sleep 0.2
	done
	die "detach-disk: $(cat "$tmp/detach.err")"
}
freeze() { sync; fsfreeze -f "$mnt"; frozen=1; }
thaw() { fsfreeze -u "$mnt"; frozen=; }

# -- the source image: ext4 with real files, built once --------------------------------------
machine_info "$tmp" "$src"
echo "tools:   $("$DSNAP" --version) ($measured)," \
	"$(restic version | cut -d' ' -f1-2), $(borg --version), casync $(casync --version | awk '{ print $2 }')"
echo "runs:    $RUNS, medians; page caches dropped before each timed step"

gold=$tmp/source.img
truncate -s "${SIZE_MB}M" "$gold"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$gold"
gold_dev=$(losetup --find --show "$gold")
mount "$gold_dev" "$mnt"
budget=$((SIZE_MB * 1048576 * FILL_PCT / 100))
# The first files of SRC in sorted order (top-down) up to the budget;
# tar -p keeps owners, modes and times as cp -a would.
python3 - "$SRC" "$budget" >"$tmp/files" <<'EOF'
import os, sys
root, budget = sys.argv[1], int(sys.argv[2])
dev = os.lstat(root).st_dev
used = 0
out = sys.stdout.buffer
for d, dirs, names in os.walk(root):
    dirs[:] = sorted(x for x in dirs if os.lstat(os.path.join(d, x)).st_dev == dev)
    rel = os.path.relpath(d, root)
    if rel != ".":
        out.write(rel.encode(errors="surrogateescape") + b"\0")
        used += 4096
    for n in sorted(names):
        p = os.path.join(d, n)
        st = os.lstat(p)
        if not (os.path.isfile(p) or os.path.islink(p)):
            continue
        used += st.st_blocks * 512 if not os.path.islink(p) else 0
        if used > budget:
            sys.exit(0)
        out.write(os.path.relpath(p, root).encode(errors="surrogateescape") + b"\0")
EOF
tar -C "$SRC" --null --no-recursion -T "$tmp/files" -cf - 2>/dev/null | tar -C "$mnt" -xpf -
sync
read -r nfiles used_b < <(df --output=iused,used -B1 "$mnt" | awk 'NR == 2 { print $1, $2 }')
umount "$mnt"
losetup -d "$gold_dev"
gold_dev=
echo
echo "== image: $(fmt "$(awk -v u="$used_b" 'BEGIN { print u / 2^30 }')" 2) GiB used of a $SIZE_MB MiB ext4" \
	"($nfiles inodes) from $SRC"

# The change set: 1% of the regular files, deterministic from SEED.
change_files() {
	python3 - "$mnt" "$SEED" <<'EOF'
import os, random, sys
root, seed = sys.argv[1], int(sys.argv[2])
files = []
for d, dirs, names in os.walk(root):
    dirs.sort()
    if d == root and "lost+found" in dirs:
        dirs.remove("lost+found")
    for n in sorted(names):
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p):
            files.append(p)
rng = random.Random(seed)
chosen = files[seed % 100::100]
written = 0
for i, p in enumerate(chosen):
    size = os.path.getsize(p)
    n = rng.randint(1, 16) * 4096
    data = rng.randbytes(n)
    kind = i % 3
    if kind == 0 and size > 0:  # overwrite a region in place
        off = rng.randrange(0, size)
        with open(p, "r+b") as f:
            f.seek(off)
            f.write(data[: max(1, min(n, size - off))])
        written += max(1, min(n, size - off))
    elif kind == 1 or size == 0:  # append
        with open(p, "ab") as f:
            f.write(data)
        written += n
    else:  # rewrite to a new file with a region changed, rename over
        with open(p, "rb") as f:
            body = bytearray(f.read())
        off = rng.randrange(0, len(body))
        body[off : off + n] = data[: len(body) - off]
        tmp = p + ".new"
        with open(tmp, "wb") as f:
            f.write(body)
        st = os.stat(p)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.rename(tmp, p)
        written += len(body)
print(len(chosen), len(files), written)
EOF
}

# -- dsnap -------------------------------------------------------------------------------------
# snapshot_step STEP COPY: attach and mount the disk, freeze it, copy the
# image for the peers (what the point in time holds), then time a snapshot
# (its id in $tmp/out); the file system stays frozen.
snapshot_step() {
	local hwm
	attach
	mount "$dev" "$mnt"
	freeze
	cp --sparse=always "$tmp/disk.img" "$tmp/$2"
	drop_caches
	timed "$tmp/out" "$DSNAP" --socket "$sock" --quiet create-snapshot --disk-id "$disk" --wait
	put dsnap "$1_s" "$(since "$T_START")"
	hwm=$(hwm_kb)
	put dsnap "$1_rss" $((RSS_KB + hwm))
	put dsnap "$1_hwm" "$hwm"
}

run_dsnap() {
	local full incr out hwm info
	rm -rf "$state" "$tmp/disk.img"
	cp --sparse=always "$gold" "$tmp/disk.img"
	: >"$log"

	# full: dsnapd started afresh, the disk attached and mounted, frozen
	start_daemon
	disk=$(ds --quiet register-disk --path "$tmp/disk.img")
	snapshot_step full A.img
	full=$(cat "$tmp/out")
	thaw
	read -r nchanged nall written < <(change_files)
	[ -n "${written:-}" ] || die "the change set failed"
	put dsnap changed_files "$nchanged"
	put dsnap changed_bytes "$written"
	sync
	umount "$mnt"
	detach
	stop_daemon
	put dsnap stored_full "$(apparent "$state/store")"

	# incremental: a fresh dsnapd; the bitmap comes back from STATE/cbt
	start_daemon
	snapshot_step incr B.img
	incr=$(cat "$tmp/out")
	thaw
	umount "$mnt"
	detach
	info=$(sed -n "s/.*snapshot $incr of $disk accomplished: //p" "$log")
	case $info in *incremental*) ;; *) echo "compare: dsnap's second snapshot was not incremental: $info" >&2 ;; esac
	put dsnap incr_read "$(echo "$info" | sed -n 's/.* \([0-9]*\) bytes read.*/\1/p')"
	# The copies' own durations (dsnapd's log), next to the client's wall
	# time, which adds the request, the polling and the process start.
	put dsnap incr_copy "$(echo "$info" | sed -n 's/.*, in \([0-9.]*\) s.*/\1/p')"
	put dsnap full_copy "$(sed -n "s/.*snapshot $full of $disk accomplished: .*, in \([0-9.]*\) s.*/\1/p" "$log")"
	put dsnap usage "$(ds --output json describe-snapshots-usage | json 'd["SnapshotSize"]')"
	stop_daemon
	put dsnap stored "$(apparent "$state/store")"
	put dsnap stored_alloc "$(allocated "$state/store")"

	# restore: ExportSnapshot by a fresh dsnapd (the export fsyncs its file)
	start_daemon
	out=$tmp/restored.img
	drop_caches
	timed /dev/null "$DSNAP" --socket "$sock" --quiet export-snapshot --snapshot-id "$incr" --path "$out"
	sync "$out"
	put dsnap rest_s "$(since "$T_START")"
	hwm=$(hwm_kb)
	put dsnap rest_rss $((RSS_KB + hwm))
	put dsnap rest_hwm "$hwm"
	stop_daemon
	if cmp -s "$out" "$tmp/B.img"; then put dsnap verified 1; else
		put dsnap verified 0
		echo "compare: dsnap's restore differs from the image it snapshotted" >&2
	fi
	rm -f "$out" "$tmp/disk.img"
	rm -rf "$state"
	echo "  dsnap:  full $(get dsnap full_s | tail -n 1) s, incr $(get dsnap incr_s | tail -n 1) s," \
		"restore $(get dsnap rest_s | tail -n 1) s; $full, then $incr ($info);" \
		"changed $nchanged of $nall files, $(mib "$written") MiB written"
}

# -- the peers: they back up A.img, then B.img, and restore the second -----------------------
# peer_step TOOL STEP CMD…: drops caches, times CMD, records seconds and RSS.
peer_step() {
	local tool=$1 step=$2
	shift 2
	drop_caches
	timed /dev/null "$@"
	[ "$step" != rest ] || sync "$RESTORED"
	put "$tool" "${step}_s" "$(since "$T_START")"
	put "$tool" "${step}_rss" "$RSS_KB"
}
peer_verify() { # TOOL
	if cmp -s "$RESTORED" "$tmp/B.img"; then put "$1" verified 1; else
		put "$1" verified 0
		echo "compare: $1's restore differs from the image it backed up" >&2
	fi
	rm -rf "$tmp/out"
}

run_restic() {
	local repo=$tmp/restic
	rm -rf "$repo" "$tmp/restic-cache" "$tmp/out"
	export RESTIC_PASSWORD=compare RESTIC_CACHE_DIR=$tmp/restic-cache
	restic init -q -r "$repo" >/dev/null
	peer_step restic full sh -c 'restic -q -r "$1" backup --stdin --stdin-filename disk.img <"$2"' - "$repo" "$tmp/A.img"
	put restic stored_full "$(apparent "$repo")"
	peer_step restic incr sh -c 'restic -q -r "$1" backup --stdin --stdin-filename disk.img <"$2"' - "$repo" "$tmp/B.img"
	put restic stored "$(apparent "$repo")"
	put restic stored_alloc "$(allocated "$repo")"
	RESTORED=$tmp/out/disk.img
	peer_step restic rest restic -q -r "$repo" restore latest --target "$tmp/out"
	peer_verify restic
	rm -rf "$repo" "$tmp/restic-cache"
}

run_borg() {
	local repo=$tmp/borg
	rm -rf "$repo" "$tmp/borg-base" "$tmp/out"
	export BORG_BASE_DIR=$tmp/borg-base BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
	borg init -e none "$repo"
	(cd "$tmp" && peer_step borg full borg create --sparse --chunker-params "$BORG_CHUNKER" "$repo::full" A.img)
	put borg stored_full "$(apparent "$repo")"
	(cd "$tmp" && peer_step borg incr borg create --sparse --chunker-params "$BORG_CHUNKER" "$repo::incr" B.img)
	put borg stored "$(apparent "$repo")"
	put borg stored_alloc "$(allocated "$repo")"
	mkdir -p "$tmp/out"
	RESTORED=$tmp/out/B.img
	(cd "$tmp/out" && peer_step borg rest borg extract --sparse "$repo::incr")
	peer_verify borg
	rm -rf "$repo" "$tmp/borg-base"
}

run_casync() {
	local store=$tmp/casync
	rm -rf "$store" "$tmp/out"
	mkdir -p "$store" "$tmp/out"
	peer_step casync full casync make --store="$store/chunks" "$store/full.caibx" "$tmp/A.img"
	put casync stored_full "$(apparent "$store")"
	peer_step casync incr casync make --store="$store/chunks" "$store/incr.caibx" "$tmp/B.img"
	put casync stored "$(apparent "$store")"
	put casync stored_alloc "$(allocated "$store")"
	RESTORED=$tmp/out/disk.img
	peer_step casync rest casync extract --store="$store/chunks" "$store/incr.caibx" "$RESTORED"
	peer_verify casync
	rm -rf "$store"
}

tools="dsnap restic borg casync"
peers="restic borg casync"
echo
echo "== runs"
for r in $(seq "$RUNS"); do
	echo "run $r ($(date -u +%H:%M:%S))"
	run_dsnap
	for p in $peers; do
		run_$p
		echo "  $p:  full $(get $p full_s | tail -n 1) s, incr $(get $p incr_s | tail -n 1) s," \
			"restore $(get $p rest_s | tail -n 1) s"
	done
	rm -f "$tmp/A.img" "$tmp/B.img"
done

# -- the table ---------------------------------------------------------------------------------
rss_max() { # the largest of a tool's per-step medians, MiB
	local m
	m=$(for s in full incr rest; do med "$1" ${s}_rss; done | sort -g | tail -n 1)
	mib $((m * 1024))
}
ok_all() { [ "$(get "$1" verified | sort -u)" = 1 ] && echo yes || echo NO; }
echo
echo "== medians of $RUNS runs (seconds; stored = du -sb of the store after both backups)"
printf '| %-7s | %8s | %8s | %9s | %10s | %12s | %11s | %8s |\n' tool "full s" "incr s" "restore s" \
	"stored MiB" "of it incr" "peak RSS MiB" "restore ok"
printf '|%s|\n' "---------|---------:|---------:|----------:|-----------:|-------------:|------------:|---------:"
for t in $tools; do
	printf '| %-7s | %8s | %8s | %9s | %10s | %12s | %11s | %8s |\n' "$t" "$(fmt "$(med $t full_s)")" \
		"$(fmt "$(med $t incr_s)" 2)" "$(fmt "$(med $t rest_s)")" "$(mib "$(med $t stored)")" \
		"+$(mib $(($(med $t stored) - $(med $t stored_full))))" "$(rss_max $t)" "$(ok_all $t)"
done

echo
echo "peak RSS per step, MiB (dsnap: dsnapd VmHWM + client)"
printf '| %-7s | %6s | %6s | %7s |\n' tool full incr restore
printf '|%s|\n' "---------|-------:|-------:|--------:"
for t in $tools; do
	printf '| %-7s | %6s | %6s | %7s |\n' "$t" "$(mib $(($(med $t full_rss) * 1024)))" \
		"$(mib $(($(med $t incr_rss) * 1024)))" "$(mib $(($(med $t rest_rss) * 1024)))"
done
echo "dsnapd alone (VmHWM): full $(mib $(($(med dsnap full_hwm) * 1024))), incr $(mib $(($(med dsnap incr_hwm) * 1024)))," \
	"restore $(mib $(($(med dsnap rest_hwm) * 1024))) MiB"
echo "stored, allocated on disk (du --block-size=1), MiB:" \
	"$(for t in $tools; do printf '%s %s  ' "$t" "$(mib "$(med $t stored_alloc)")"; done)"
echo "dsnap: DescribeSnapshotsUsage SnapshotSize $(mib "$(med dsnap usage)") MiB; the incremental read" \
	"$(mib "$(med dsnap incr_read)") MiB; change set: $(med dsnap changed_files) files," \
	"$(mib "$(med dsnap changed_bytes)") MiB written"
echo "dsnap: the copies themselves (dsnapd's log): full $(fmt "$(med dsnap full_copy)" 2) s," \
	"incremental $(fmt "$(med dsnap incr_copy)" 3) s"

best() { for p in $peers; do med $p "$1"; done | sort -g | head -n 1; }
bestname() { for p in $peers; do echo "$(med $p "$1") $p"; done | sort -g | head -n 1 | cut -d' ' -f2; }
verdict() { awk -v r="$1" -v t="$2" -v op="$3" 'BEGIN { print ((op == ">=" ? r >= t : r <= t) ? "met" : "NOT met") }'; }
echo
echo "== targets (against the best peer)"
printf '| %-12s | %-12s | %8s | %6s | %-7s |\n' step "best peer" ratio target verdict
printf '|%s|\n' "--------------|--------------|---------:|-------:|---------"
for s in full incr rest; do
	r=$(awk -v p="$(best ${s}_s)" -v d="$(med dsnap ${s}_s)" 'BEGIN { printf "%.1f", p / d }')
	case $s in full) t=3 n="full" ;; incr) t=20 n="incremental" ;; rest) t=2 n="restore" ;; esac
	printf '| %-12s | %-12s | %7sx | %5sx | %-7s |\n' "$n" "$(bestname ${s}_s)" "$r" "$t" "$(verdict "$r" $t ">=")"
done
r=$(awk -v p="$(best stored)" -v d="$(med dsnap stored)" 'BEGIN { printf "%.2f", d / p }')
printf '| %-12s | %-12s | %7sx | %5sx | %-7s |\n' "stored bytes" "$(bestname stored)" "$r" 1.2 "$(verdict "$r" 1.2 "<=")"
echo "(time ratios: best peer's seconds / dsnap's; stored: dsnap's bytes / the smallest peer's)"
