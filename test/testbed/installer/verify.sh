#!/usr/bin/env bash
# Prove the installer ISOs of build.sh (in this directory) work, without pim:
# serve a preseed / autoinstall user-data from a python3 HTTP server on
# 127.0.0.1, boot each installer's kernel and initrd (extracted from its ISO
# with xorriso) under QEMU/TCG with the ISO as a CD, -no-reboot and an empty
# qcow2 disk, wait for QEMU to exit, then boot the installed disk through
# SeaBIOS, check it over ssh (its host key pinned from the guest agent), write
# a file, shut it down and check the file on the next boot.
#
# needs: qemu-system-x86 qemu-utils xorriso openssh-client python3 (and what build.sh needs)
#
# Usage: test/testbed/installer/verify.sh [parse|di|ubuntu|prompt|inject|errors|real]...
#   default: all of them (real only when di-real.iso is built)
#   parse   the preseed and autoinstall parsers, on the host (busybox awk), no VM
#   di      di.iso: install, boot, ssh, guest-shutdown, boot again, persistence, ACPI powerdown
#   ubuntu  ubuntu.iso: the same with autoinstall user-data (keys from ssh: authorized-keys)
#   prompt  di.iso booted through isolinux: Esc and a command line typed at its
#           boot: prompt with QMP send-key (as Packer's boot_command over VNC), install
#   inject  di.iso with /preseed.cfg appended to its initrd (pim-build's boot.inject), no url=
#   errors  an unfetchable preseed (the installer waits), Ubuntu without the word
#           autoinstall (waits), a failing late_command with poweroff false (finishes, reboots)
#   real    di-real.iso: the real debian-installer fetches the preseed (then it is stopped)
# Environment: PIM_TESTBED_DIR (as ../build.sh), PIM_TESTBED_ACCEL (default tcg),
#   PIM_TESTBED_MACHINE (default pc; q35 works too: its CD is on AHCI, unused by the installer),
#   PIM_TESTBED_DISK_SIZE (default 512M), PIM_TESTBED_MEM (default 256; MiB),
#   PIM_TESTBED_REAL_MEM (default 1024: the real installer's initrd does not unpack
#   in 256 MiB, and at 512 or 768 MiB it stops at a "Low memory" note before the
#   network and never fetches, unless lowmem/low=true is on its command line)
# Progress and results go to stderr; exits non-zero on the first failure.

set -euo pipefail
exec 1>&2

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tb=${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}
inst=$tb/installer
accel=${PIM_TESTBED_ACCEL:-tcg}
machine=${PIM_TESTBED_MACHINE:-pc}
disk_size=${PIM_TESTBED_DISK_SIZE:-512M}
mem=${PIM_TESTBED_MEM:-256}
real_mem=${PIM_TESTBED_REAL_MEM:-1024}

[ -f "$inst/stamp" ] || {
	echo "verify: no installer ISOs in $inst (run build.sh)"
	exit 1
}
for t in qemu-system-x86_64 qemu-img xorriso ssh python3; do
	command -v "$t" >/dev/null || {
		echo "verify: missing $t"
		exit 1
	}
done

run=$(mktemp -d /tmp/pim-installer-verify.XXXXXX)
qpid=
hpid=
log= # the serial log of the current guest, shown on failure
cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid" 2>/dev/null || true; fi
	if [ -n "$hpid" ] && kill -0 "$hpid" 2>/dev/null; then kill "$hpid" 2>/dev/null || true; fi
	rm -rf "$run"
}
trap cleanup EXIT

