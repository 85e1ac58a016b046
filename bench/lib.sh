# Shared by the benchmark scripts: what machine a figure comes from, the
# median of numbers on standard input, and the Release tree they run.

# machine_info FOLDER SOURCE: date, host, CPU, the file system of FOLDER,
# the git revision of SOURCE.
machine_info() {
	echo "== machine"
	echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "host:    $(uname -srm), $(nproc) CPUs, $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
	echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
	echo "fs:      $(df -PT "$1" | awk 'NR == 2 { print $1 " " $2 }')"
	echo "git:     $(git -C "$2" describe --always --dirty 2>/dev/null || echo unknown)"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# bench_build SOURCE TARGET...: configures and builds a Release tree of
# SOURCE (no tests) in SOURCE/build-bench, only TARGETs.
bench_build() {
	local src=$1
	shift
	cmake -S "$src" -B "$src/build-bench" -DCMAKE_BUILD_TYPE=Release -DDSNAP_TESTS=OFF >/dev/null
	make -C "$src/build-bench" -j"$(nproc)" "$@" >/dev/null
}

# bench_copying LOG SNAPSHOT: true while the snapshot's copy runs, from
# dsnapd's log (it logs each copy's end, accomplished or failed). A grep
# of the log costs about a millisecond of CPU; asking the daemon through
# the CLI cost about 25 ms a poll (python3 once cost 0.5 s a run), and the
# users of the disk, on this 2-vCPU VM, feel that in their tail latency.
bench_copying() {
	! grep -q -E "snapshot $2 of [^ ]+ (accomplished|failed)" "$1"
}
