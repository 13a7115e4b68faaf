#!/usr/bin/env bats
# pim-kboot under TCG with the test bed's generic Debian kernel (it has 9p as
# modules; the cloud kernel has none): an initramfs packed by --initramfs-from
# from a directory made here, --exec output and status, shares both ways,
# headless VMs seen by pim-ps/pim-qmp/pim-stop, bad inputs (directories, FIFOs,
# pipes, ELFs that are no kernel), a private cache, parallel runs, Ctrl-C at each
# step and a closed stdout (no VM, process or runtime file left), panic and timeout.
# Waits are on readiness (a line through a FIFO) and bounded; none sleeps.
load helper

setup_file() {
	pim_isolate
	need_testbed
	export KERNEL="$TESTBED/generic/vmlinuz"
	export PIM_BUSYBOX="$TESTBED/busybox"
	# an initramfs tree: the generic kernel's virtio/9p modules, and a marker file
	export ROOTFS="$PIM_TMP/rootfs"
	mkdir -p "$ROOTFS/lib/modules" "$ROOTFS/etc"
	cp -r "$TESTBED"/generic/modules/* "$ROOTFS/lib/modules/"
	echo "made-by-the-test" >"$ROOTFS/etc/marker"
}

teardown_file() {
	pim_cleanup
}

no_vm_left() {
	run pim-ps -q
	[ "$status" -eq 0 ]
	[ -z "$output" ]
	! ls "$XDG_RUNTIME_DIR"/pim/*.pid 2>/dev/null
	# nothing but the logs (kept for a post-mortem): no sockets, metadata, stage dirs
	run bash -c 'ls -A "$XDG_RUNTIME_DIR/pim" 2>/dev/null | grep -v "\.log$"'
	[ -z "$output" ]
	# and no QEMU of this test file (its command line names the runtime dir)
	! pgrep -f "qemu-system.*$XDG_RUNTIME_DIR/pim/"
}

# start_bg FIFO CMD...: run CMD in the background with stdout on FIFO (made here),
# held open on fd 9 (so reading it never ends the writer); the pid is in $bg.
start_bg() {
	local fifo=$1
	shift
	mkfifo "$fifo"
	"$@" >"$fifo" 2>"$fifo.err" &
	bg=$!
	exec 9<"$fifo"
}

# await_line: the next line on fd 9 (bounded: 120 s), in $line.
await_line() {
	read -r -t 120 -u 9 line
}

# reap PID: its exit status in $st, bounded: killed after 60 s times PIM_TEST_SLOW (status 137).
reap() {
	local pid=$1
	# the watchdog is a forked copy of this bats process: without bats' traps
	# (killed, it would report the test a second time) and off its output
	(
		trap - EXIT ERR INT TERM
		sleep "$(slow 60)" && kill -9 "$pid" 2>/dev/null
	) >/dev/null 2>&1 3>&- &
	local dog=$!
	st=0
	wait "$pid" || st=$?
	pkill -P "$dog" sleep 2>/dev/null || true
	kill "$dog" 2>/dev/null || true
	exec 9<&- 2>/dev/null || true
}

@test "--exec runs in an initramfs packed from a directory and returns output and status" {
	run --separate-stderr pim-kboot --kernel "$KERNEL" --initramfs-from "$ROOTFS" --exec 'cat /etc/marker; uname -r; exit 0'
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "made-by-the-test" ]
	[[ "${lines[1]}" == *-amd64 ]]
	[ "${#lines[@]}" -eq 2 ] # no kernel messages in the output
	no_vm_left
}

@test "--exec passes a non-zero status through, and stderr comes out too" {
	run --separate-stderr pim-kboot --kernel "$KERNEL" --initramfs-from "$ROOTFS" --exec 'echo out; echo err >&2; exit 7'
	[ "$status" -eq 7 ]
	[ "$output" = "$(printf 'out\nerr')" ]
	no_vm_left
}

@test "packing an unchanged directory again is a cache hit" {
	run pim-kboot --kernel "$KERNEL" --initramfs-from "$ROOTFS" --exec true
	[ "$status" -eq 0 ]
	n=$(ls "$XDG_CACHE_HOME"/pim/kboot/initramfs-*.cpio | wc -l)
	PIM_LOG=debug run pim-kboot --kernel "$KERNEL" --initramfs-from "$ROOTFS" --exec true
	[ "$status" -eq 0 ]
	[[ "$output" == *"(cached,"* ]]
	[ "$(ls "$XDG_CACHE_HOME"/pim/kboot/initramfs-*.cpio | wc -l)" -eq "$n" ]
}

@test "--share: a host file is read in the guest and a guest file on the host (9p)" {
	share="$PIM_TMP/share"
	mkdir -p "$share"
	echo "written-on-host" >"$share/h.txt"
	run --separate-stderr pim-kboot --fs 9p --kernel "$KERNEL" --initramfs-from "$ROOTFS" --share "$share:hs" \
		--exec 'cat /mnt/hs/h.txt && echo written-in-guest >/mnt/hs/g.txt'
	[ "$status" -eq 0 ]
	[ "$output" = "written-on-host" ]
	[ "$(cat "$share/g.txt")" = "written-in-guest" ]
	no_vm_left
}

@test "--root-share boots with a host directory as the root filesystem" {
	root="$PIM_TMP/sysroot"
	mkdir -p "$root/bin" "$root/etc"
	cp "$TESTBED/busybox" "$root/bin/busybox"
	ln -s busybox "$root/bin/sh"
	ln -s busybox "$root/bin/cat"
	echo "live-file" >"$root/etc/live"
	run --separate-stderr pim-kboot --fs 9p --kernel "$KERNEL" --initramfs-from "$ROOTFS" --root-share "$root" --exec 'cat /etc/live; echo back >/etc/fromguest'
	[ "$status" -eq 0 ]
	[ "$output" = "live-file" ]
	[ "$(cat "$root/etc/fromguest")" = "back" ]
}

@test "a headless kboot VM is a pim VM: pim-ps, pim-qmp and pim-stop work on it" {
	run --separate-stderr pim-kboot kb1 --kernel "$KERNEL" --initramfs-from "$ROOTFS"
	[ "$status" -eq 0 ]
	[ "$output" = "kb1" ]
	run pim-ps -q
	[ "$output" = "kb1" ]
	run pim-qmp kb1 query-status
	[ "$status" -eq 0 ]
	[[ "$output" == *'"running":true'* ]]
	# pim's init runs acpid when the kernel has the button driver (a module here)
	run pim-stop kb1 --timeout 30
	[ "$status" -eq 0 ]
	[[ "$output" == $'kb1\tacpi\t'* ]]
	no_vm_left
}

@test "a kboot VM whose kernel cannot load the ACPI button driver stops in seconds (quit), not after the whole ACPI timeout (issue 19)" {
	mkdir -p "$PIM_TMP/nomods/etc"   # no modules in the initramfs: the power button is ignored
	run --separate-stderr pim-kboot kb2 --kernel "$KERNEL" --initramfs-from "$PIM_TMP/nomods"
	[ "$status" -eq 0 ]
	local t0=$SECONDS
	run pim-stop kb2 --timeout 60
	[ "$status" -eq 0 ]
	[[ "$output" == $'kb2\tquit\t'* ]]
	[ $((SECONDS - t0)) -lt 30 ]
	no_vm_left
}

@test "bad inputs: missing kernel 66, not a bzImage 65, missing initrd 66, bad initrd 65, missing share 66" {
	run pim-kboot --kernel "$PIM_TMP/nope" --exec true
	[ "$status" -eq 66 ]
	[[ "$output" == *"no such file"* ]]
	echo "not a kernel" >"$PIM_TMP/junk"
	run pim-kboot --kernel "$PIM_TMP/junk" --exec true
	[ "$status" -eq 65 ]
	[[ "$output" == *"bzImage"* ]]
	run pim-kboot --kernel "$KERNEL" --initrd "$PIM_TMP/nope" --exec true
	[ "$status" -eq 66 ]
	run pim-kboot --kernel "$KERNEL" --initrd "$PIM_TMP/junk" --exec true
	[ "$status" -eq 65 ]
	run pim-kboot --kernel "$KERNEL" --share "$PIM_TMP/nope" --exec true
	[ "$status" -eq 66 ]
	[[ "$output" == *"does not exist"* ]]
	run pim-kboot --kernel "$KERNEL" --initrd "$PIM_TMP/junk" --initramfs-from "$ROOTFS"
	[ "$status" -eq 64 ]
	no_vm_left
}

# one line on stderr, naming the file, no stack trace
one_line_error() {
	[ "${#stderr_lines[@]}" -eq 1 ]
	[[ "$stderr" == "pim-kboot: "*"$1"* ]]
	[[ "$stderr" != *"    at "* ]]
}

@test "a directory as kernel or initrd: 66 with one line, not EISDIR" {
	run --separate-stderr pim-kboot --kernel "$PIM_TMP" --exec true
	[ "$status" -eq 66 ]
	one_line_error "kernel $PIM_TMP is a directory"
	run --separate-stderr pim-kboot --kernel "$KERNEL" --initrd "$PIM_TMP" --exec true
	[ "$status" -eq 66 ]
	one_line_error "initrd $PIM_TMP is a directory"
	no_vm_left
}

@test "an ELF that is no kernel (--kernel /bin/true): 65, not 69" {
	run --separate-stderr pim-kboot --kernel /bin/true --exec true
	[ "$status" -eq 65 ]
	one_line_error "no PVH entry note"
	no_vm_left
}

@test "a FIFO with no writer as kernel or initrd: 66 at once, no hang" {
	mkfifo "$PIM_TMP/nowriter"
	run --separate-stderr timeout 20 pim-kboot --kernel "$PIM_TMP/nowriter" --exec true
	[ "$status" -eq 66 ]
	one_line_error "no one writing to it"
	run --separate-stderr timeout 20 pim-kboot --kernel "$KERNEL" --initrd "$PIM_TMP/nowriter" --exec true
	[ "$status" -eq 66 ]
	one_line_error "no one writing to it"
	rm -f "$PIM_TMP/nowriter"
	no_vm_left
	[ -z "$(ls "$XDG_CACHE_HOME/pim/kboot" | grep '^pipe-')" ]
}

@test "a pipe as kernel and as initrd (<(cat ...)) boots, and its copy is gone afterwards" {
	run --separate-stderr bash -c 'pim-kboot --kernel <(cat "$PIM_TESTBED_DIR/vmlinuz") --initrd <(cat "$PIM_TESTBED_DIR/initrd.gz") --exec "test -x /init && echo has-its-own-init"'
	[ "$status" -eq 0 ]
	[ "$output" = "has-its-own-init" ]
	no_vm_left
	[ -z "$(ls "$XDG_CACHE_HOME/pim/kboot" | grep '^pipe-')" ]
}

@test "the kboot cache is private: 0700 dirs, 0600 files, also for a 0600 file in --initramfs-from" {
	tree="$PIM_TMP/secret-tree"
	mkdir -p "$tree"
	cp -r "$ROOTFS"/. "$tree/"
	echo "s3cret" >"$tree/etc/key"
	chmod 600 "$tree/etc/key"
	mkdir -p "$XDG_CACHE_HOME/pim/kboot"
	chmod 755 "$XDG_CACHE_HOME/pim/kboot" # as an older pim left it
	run --separate-stderr pim-kboot --kernel "$KERNEL" --initramfs-from "$tree" --exec 'stat -c %a /etc/key; cat /etc/key'
	[ "$status" -eq 0 ]
	[ "$output" = "$(printf '600\ns3cret')" ]
	ls "$XDG_CACHE_HOME"/pim/kboot/vmlinux-* "$XDG_CACHE_HOME"/pim/kboot/base-*.cpio "$XDG_CACHE_HOME"/pim/kboot/initramfs-*.cpio
	[ -z "$(find "$XDG_CACHE_HOME/pim/kboot" -type d ! -perm 700)" ]
	[ -z "$(find "$XDG_CACHE_HOME/pim/kboot" -type f ! -perm 600)" ]
}

@test "three parallel --exec without a name: all exit 0, each under its own name" {
	for i in 1 2 3; do
		pim-kboot --kernel "$KERNEL" --mem 256M --exec "echo run-$i" >"$PIM_TMP/par$i.out" 2>"$PIM_TMP/par$i.err" &
		pids[i]=$!
	done
	for i in 1 2 3; do
		reap "${pids[i]}"
		[ "$st" -eq 0 ] || { cat "$PIM_TMP/par$i.err"; false; }
		[ "$(cat "$PIM_TMP/par$i.out")" = "run-$i" ]
	done
	# each took a name of its own: one log per name
	[ -f "$XDG_RUNTIME_DIR/pim/kboot.log" ]
	[ -f "$XDG_RUNTIME_DIR/pim/kboot-2.log" ]
	[ -f "$XDG_RUNTIME_DIR/pim/kboot-3.log" ]
	no_vm_left
}

@test "Ctrl-C during --exec: 130, no VM, no runtime files" {
	start_bg "$PIM_TMP/int.fifo" pim-kboot --kernel "$KERNEL" --exec 'echo started; exec sleep 1000'
	await_line
	[ "$line" = "started" ]
	kill -INT "$bg"
	reap "$bg"
	[ "$st" -eq 130 ]
	no_vm_left
}

@test "Ctrl-C while QEMU starts (made slow through PIM_QEMU): 130, no QEMU, no runtime files" {
	slow="$PIM_TMP/slow-qemu"
	printf '#!/bin/bash\necho "$$" >"%s"\nsleep 1000\nexec qemu-system-x86_64 "$@"\n' "$PIM_TMP/slow.fifo" >"$slow"
	chmod +x "$slow"
	mkfifo "$PIM_TMP/slow.fifo"
	PIM_QEMU=$slow pim-kboot --kernel "$KERNEL" --exec true 2>"$PIM_TMP/slow.err" &
	bg=$!
	read -r -t 120 wpid <"$PIM_TMP/slow.fifo"
	kill -INT "$bg"
	reap "$bg"
	[ "$st" -eq 130 ]
	! pgrep -g "$wpid" # the wrapper and its sleep: QEMU's whole process group
	no_vm_left
}

@test "Ctrl-C just as a real QEMU starts: 130, no QEMU, no runtime files" {
	wrap="$PIM_TMP/announce-qemu"
	printf '#!/bin/sh\necho "$$" >"%s"\nexec qemu-system-x86_64 "$@"\n' "$PIM_TMP/announce.fifo" >"$wrap"
	chmod +x "$wrap"
	mkfifo "$PIM_TMP/announce.fifo"
	PIM_QEMU=$wrap pim-kboot --kernel "$KERNEL" --exec true 2>"$PIM_TMP/announce.err" &
	bg=$!
	read -r -t 120 wpid <"$PIM_TMP/announce.fifo"
	kill -INT "$bg"
	reap "$bg"
	[ "$st" -eq 130 ]
	no_vm_left
}

@test "a closed stdout (| head -1) ends the VM" {
	run --separate-stderr bash -c 'timeout 120 pim-kboot --kernel "$KERNEL" --exec "while :; do echo y; done" | head -1; echo "status ${PIPESTATUS[0]}"'
	[ "${lines[0]}" = "y" ]
	[ "${lines[1]}" = "status 0" ]
	no_vm_left
}

@test "a kernel panic is reported with the log's last lines (69), no VM left" {
	run --separate-stderr pim-kboot --kernel "$KERNEL" --exec 'echo c >/proc/sysrq-trigger'
	[ "$status" -eq 69 ]
	[[ "$stderr" == *"panicked"* ]]
	[[ "$stderr" == *"Kernel panic - not syncing"* ]]
	no_vm_left
}

@test "a guest that never reaches userspace times out (75), no VM left" {
	hang="$PIM_TMP/hang"
	mkdir -p "$hang"
	printf '#!/pim/bin/sh\nexec /pim/bin/sleep 100000\n' >"$hang/hang"
	chmod +x "$hang/hang"
	run --separate-stderr pim-kboot --kernel "$KERNEL" --initramfs-from "$hang" --append rdinit=/hang --timeout 6 --exec true
	[ "$status" -eq 75 ]
	[[ "$stderr" == *"did not reach userspace within 6 s"* ]]
	no_vm_left
}

@test "--initrd: pim's archive is appended to a compressed initrd (cloud kernel, no 9p needed)" {
	run --separate-stderr pim-kboot --kernel "$TESTBED/vmlinuz" --initrd "$TESTBED/initrd.gz" --exec 'test -x /init && echo has-its-own-init; uname -r'
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "has-its-own-init" ]
	[[ "${lines[1]}" == *-cloud-amd64 ]]
	no_vm_left
}

@test "without a static busybox on the host, pim's init runs on the initramfs's own /bin/sh" {
	run --separate-stderr env PIM_BUSYBOX=/nonexistent pim-kboot --kernel "$TESTBED/vmlinuz" --initrd "$TESTBED/initrd.gz" --exec 'readlink /pim/bin/sh; test -e /pim/bin/busybox || echo no-busybox-of-pims'
	[ "$status" -eq 0 ]
	[ "$output" = "$(printf '/bin/sh\nno-busybox-of-pims')" ]
	no_vm_left
}

@test "--console: the command runs on the console and its status is still the exit status" {
	run pim-kboot --console --kernel "$KERNEL" --exec 'echo on-the-console; exit 4' </dev/null
	[ "$status" -eq 4 ]
	[[ "$output" == *"on-the-console"* ]]
	no_vm_left
}

@test "--share over virtiofs where virtiofsd runs (QEMU's own on Debian 12; needs root)" {
	vfsd=""
	for p in $(command -v virtiofsd) /usr/libexec/virtiofsd /usr/lib/qemu/virtiofsd; do [ -x "$p" ] && vfsd=$p && break; done
	[ -n "$vfsd" ] || skip "no virtiofsd"
	[ "$(id -u)" -eq 0 ] || skip "QEMU's C virtiofsd needs root"
	share="$PIM_TMP/vshare"
	mkdir -p "$share"
	echo "via-virtiofs" >"$share/h.txt"
	run --separate-stderr pim-kboot --fs virtiofs --kernel "$KERNEL" --initramfs-from "$ROOTFS" --share "$share:vs" \
		--exec 'grep -q " /mnt/vs virtiofs " /proc/mounts && cat /mnt/vs/h.txt && echo back >/mnt/vs/g.txt'
	[ "$status" -eq 0 ]
	[ "$output" = "via-virtiofs" ]
	[ "$(cat "$share/g.txt")" = "back" ]
	no_vm_left
	! pgrep -f "virtiofsd.*$share"
}

@test "Ctrl-C before virtiofsd is up: 130, no virtiofsd left" {
	share="$PIM_TMP/vshare2"
	mkdir -p "$share"
	# a virtiofsd that starts and never opens its socket
	vfsd="$PIM_TMP/slow-virtiofsd"
	printf '#!/bin/bash\n[ "$1" = --version ] && { echo "virtiofsd version 1.7.0"; exit 0; }\necho "$$" >"%s"\nsleep 1000\n' "$PIM_TMP/vfsd.fifo" >"$vfsd"
	chmod +x "$vfsd"
	mkfifo "$PIM_TMP/vfsd.fifo"
	PIM_VIRTIOFSD=$vfsd pim-kboot --fs virtiofs --kernel "$KERNEL" --share "$share" --exec true 2>"$PIM_TMP/vfsd.err" &
	bg=$!
	read -r -t 120 wpid <"$PIM_TMP/vfsd.fifo"
	kill -INT "$bg"
	reap "$bg"
	[ "$st" -eq 130 ]
	! pgrep -g "$wpid"
	no_vm_left
}