say() { printf 'verify: %s\n' "$*"; }
fail() {
	printf 'verify: FAIL: %s\n' "$*"
	if [ -n "$log" ] && [ -f "$log" ]; then
		echo "---- serial (last 40 lines) ----"
		tail -n 40 "$log" | tr -d '\r'
	fi
	if [ -s "$run/qemu.err" ]; then
		echo "---- QEMU's stderr ----"
		tail -n 5 "$run/qemu.err"
	fi
	echo "---- http requests ----"
	grep -a '"GET ' "$run/http.log" 2>/dev/null | tail -n 10 || true
	exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
ctl() { python3 "$here/ctl.py" "$@"; }

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for FILE REGEX SECONDS: until a line of FILE matches (grep -E), or QEMU
# ($qpid, when set) exits; 1 after SECONDS.
wait_for() {
	local _
	for _ in $(seq 1 $(($3 * 10))); do
		grep -aqE "$2" "$1" 2>/dev/null && return 0
		if [ -n "$qpid" ] && ! kill -0 "$qpid" 2>/dev/null; then
			grep -aqE "$2" "$1" 2>/dev/null && return 0
			return 1
		fi
		sleep 0.1
	done
	return 1
}
wait_exit() { # seconds: until QEMU ($qpid) is gone
	local _
	for _ in $(seq 1 $(($1 * 10))); do
		kill -0 "$qpid" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}
stop_qemu() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
		kill "$qpid" 2>/dev/null || true
		wait_exit 10 || kill -9 "$qpid" 2>/dev/null || true
	fi
	qpid=
}

# --- the host side: an HTTP server and what it serves --------------------------
mkdir -p "$run/www"
hport=$(free_port)
python3 -u -m http.server --bind 127.0.0.1 --directory "$run/www" "$hport" >"$run/http.log" 2>&1 &
hpid=$!
wait_for "$run/http.log" '^Serving HTTP' 10 || fail "python3 -m http.server did not start"
url=http://10.0.2.2:$hport # the host, as QEMU's user networking shows it to the guest
requests() { grep -ac "\"GET $1 " "$run/http.log" || true; }

cp "$tb/id_ed25519.pub" "$run/www/authorized_keys"
# Run in the installed system by the late command (in-target / curtin in-target).
cat >"$run/www/late.sh" <<EOF
set -e
echo "late.sh runs in \$(pwd), as \$(id -un)"
test -f /etc/os-release
echo marker-from-late >/root/pim-marker
if [ "\${1:-}" = keys ]; then
	mkdir -p /root/.ssh
	wget -qO /root/.ssh/authorized_keys $url/authorized_keys
	chmod 700 /root/.ssh
	chmod 600 /root/.ssh/authorized_keys
fi
EOF
# The preseed: multi-line commands as real preseeds write them.
cat >"$run/www/preseed.cfg" <<EOF
# pim installer verify.sh
d-i debian-installer/locale string en_US
d-i netcfg/get_hostname string pimdi
d-i passwd/username string pim
d-i preseed/early_command string echo early-ran >/tmp/early; \\
    echo "early_command: disk untouched: \$(head -c 512 /dev/vda | tr -d '\\0' | wc -c) non-zero bytes"
d-i preseed/late_command string \\
    cp /tmp/early /target/root/early.txt; \\
    wget -qO /target/tmp/late.sh $url/late.sh && \\
    in-target sh /tmp/late.sh keys
d-i debian-installer/exit/poweroff boolean true
EOF
# ... and one whose late command writes no key and fails.
sed 's|in-target sh /tmp/late.sh keys|in-target sh /tmp/late.sh; exit 3|; s|exit/poweroff boolean true|exit/poweroff boolean false|' \
	"$run/www/preseed.cfg" >"$run/www/preseed-fails.cfg"
# The autoinstall: keys from ssh: authorized-keys (a flow list, as pim's template
# writes it), pim's curtin in-target late command.
mkdir -p "$run/www/ubuntu" "$run/www/ubuntu-nokey"
cat >"$run/www/ubuntu/user-data" <<EOF
#cloud-config
# pim installer verify.sh
autoinstall:
  version: 1
  identity:
    hostname: pimubuntu
    username: pim
    password: "\$6\$pim\$x"
  ssh:
    install-server: true
    allow-pw: true
    authorized-keys: ["$(cat "$tb/id_ed25519.pub")"]
  early-commands:
    - echo early-ran >/tmp/early
  late-commands:
    - cp /tmp/early /target/root/early.txt
    - curtin in-target -- sh -c 'wget -qO /tmp/late.sh $url/late.sh && sh /tmp/late.sh'
  shutdown: poweroff
EOF
printf 'instance-id: pim-verify\nlocal-hostname: pimubuntu\n' >"$run/www/ubuntu/meta-data"

