#!/usr/bin/env bash
# Boot every guest of the pim test bed under QEMU/TCG and check it behaves as
# the tests expect. Run build.sh first.
#
# needs: qemu-system-x86 qemu-utils socat openssh-client cpio gzip
#
# Usage: test/testbed/verify.sh [full|noagent|bare|generic]...   (default: all)
# Environment: PIM_TESTBED_DIR (as build.sh), PIM_TESTBED_ACCEL (default tcg),
#              PIM_TESTBED_MACHINE (default pc; q35 works too), PIM_TESTBED_SMP (default 1),
#              PIM_TESTBED_SSH_PORT (default: a random port in 20000-39999)
# Progress and results go to stderr; exits non-zero on the first failure.

set -euo pipefail
exec 1>&2

tb=${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}
accel=${PIM_TESTBED_ACCEL:-tcg}
machine=${PIM_TESTBED_MACHINE:-pc}
smp=${PIM_TESTBED_SMP:-1}
port=${PIM_TESTBED_SSH_PORT:-$((20000 + RANDOM % 20000))}
[ -f "$tb/stamp" ] || {
	echo "verify: no test bed in $tb (run build.sh)"
	exit 1
}
for t in qemu-system-x86_64 socat ssh cpio gzip; do
	command -v "$t" >/dev/null || {
		echo "verify: missing $t"
		exit 1
	}
done

run=$(mktemp -d /tmp/pim-testbed-verify.XXXXXX)
qpid=
cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid" 2>/dev/null || true; fi
	[ -n "${hpid:-}" ] && kill "$hpid" 2>/dev/null || true
	rm -rf "$run"
}
trap cleanup EXIT

