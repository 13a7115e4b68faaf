#!/usr/bin/env bats
# pim-kboot under TCG with the test bed's generic Debian kernel (it has 9p as
# modules; the cloud kernel has none): an initramfs packed by --initramfs-from
# from a directory made here, --exec output and status, shares both ways,
# headless VMs seen by pim-ps/pim-qmp/pim-stop, bad inputs, panic and timeout.
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