# --- guests ---------------------------------------------------------------------
# extract ISO PATH DEST: a file out of an ISO, as pim-build does.
extract() {
	rm -f "$3"
	xorriso -osirrox on -indev "$1" -extract "$2" "$3" >"$run/xorriso.log" 2>&1 ||
		fail "xorriso could not extract $2 from $1: $(tail -n 3 "$run/xorriso.log")"
	chmod u+w "$3"
}

# install NAME ISO KERNEL INITRD APPEND [seconds]: the installer's kernel and
# initrd from the ISO, direct kernel boot, until QEMU exits.
install() {
	local name=$1 iso=$2 t0
	extract "$iso" "$3" "$run/vmlinuz"
	extract "$iso" "$4" "$run/initrd"
	rm -f "$run/$name.qcow2"
	qemu-img create -q -f qcow2 "$run/$name.qcow2" "$disk_size"
	log=$run/$name-install.log
	t0=$(now)
	qemu-system-x86_64 -machine "$machine" -accel "$accel" -m "$mem" -display none -nodefaults -no-reboot \
		-serial "file:$log" \
		-kernel "$run/vmlinuz" -initrd "$run/initrd" -append "$5" \
		-cdrom "$iso" \
		-drive "file=$run/$name.qcow2,if=virtio,format=qcow2" \
		-netdev user,id=n0 -device virtio-net-pci,netdev=n0 2>>"$run/qemu.err" &
	qpid=$!
	wait_exit "${6:-300}" || fail "$name: the installer still runs after ${6:-300} s"
	wait "$qpid" || fail "$name: QEMU failed"
	qpid=
	grep -aq '^pim-installer: installation complete' "$log" || fail "$name: the installer did not finish"
	say "$name: installed in $(elapsed "$t0") s (QEMU start to exit, ${disk_size} disk)"
}

# boot NAME: the installed disk, through SeaBIOS, until "pim-testbed ready".
boot() {
	local name=$1 t0
	rm -f "$run"/{qmp,ga,pid}
	port=$(free_port)
	log=$run/$name-boot$((++boots)).log
	t0=$(now)
	qemu-system-x86_64 -machine "$machine" -accel "$accel" -m "$mem" -display none -nodefaults \
		-serial "file:$log" \
		-qmp "unix:$run/qmp,server=on,wait=off" \
		-device virtio-serial \
		-chardev "socket,id=ga,path=$run/ga,server=on,wait=off" \
		-device virtserialport,chardev=ga,name=org.qemu.guest_agent.0 \
		-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
		-drive "file=$run/$name.qcow2,if=virtio,format=qcow2" \
		-daemonize -pidfile "$run/pid" 2>>"$run/qemu.err" || fail "$name: QEMU did not start: $(tail -n 3 "$run/qemu.err")"
	qpid=$(cat "$run/pid")
	wait_for "$log" '^pim-testbed ready' 90 || fail "$name: no 'pim-testbed ready' within 90 s"
	say "$name: boot $boots from the disk: ready after $(elapsed "$t0") s"
	# The host key, pinned: read through the guest agent, then ssh checks it strictly.
	local pub
	pub=$(ctl ga-cat "$run/ga" /etc/ssh/ssh_host_ed25519_key.pub) || fail "$name: guest-file-read of the host key failed"
	grep -q '^ssh-ed25519 ' <<<"$pub" || fail "$name: /etc/ssh/ssh_host_ed25519_key.pub: $pub"
	echo "[127.0.0.1]:$port $pub" >"$run/known_hosts"
	if [ -n "${hostkey:-}" ] && [ "$hostkey" != "$(cut -d' ' -f1,2 <<<"$pub")" ]; then
		fail "$name: the host key changed between boots"
	fi
	hostkey=$(cut -d' ' -f1,2 <<<"$pub")
}

sshg() {
	ssh -i "$tb/id_ed25519" -p "$port" -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$run/known_hosts" \
		-o LogLevel=ERROR -o ConnectTimeout=10 -o BatchMode=yes root@127.0.0.1 "$@"
}