say() { printf 'verify: %s\n' "$*"; }
fail() {
	printf 'verify: FAIL: %s\n' "$*"
	if [ -f "$run/serial.log" ]; then
		echo "---- serial (last 30 lines) ----"
		tail -n 30 "$run/serial.log"
	fi
	exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

sshg() {
	ssh -i "$tb/id_ed25519" -p "$port" -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$run/known_hosts" \
		-o LogLevel=ERROR -o ConnectTimeout=10 -o BatchMode=yes root@127.0.0.1 "$@"
}

# qmp CMD-JSON...: send after capabilities negotiation, print the replies.
# The writing side must stay open until the replies arrive: QEMU's socket
# chardevs drop a client that half-closes.
qmp() {
	{
		printf '{"execute":"qmp_capabilities"}\n'
		for c in "$@"; do printf '%s\n' "$c"; done
		sleep 1
	} | socat - "UNIX-CONNECT:$run/qmp" 2>/dev/null || true
}

# ga CMD-JSON...: guest-sync-delimited first, then the commands; print the replies.
ga() {
	{
		printf '{"execute":"guest-sync-delimited","arguments":{"id":%d}}\n' "$RANDOM"
		sleep 0.5
		for c in "$@"; do printf '%s\n' "$c"; done
		sleep 1.5
	} | timeout 10 socat - "UNIX-CONNECT:$run/ga" 2>/dev/null | tr -d '\377' || true
}

# boot DISK: start QEMU on a test bed disk, wait for "pim-testbed ready".
boot() {
	rm -f "$run"/{serial.log,qmp,ga,serial,pid}
	local t0
	t0=$(now)
	qemu-system-x86_64 -machine "$machine" -accel "$accel" -smp "$smp" -m 256 -display none -nodefaults \
		-chardev "socket,id=s0,path=$run/serial,server=on,wait=off,logfile=$run/serial.log" \
		-serial chardev:s0 \
		-qmp "unix:$run/qmp,server=on,wait=off" \
		-device virtio-serial \
		-chardev "socket,id=ga,path=$run/ga,server=on,wait=off" \
		-device virtserialport,chardev=ga,name=org.qemu.guest_agent.0 \
		-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
		-device virtio-rng-pci \
		-drive "file=$tb/$1,if=virtio,format=qcow2,snapshot=on" \
		-daemonize -pidfile "$run/pid"
	qpid=$(cat "$run/pid")
	local i
	for i in $(seq 1 600); do
		grep -q '^pim-testbed ready' "$run/serial.log" 2>/dev/null && break
		kill -0 "$qpid" 2>/dev/null || fail "$1: QEMU exited during boot"
		sleep 0.1
	done
	grep -q '^pim-testbed ready' "$run/serial.log" || fail "$1: no 'pim-testbed ready' within 60 s"
	say "$1 ($machine, $accel, smp $smp): ready after $(elapsed "$t0") s"
}

wait_exit() { # seconds
	local i
	for i in $(seq 1 $(($1 * 10))); do
		kill -0 "$qpid" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

check_ssh() {
	local t0 out
	t0=$(now)
	out=$(sshg uname -a) || fail "ssh failed"
	say "  ssh uname -a ($(elapsed "$t0") s): $out"
	# the host, seen from the guest at 10.0.2.2, over busybox wget
	out=$(sshg "wget -q -O - http://10.0.2.2:$hport/hello") || fail "guest wget of the host failed"
	[ "$out" = "hello from the host" ] || fail "guest wget got: $out"
	say "  guest wget http://10.0.2.2:$hport/hello: ok"
	out=$(sshg "ip -4 -o addr show dev eth0") || fail "ssh ip addr failed"
	grep -q 'inet 10.0.2.15/24' <<<"$out" || fail "eth0 is not 10.0.2.15/24: $out"
}

check_serial_shell() {
	local out
	out=$({
		sleep 0.3
		printf 'echo serial-$((40+2))\n'
		sleep 1.5
	} | socat - "UNIX-CONNECT:$run/serial" 2>/dev/null || true)
	grep -q 'serial-42' <<<"$out" || fail "no shell on the serial console: $out"
	grep -q 'Welcome to pim-testbed' "$run/serial.log" || fail "no banner"
	say "  serial console shell: ok"
}

# The guest's host keys are fixed at build time: check them strictly.
sed "s/^/[127.0.0.1]:$port /" "$tb/ssh_host_keys.pub" >"$run/known_hosts"

# A web server on the host for the guest's wget.
mkdir -p "$run/www"
echo "hello from the host" >"$run/www/hello"
hport=$((port + 1))
"$tb/busybox" httpd -f -p "127.0.0.1:$hport" -h "$run/www" &
hpid=$!

verify_full() {
	boot guest-full.qcow2
	local out t0
	t0=$(now)
	out=$(ga '{"execute":"guest-network-get-interfaces"}' '{"execute":"guest-get-osinfo"}' '{"execute":"guest-info"}')
	say "  guest agent replies in $(elapsed "$t0") s (includes fixed sleeps)"
	grep -q '"ip-address": "10.0.2.15"' <<<"$out" || fail "guest-network-get-interfaces has no 10.0.2.15: $out"
	grep -q '"id": "pimtestbed"' <<<"$out" || fail "guest-get-osinfo: $out"
	say "  qemu-ga $(grep -Eo '"version": "[0-9]+\.[0-9.]+"' <<<"$out" | head -n 1): 10.0.2.15 on eth0, os-release ok"
	check_ssh
	check_serial_shell
	t0=$(now)
	ga '{"execute":"guest-shutdown"}' >/dev/null
	wait_exit 30 || fail "guest-shutdown: QEMU still running after 30 s"
	say "  guest-shutdown: QEMU exited ($(elapsed "$t0") s incl. 2 s of fixed sleeps); guest said: $(grep -a 'pim-testbed: shutdown' "$run/serial.log" | tr -d '\r')"
}

verify_noagent() {
	boot guest-noagent.qcow2
	check_ssh
	sshg 'pidof qemu-ga' >/dev/null && fail "qemu-ga runs in the noagent guest"
	sshg 'pidof acpid' >/dev/null || fail "acpid does not run in the noagent guest"
	local t0
	t0=$(now)
	qmp '{"execute":"system_powerdown"}' >/dev/null
	wait_exit 30 || fail "system_powerdown: QEMU still running after 30 s"
	say "  system_powerdown: QEMU exited after $(elapsed "$t0") s (incl. 1 s fixed sleep)"
}

verify_bare() {
	boot guest-bare.qcow2
	check_ssh
	sshg 'pidof qemu-ga || pidof acpid' >/dev/null && fail "qemu-ga or acpid runs in the bare guest"
	qmp '{"execute":"system_powerdown"}' >/dev/null
	if wait_exit 15; then fail "the bare guest obeyed system_powerdown"; fi
	say "  system_powerdown ignored: QEMU still running after 15 s"
	qmp '{"execute":"quit"}' >/dev/null
	wait_exit 10 || kill "$qpid"
}

verify_generic() {
	# A tiny initramfs: busybox + the generic kernel's modules; load 9p and
	# virtiofs, mount a -virtfs share, read a file from it, power off.
	local kver ir="$run/gir" share="$run/share"
	kver=$(ls "$tb/generic/modules")
	rm -rf "$ir" "$share"
	mkdir -p "$ir"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,mnt,lib/modules} "$share"
	echo "hello over 9p" >"$share/hello"
	cp "$tb/busybox" "$ir/bin/busybox"
	"$tb/busybox" --list-full | while read -r a; do [ -e "$ir/$a" ] || ln -s /bin/busybox "$ir/$a"; done
	cp -a "$tb/generic/modules/$kver" "$ir/lib/modules/"
	cat >"$ir/init" <<'EOF'
#!/bin/sh
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in virtio_pci 9pnet_virtio 9p virtiofs virtio_net virtio_blk virtio_console; do
	modprobe $m || echo "generic: modprobe $m failed"
done
if mount -t 9p -o trans=virtio,version=9p2000.L host0 /mnt; then
	echo "generic: 9p says: $(cat /mnt/hello)"
	echo "written by the guest" >/mnt/from-guest
	umount /mnt
fi
echo "generic: modules: $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
poweroff -f
EOF
	chmod 755 "$ir/init"
	(cd "$ir" && find . | cpio --quiet -o -H newc --owner=0:0) | gzip -1 >"$run/gir.gz"
	rm -f "$run/serial.log"
	local t0
	t0=$(now)
	timeout 120 qemu-system-x86_64 -machine "$machine" -accel "$accel" -smp "$smp" -m 256 -display none -nodefaults -no-reboot \
		-serial "file:$run/serial.log" \
		-kernel "$tb/generic/vmlinuz" -initrd "$run/gir.gz" -append "console=ttyS0 quiet" \
		-virtfs "local,path=$share,mount_tag=host0,security_model=none" ||
		fail "generic kernel: QEMU failed or timed out"
	grep -q 'generic: 9p says: hello over 9p' "$run/serial.log" || fail "generic kernel: no 9p"
	[ "$(cat "$share/from-guest" 2>/dev/null)" = "written by the guest" ] || fail "generic kernel: 9p write"
	say "generic: kernel $kver mounted the 9p share read/write; boot+poweroff $(elapsed "$t0") s"
	say "  $(grep -a 'generic: modules:' "$run/serial.log" | tr -d '\r')"
	grep -a 'failed' "$run/serial.log" && fail "generic kernel: a module failed to load"
	return 0
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(full noagent bare generic)
for t in "${targets[@]}"; do
	case "$t" in
		full | noagent | bare | generic) "verify_$t" ;;
		*) fail "unknown target $t" ;;
	esac
	qpid=
done
say "all ok: ${targets[*]}"
