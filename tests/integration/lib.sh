# Shared by the integration tests: a scratch folder removed on every path,
# and skip (exit 77) when something the test needs is missing.
set -euo pipefail

DSNAP=${DSNAP:?set DSNAP to the dsnap binary}
SCRATCH=$(mktemp -d /tmp/dsnap-it.XXXXXX)
export DSNAP_STORE=$SCRATCH/store
CLEANUP=()

cleanup() {
	local i
	for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
		eval "${CLEANUP[i]}" >/dev/null 2>&1 || true
	done
	rm -rf --one-file-system "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

on_exit() { CLEANUP+=("$*"); }

skip() { echo "SKIP: $*"; exit 77; }
need() { command -v "$1" >/dev/null 2>&1 || skip "$1 not installed"; }
need_root() { [ "$(id -u)" = 0 ] || skip "needs root"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# A file tree of real files to put on test file systems.
make_tree() {
	local dst=$1
	mkdir -p "$dst"
	cp -r /usr/share/doc "$dst/doc" 2>/dev/null || true
	cp -r /usr/include "$dst/include" 2>/dev/null || true
	head -c 20M /dev/urandom >"$dst/random.bin"
}

# Checksums of every file below a folder, relative names, sorted.
tree_sums() { (cd "$1" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum); }

stored_bytes() { "$DSNAP" store stats | awk '/^stored bytes/ {print $3}'; }

# The disk and snapshot commands use a state folder of the test's own (DIR,
# default $SCRATCH/state); `dsnap store …` then works on its store/.
use_state() {
	export DSNAP_STATE=${1:-$SCRATCH/state}
	unset DSNAP_STORE
}

# loop_attach VAR FILE [LOSETUP-OPTIONS…]: attaches FILE to a free loop
# device and sets VAR to it. It is detached on exit, and only while FILE is
# still behind it: a number the test freed itself may be someone else's by then.
loop_attach() {
	local -n dev_=$1
	local file=$2
	shift 2
	dev_=$(losetup --find --show "$@" "$file") || skip "cannot set up a loop device"
	on_exit "loop_detach $dev_ $(realpath "$file")"
}

loop_detach() {
	local back
	back=$(cat "/sys/block/${1#/dev/}/loop/backing_file" 2>/dev/null) || return 0
	[ "${back% (deleted)}" = "$2" ] && losetup -d "$1"
}

# mount_on_exit [MOUNT-OPTIONS…] SOURCE DIR: mounts, and unmounts on exit
# (before the loop devices attached earlier are detached). DIR is made under
# $SCRATCH, so whatever is mounted there is the test's own.
mount_on_exit() {
	local dir=${!#}
	mkdir -p "$dir"
	mount "$@"
	on_exit "umount $dir"
}

# expect_exit CODE COMMAND…: the command must exit with CODE; its output is
# left in $SCRATCH/out and $SCRATCH/err for the caller to check.
expect_exit() {
	local want=$1 rc=0
	shift
	"$@" >"$SCRATCH/out" 2>"$SCRATCH/err" || rc=$?
	[ "$rc" = "$want" ] || fail "'$*' exited $rc, not $want: $(cat "$SCRATCH/err")"
}

# The error output of the last expect_exit must match a pattern (grep -E).
expect_err() { grep -Eq "$1" "$SCRATCH/err" || fail "unclear error, wanted /$1/: $(cat "$SCRATCH/err")"; }

# dsnap on the state folder, in this process (never a dsnapd that happens
# to answer on the default socket).
ds() { "$DSNAP" --local "$@"; }

# What describe-snapshots and describe-disks show: a snapshot's status; a
# disk's Present (true/false; from JSON, as the table leaves FsType blank);
# the snapshots of a disk, without the header line.
snap_status() { ds describe-snapshots --snapshot-ids "$1" | awk 'NR > 1 {print $3}'; }
disk_present() { ds --output json describe-disks --disk-ids "$1" | sed -n 's/.*"Present": *\([a-z]*\).*/\1/p'; }
disk_snapshots() { ds describe-snapshots --disk-id "$1" | tail -n +2; }

# Ends a background job of this shell if it is still one (never a process
# that got its number since), and the command it is running: a subshell
# loop killed alone leaves its current child (a cp into a mount that then
# cannot be unmounted). Stopped first, it starts no new one meanwhile.
stop_job() {
	local kids i
	if jobs -p | grep -qx "$1"; then
		kill -STOP "$1" 2>/dev/null || true
		kids=$(pgrep -P "$1" || true)
		[ -z "$kids" ] || kill $kids 2>/dev/null || true
		kill "$1" 2>/dev/null || true
		kill -CONT "$1" 2>/dev/null || true
		wait "$1" 2>/dev/null || true
		# A child in the middle of a write ends when the write does
		# (then a zombie until init reaps it: that is gone enough).
		for ((i = 0; i < 300; i++)); do
			[ -n "$kids" ] && ps -o stat= -p "${kids//$'\n'/,}" 2>/dev/null | grep -qv '^Z' ||
				break
			sleep 0.1
		done
	fi
}

# dsnapd of the test's own: socket $SCRATCH/dsnapd.sock, state
# $SCRATCH/state, config $SCRATCH/dsnapd.conf, log $SCRATCH/dsnapd.log.
# daemon_start waits until it answers; daemon_kill9 kills it as a crash
# would. dsd talks to it; json evaluates a Python expression on d.
DAEMON_PID=
daemon_start() {
	local sock=$SCRATCH/dsnapd.sock
	touch "$SCRATCH/dsnapd.conf"
	"${DSNAPD:?set DSNAPD to the dsnapd binary}" --socket "$sock" --state "$SCRATCH/state" \
		--config "$SCRATCH/dsnapd.conf" 2>>"$SCRATCH/dsnapd.log" &
	DAEMON_PID=$!
	for _ in $(seq 100); do [ -S "$sock" ] && curl -s --unix-socket "$sock" \
		'http://x/?Action=DescribeDisks' >/dev/null && return 0; sleep 0.1; done
	cat "$SCRATCH/dsnapd.log"
	fail "dsnapd did not start"
}
daemon_stop() { [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" || true; DAEMON_PID=; }
daemon_kill9() { kill -9 "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=; }
dsd() { "$DSNAP" --socket "$SCRATCH/dsnapd.sock" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# attach_new DISK_VAR DEV_VAR IMAGE: registers IMAGE with the test's dsnapd
# and attaches it; sets the disk id and the loop device. On exit: the
# test's mount at $SCRATCH/mnt, the loop device while it still serves
# the disk, the FUSE mount.
attach_new() {
	local -n disk_=$1 dev_=$2
	disk_=$(dsd register-disk --path "$3")
	dev_=$(dsd --output json call AttachDisk DiskId="$disk_" | json 'd["Device"]')
	[[ $dev_ == /dev/loop* ]] || fail "AttachDisk answered '$dev_'"
	on_exit "umount -l $SCRATCH/state/mnt/$disk_"
	on_exit "loop_detach $dev_ $SCRATCH/state/mnt/$disk_/disk"
	on_exit "umount $SCRATCH/mnt"
}