shutdown_ga() {
	local t0
	t0=$(now)
	ctl ga "$run/ga" '{"execute":"guest-shutdown"}' >/dev/null || fail "guest-shutdown failed"
	wait_exit 30 || fail "guest-shutdown: QEMU still runs after 30 s"
	qpid=
	say "  guest-shutdown: QEMU exited after $(elapsed "$t0") s"
}
shutdown_acpi() {
	local t0
	t0=$(now)
	ctl qmp "$run/qmp" '{"execute":"system_powerdown"}' >/dev/null || fail "system_powerdown failed"
	wait_exit 30 || fail "system_powerdown: QEMU still runs after 30 s"
	qpid=
	say "  ACPI system_powerdown: QEMU exited after $(elapsed "$t0") s"
}

# installed NAME HOSTNAME: the checks of a first boot.
check_installed() {
	local name=$1 out
	out=$(sshg 'cat /root/pim-marker /root/early.txt; hostname; id pim; ls -ln /root/.ssh/authorized_keys; df -m / | tail -n 1') ||
		fail "$name: ssh as root with the test bed key failed"
	grep -q '^marker-from-late$' <<<"$out" || fail "$name: no marker from the late command: $out"
	grep -q '^early-ran$' <<<"$out" || fail "$name: the early command's file did not reach the late command: $out"
	grep -qx "$2" <<<"$out" || fail "$name: hostname is not $2: $out"
	grep -q 'uid=1000(pim)' <<<"$out" || fail "$name: no user pim: $out"
	say "  ssh (host key pinned from guest-file-read): late-command marker, early command, hostname $2, user pim"
	say "  root: $(tail -n 1 <<<"$out" | awk '{ print $1 ", " $2 " MiB, " $3 " MiB used" }')"
	sshg "echo written-over-ssh-$boots >/root/pim-persist" || fail "$name: ssh write failed"
}
check_persisted() {
	local out
	out=$(sshg 'cat /root/pim-persist') || fail "$1: ssh failed on the second boot"
	[ "$out" = "written-over-ssh-1" ] || fail "$1: the file written on the first boot is gone: $out"
	say "  the file written over ssh on the first boot survived the shutdown"
	# The shutdown shims remount / read-only first: no journal to replay.
	if sshg 'dmesg | grep -q "EXT4-fs (vda2): recovery complete"'; then
		say "  WARNING: the root file system was not left clean (journal recovered)"
	fi
}

# --- targets --------------------------------------------------------------------
verify_parse() {
	local d=$run/parse bb=$tb/busybox
	rm -rf "$d" && mkdir -p "$d/p" "$d/u" "$d/v"
	"$bb" awk -v out="$d/p" -f "$here/lib/preseed.awk" "$run/www/preseed.cfg" || fail "preseed.awk failed"
	[ "$(cat "$d/p/preseed_late_command")" = "    cp /tmp/early /target/root/early.txt;     wget -qO /target/tmp/late.sh $url/late.sh &&     in-target sh /tmp/late.sh keys" ] ||
		fail "preseed.awk: late_command is [$(cat "$d/p/preseed_late_command")]"
	[ "$(cat "$d/p/debian-installer_exit_poweroff")" = true ] || fail "preseed.awk: exit/poweroff"
	"$bb" awk -v out="$d/u" -f "$here/lib/autoinstall.awk" "$run/www/ubuntu/user-data" || fail "autoinstall.awk failed"
	[ "$(cat "$d/u/autoinstall_ssh_authorized-keys.001")" = "$(cat "$tb/id_ed25519.pub")" ] || fail "autoinstall.awk: flow list of keys"
	[ "$(cat "$d/u/autoinstall_late-commands.002")" = "curtin in-target -- sh -c 'wget -qO /tmp/late.sh $url/late.sh && sh /tmp/late.sh'" ] ||
		fail "autoinstall.awk: late-commands: [$(cat "$d/u/autoinstall_late-commands.002")]"
	[ "$(cat "$d/u/autoinstall_shutdown")" = poweroff ] || fail "autoinstall.awk: shutdown"
	# Block lists, quoting, comments, and keys outside autoinstall: left alone.
	cat >"$d/ud" <<-'EOF'
		#cloud-config
		autoinstall:
		  ssh:
		    authorized-keys:
		      - ssh-ed25519 AAAA one # a comment
		      - "ssh-ed25519 BBBB two"
		  late-commands:
		  - 'echo it''s'
		  - "echo \"q\""
		  shutdown: reboot
		runcmd:
		  - not this
	EOF
	"$bb" awk -v out="$d/v" -f "$here/lib/autoinstall.awk" "$d/ud" || fail "autoinstall.awk failed on block lists"
	[ "$(cat "$d/v/autoinstall_ssh_authorized-keys.001")" = "ssh-ed25519 AAAA one" ] &&
		[ "$(cat "$d/v/autoinstall_ssh_authorized-keys.002")" = "ssh-ed25519 BBBB two" ] &&
		[ "$(cat "$d/v/autoinstall_late-commands.001")" = "echo it's" ] &&
		[ "$(cat "$d/v/autoinstall_late-commands.002")" = 'echo "q"' ] &&
		[ "$(cat "$d/v/autoinstall_shutdown")" = reboot ] &&
		[ ! -e "$d/v/autoinstall_runcmd.001" ] || fail "autoinstall.awk: block lists: $(head -v "$d"/v/* 2>&1)"
	printf 'autoinstall:\n  version: 1\n' >"$d/nohdr"
	if "$bb" awk -v out="$d/v" -f "$here/lib/autoinstall.awk" "$d/nohdr"; then fail "autoinstall.awk took user-data without #cloud-config"; fi
	say "parse: preseed (continued lines) and autoinstall (flow and block lists, quoting) ok"
}

