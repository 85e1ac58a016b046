#!/usr/bin/env bash
# Builds the Debian packages and checks them: files, systemd units
# (systemd-analyze verify), man pages (man -l), bash completion, the
# pkg-config file. With CI=true or DSNAP_TEST_INSTALL=1 it also installs
# them with apt, checks `man dsnap`, socket activation of the installed
# daemon when systemd runs, and removes them again.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
for t in dpkg-buildpackage dh pandoc man; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
work=$(mktemp -d /tmp/dsnap-pkgtest.XXXXXX)
installed=
cleanup() {
	[ -n "$installed" ] && apt-get purge -y -q dsnap libdsnap-dev >/dev/null 2>&1
	rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$src/scripts/build-deb.sh" "$work/debs" >/dev/null
deb=$(ls "$work"/debs/dsnap_*_*.deb)
dev=$(ls "$work"/debs/libdsnap-dev_*_*.deb)

# Contents.
dpkg -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$work/files"
dpkg -c "$dev" | awk '{print $6}' | sed 's|^\./|/|' >>"$work/files"
for f in /usr/bin/dsnap /usr/sbin/dsnapd /etc/dsnap/dsnapd.conf \
	/lib/systemd/system/dsnapd.socket /lib/systemd/system/dsnapd.service \
	/usr/share/bash-completion/completions/dsnap /usr/share/man/man8/dsnap.8.gz \
	/usr/share/man/man8/dsnapd.8.gz /usr/share/man/man5/dsnapd.conf.5.gz \
	/usr/include/dsnap/api.h /usr/include/dsnap/store.h; do
	grep -qx "$f" "$work/files" || fail "$f is not in the packages"
done
grep -q '^/usr/lib/.*/libdsnap.so.0' "$work/files" || fail "no libdsnap.so.0"
grep -q '^/usr/lib/.*/pkgconfig/dsnap.pc' "$work/files" || fail "no dsnap.pc"
dpkg-deb -I "$deb" conffiles | grep -qx /etc/dsnap/dsnapd.conf || fail "dsnapd.conf is not a conffile"
echo "contents ok"

root=$work/root
dpkg -x "$deb" "$root"
dpkg -x "$dev" "$root"

# Man pages render.
for page in usr/share/man/man8/dsnap.8.gz usr/share/man/man8/dsnapd.8.gz \
	usr/share/man/man5/dsnapd.conf.5.gz; do
	MANWIDTH=80 man -l "$root/$page" 2>"$work/man.err" | grep -q NAME || fail "$page does not render"
	[ ! -s "$work/man.err" ] || fail "$page: $(cat "$work/man.err")"
done
echo "man pages ok"

# Units: a copy whose ExecStart names the extracted binary (the only
# change), verified against this system's targets; man pages are checked
# above.
if command -v systemd-analyze >/dev/null; then
	mkdir "$work/units"
	cp "$root"/lib/systemd/system/dsnapd.socket "$work/units/"
	sed "s|^ExecStart=/usr/sbin/dsnapd|ExecStart=$root/usr/sbin/dsnapd|" \
		"$root"/lib/systemd/system/dsnapd.service >"$work/units/dsnapd.service"
	SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
		"$work/units/dsnapd.socket" "$work/units/dsnapd.service" >"$work/verify.out" 2>&1 ||
		{ cat "$work/verify.out"; fail "systemd-analyze verify"; }
	[ ! -s "$work/verify.out" ] && echo "units ok" || { cat "$work/verify.out"; echo "units ok (warnings above)"; }
else
	echo "systemd-analyze not here: units not verified"
fi

# Completion completes commands and flags, asking the packaged binary.
if [ -r /usr/share/bash-completion/bash_completion ]; then
	out=$(PATH="$root/usr/bin:$PATH" LD_LIBRARY_PATH=$(dirname "$(ls "$root"/usr/lib/*/libdsnap.so.0)") \
		bash -c '. /usr/share/bash-completion/bash_completion
		. "$1/usr/share/bash-completion/completions/dsnap"
		try() { COMP_LINE=$*; COMP_POINT=${#COMP_LINE}; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
			COMPREPLY=(); _dsnap; echo "${COMPREPLY[*]}"; }
		try dsnap create-snap
		try dsnap create-snapshot --ret' _ "$root")
	echo "$out" | grep -qx 'create-snapshot' || fail "completion of commands: '$out'"
	echo "$out" | grep -qx -- '--retention-days' || fail "completion of flags: '$out'"
	echo "completion ok"
else
	echo "bash-completion not installed: completion not tried"
fi

# pkg-config and a program built against the library.
cat >"$work/prog.c" <<'PROG'
#include <dsnap/store.h>
#include <stdio.h>
int main(void) { printf("%u\n", (unsigned)DS_CHUNK_SIZE_DEFAULT); return 0; }
PROG
PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_PATH=$(dirname "$(ls "$root"/usr/lib/*/pkgconfig/dsnap.pc)") \
	cc "$work/prog.c" -o "$work/prog" $(PKG_CONFIG_SYSROOT_DIR=$root \
	PKG_CONFIG_PATH=$(dirname "$(ls "$root"/usr/lib/*/pkgconfig/dsnap.pc)") pkg-config --cflags --libs dsnap) ||
	fail "a program does not build with pkg-config dsnap"
echo "pkg-config ok"

if [ "${CI:-}" = true ] || [ "${DSNAP_TEST_INSTALL:-}" = 1 ]; then
	[ "$(id -u)" = 0 ] || { echo "install check needs root"; exit 0; }
	if dpkg -s dsnap >/dev/null 2>&1; then
		echo "dsnap is already installed here: install check skipped"
		exit 0
	fi
	installed=1
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb" "$dev" >"$work/apt.log" 2>&1 ||
		{ cat "$work/apt.log"; fail "the packages do not install"; }
	getent group dsnap >/dev/null || fail "no dsnap group after install"
	MANWIDTH=80 man dsnap 2>/dev/null | grep -q 'dsnap - take, list and restore' || fail "man dsnap"
	/usr/bin/dsnap --version | grep -q dsnap || fail "installed dsnap does not run"
	if [ -d /run/systemd/system ]; then
		systemctl is-enabled dsnapd.socket >/dev/null || fail "dsnapd.socket is not enabled"
		DSNAP_SOCKET=/run/dsnap/dsnapd.sock /usr/bin/dsnap describe-disks >/dev/null ||
			fail "socket activation of the installed dsnapd"
		echo "socket activation ok"
	fi
	echo "install ok"
fi
echo "package ok"