verify_di() {
	local n
	n=$(requests /preseed.cfg)
	install di "$inst/di.iso" /install.amd/vmlinuz /install.amd/initrd.gz \
		"auto=true priority=critical url=$url/preseed.cfg console=ttyS0 ---"
	[ "$(requests /preseed.cfg)" -gt "$n" ] || fail "di: the preseed was not fetched"
	grep -aq 'early_command: disk untouched: 0 non-zero bytes' "$log" || fail "di: early_command did not run before the disk was written"
	boots=0 hostkey=
	boot di
	check_installed di pimdi
	shutdown_ga
	boot di
	check_persisted di
	shutdown_acpi
}

verify_ubuntu() {
	local n
	n=$(requests /ubuntu/user-data)
	install ubuntu "$inst/ubuntu.iso" /casper/vmlinuz /casper/initrd \
		"console=ttyS0 autoinstall ds=nocloud;s=$url/ubuntu/ ---"
	[ "$(requests /ubuntu/user-data)" -gt "$n" ] || fail "ubuntu: user-data was not fetched"
	boots=0 hostkey=
	boot ubuntu
	check_installed ubuntu pimubuntu
	shutdown_acpi
	boot ubuntu
	check_persisted ubuntu
	shutdown_ga
}

# prompt_install NAME ISO LINE: boot ISO through SeaBIOS and isolinux, press Esc,
# type LINE and Enter at its boot: prompt, wait for the install to finish.
prompt_install() {
	local name=$1 iso=$2 line=$3 t0
	rm -f "$run/$name.qcow2" "$run/qmp"
	qemu-img create -q -f qcow2 "$run/$name.qcow2" "$disk_size"
	log=$run/$name.log
	t0=$(now)
	qemu-system-x86_64 -machine "$machine" -accel "$accel" -m "$mem" -display none -nodefaults -no-reboot -vga std \
		-serial "file:$log" -qmp "unix:$run/qmp,server=on,wait=off" \
		-cdrom "$iso" -boot d \
		-drive "file=$run/$name.qcow2,if=virtio,format=qcow2" \
		-netdev user,id=n0 -device virtio-net-pci,netdev=n0 2>>"$run/qemu.err" &
	qpid=$!
	wait_for "$log" 'boot:' 60 || fail "$name: no isolinux boot: prompt on the serial console"
	say "$name: isolinux boot: prompt after $(elapsed "$t0") s"
	# Esc then a pause, as Packer's Debian boot_commands do ("<esc><wait>"):
	# a key right after Esc would be read as part of an escape sequence.
	ctl keys "$run/qmp" "<esc><wait>$line<enter>" || fail "$name: send-key failed"
	wait_exit 300 || fail "$name: the installer still runs after 300 s"
	qpid=
	grep -aq "command line: .*${line#* }" "$log" || fail "$name: the typed command line did not reach the kernel"
	grep -aq '^pim-installer: installation complete' "$log" || fail "$name: the installer did not finish"
	say "$name: typed '<esc><wait>$line<enter>' with send-key; installed $(elapsed "$t0") s after power on"
}

verify_prompt() {
	prompt_install prompt-di "$inst/di.iso" "install auto=true priority=critical url=$url/preseed.cfg ---"
	prompt_install prompt-ubuntu "$inst/ubuntu.iso" "autoinstall ds=nocloud;s=$url/ubuntu/ ---"
}

verify_inject() {
	# pim-build's boot.inject (virt-install --initrd-inject): /preseed.cfg in a
	# gzip'd cpio appended to the initrd (after its uncompressed payload), and
	# neither url= nor auto=true on the command line.
	local d=$run/inject n
	rm -rf "$d" && mkdir -p "$d"
	cp "$run/www/preseed.cfg" "$d/preseed.cfg"
	extract "$inst/di.iso" /install.amd/initrd.gz "$run/initrd.base"
	(cd "$d" && echo preseed.cfg | cpio --quiet -o -H newc --owner=0:0 | gzip -n) >"$d/add.cpio.gz"
	cat "$run/initrd.base" "$d/add.cpio.gz" >"$run/initrd.injected"
	extract "$inst/di.iso" /install.amd/vmlinuz "$run/vmlinuz"
	rm -f "$run/inject.qcow2"
	qemu-img create -q -f qcow2 "$run/inject.qcow2" "$disk_size"
	log=$run/inject.log
	n=$(requests /preseed.cfg)
	local t0
	t0=$(now)
	qemu-system-x86_64 -machine "$machine" -accel "$accel" -m "$mem" -display none -nodefaults -no-reboot -serial "file:$log" \
		-kernel "$run/vmlinuz" -initrd "$run/initrd.injected" -append "priority=critical console=ttyS0 ---" \
		-cdrom "$inst/di.iso" \
		-drive "file=$run/inject.qcow2,if=virtio,format=qcow2" -netdev user,id=n0 -device virtio-net-pci,netdev=n0 2>>"$run/qemu.err" &
	qpid=$!
	wait_exit 300 || fail "inject: the installer still runs after 300 s"
	qpid=
	grep -aq '^pim-installer: read preseed /preseed.cfg from the initrd' "$log" || fail "inject: /preseed.cfg in the initrd not read"
	grep -aq '^pim-installer: late_command finished (status 0)' "$log" || fail "inject: the late command did not succeed"
	grep -aq '^pim-installer: installation complete; power off' "$log" || fail "inject: the installer did not finish"
	[ "$(requests /preseed.cfg)" = "$n" ] || fail "inject: the installer fetched a preseed though none was on its command line"
	say "inject: /preseed.cfg appended to the initrd, no url=: installed in $(elapsed "$t0") s"
}

verify_errors() {
	local t0
	# 1. the preseed cannot be fetched: the installer says so and waits
	rm -f "$run/err.qcow2"
	qemu-img create -q -f qcow2 "$run/err.qcow2" "$disk_size"
	extract "$inst/di.iso" /install.amd/vmlinuz "$run/vmlinuz"
	extract "$inst/di.iso" /install.amd/initrd.gz "$run/initrd"
	log=$run/err1.log
	t0=$(now)
	qemu-system-x86_64 -machine "$machine" -accel "$accel" -m "$mem" -display none -nodefaults -no-reboot -serial "file:$log" \
		-kernel "$run/vmlinuz" -initrd "$run/initrd" \
		-append "auto=true priority=critical url=$url/missing.cfg console=ttyS0 ---" \
		-drive "file=$run/err.qcow2,if=virtio,format=qcow2" -netdev user,id=n0 -device virtio-net-pci,netdev=n0 2>>"$run/qemu.err" &
	qpid=$!
	wait_for "$log" '^pim-installer: waiting' 90 || fail "errors: no wait after a failed fetch"
	grep -aq '^pim-installer: ERROR: failed to retrieve the preconfiguration file' "$log" || fail "errors: no fetch error"
	kill -0 "$qpid" || fail "errors: the installer exited instead of waiting"
	stop_qemu
	say "errors: unfetchable preseed: logged and waited ($(elapsed "$t0") s, 5 tries)"
	# 2. Ubuntu without the word autoinstall: fetches, then waits
	extract "$inst/ubuntu.iso" /casper/vmlinuz "$run/vmlinuz"
	extract "$inst/ubuntu.iso" /casper/initrd "$run/initrd"
	log=$run/err2.log
	t0=$(now)
	qemu-system-x86_64 -machine "$machine" -accel "$accel" -m "$mem" -display none -nodefaults -no-reboot -serial "file:$log" \
		-kernel "$run/vmlinuz" -initrd "$run/initrd" -append "console=ttyS0 ds=nocloud;s=$url/ubuntu/ ---" \
		-drive "file=$run/err.qcow2,if=virtio,format=qcow2" -netdev user,id=n0 -device virtio-net-pci,netdev=n0 2>>"$run/qemu.err" &
	qpid=$!
	wait_for "$log" '^pim-installer: waiting' 90 || fail "errors: ubuntu without autoinstall did not wait"
	grep -aq "no 'autoinstall' on the kernel command line" "$log" || fail "errors: no message about autoinstall"
	stop_qemu
	say "errors: ubuntu without 'autoinstall': logged and waited ($(elapsed "$t0") s)"
	# 3. a failing late_command, exit/poweroff false: finishes and reboots (QEMU exits)
	install errfail "$inst/di.iso" /install.amd/vmlinuz /install.amd/initrd.gz \
		"auto=true priority=critical url=$url/preseed-fails.cfg console=ttyS0 ---"
	grep -aq '^pim-installer: late_command FAILED with status 3' "$log" || fail "errors: no late_command status"
	grep -aq '^pim-installer: installation complete; reboot' "$log" || fail "errors: did not reboot"
	say "errors: failing late_command: status 3 logged, install finished, rebooted (QEMU -no-reboot exited)"
	# No key written by the late command: the image itself must let nobody in.
	boots=0 hostkey=
	boot errfail
	local out
	if out=$(sshg true 2>&1); then fail "errors: ssh as root works on a system whose installer wrote no key"; fi
	grep -q 'Permission denied' <<<"$out" || fail "errors: ssh failed, but not for want of a key: $out"
	say "  no key from the installer: ssh as root is refused (Permission denied)"
	shutdown_acpi
}

verify_real() {
	[ -f "$inst/di-real.iso" ] || fail "no $inst/di-real.iso (build.sh --real)"
	local t0 n
	extract "$inst/di-real.iso" /install.amd/vmlinuz "$run/vmlinuz"
	extract "$inst/di-real.iso" /install.amd/initrd.gz "$run/initrd"
	rm -f "$run/real.qcow2"
	qemu-img create -q -f qcow2 "$run/real.qcow2" "$disk_size"
	log=$run/real.log
	n=$(requests /preseed.cfg)
	t0=$(now)
	qemu-system-x86_64 -machine "$machine" -accel "$accel" -m "$real_mem" -display none -nodefaults -no-reboot -serial "file:$log" \
		-kernel "$run/vmlinuz" -initrd "$run/initrd" \
		-append "auto=true priority=critical url=$url/preseed.cfg console=ttyS0 ---" \
		-cdrom "$inst/di-real.iso" \
		-drive "file=$run/real.qcow2,if=virtio,format=qcow2" -netdev user,id=n0 -device virtio-net-pci,netdev=n0 2>>"$run/qemu.err" &
	qpid=$!
	local _
	for _ in $(seq 1 1800); do
		[ "$(requests /preseed.cfg)" -gt "$n" ] && break
		kill -0 "$qpid" 2>/dev/null || fail "real: QEMU exited before fetching the preseed"
		sleep 0.1
	done
	[ "$(requests /preseed.cfg)" -gt "$n" ] || fail "real: the real installer did not fetch the preseed within 180 s"
	say "real: debian-installer ($real_mem MiB) fetched the preseed after $(elapsed "$t0") s"
	stop_qemu
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	targets=(parse di ubuntu prompt inject errors)
	[ -f "$inst/di-real.iso" ] && targets+=(real)
fi
for t in "${targets[@]}"; do
	case "$t" in
		parse | di | ubuntu | prompt | inject | errors | real) "verify_$t" ;;
		*) fail "unknown target $t" ;;
	esac
	qpid=
done
say "all ok: ${targets[*]}"
