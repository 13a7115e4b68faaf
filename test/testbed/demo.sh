#!/usr/bin/env bash
# Make the demo image (install.sh's pim-demo) from the test bed's full guest,
# with pim's own SSH key among root's authorized keys, so that `pim-ssh
# pim-demo` logs in with no set-up and no password prompt.
#
# usage: demo.sh OUT.qcow2 [PUBKEY_LINE...]
#   With no PUBKEY_LINE, the key is pim's own (`pim-ssh --pubkey`, made on
#   first use). The test bed's key (id_ed25519 beside the guest) stays in too.
#   The guest's root is its initramfs (initrd.gz on a FAT disk): the keys go in
#   as a second cpio archive appended to it, which the kernel unpacks over the
#   first. OUT is written beside itself and renamed into place (a running VM
#   keeps the file it has open).
#
# needs: qemu-img, mtools (mcopy), cpio, gzip; the test bed (build.sh).

set -euo pipefail
exec 1>&2
out=${1:?usage: demo.sh OUT.qcow2 [PUBKEY_LINE...]}
shift
testbed=${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}
[ -f "$testbed/stamp" ] || { echo "demo.sh: no test bed in $testbed; run test/testbed/build.sh" >&2; exit 66; }
keys=("$@")
[ "${#keys[@]}" -gt 0 ] || keys=("$(pim-ssh --pubkey)")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
qemu-img convert -O raw "$testbed/guest-full.qcow2" "$tmp/disk.raw"
mcopy -n -i "$tmp/disk.raw" ::/initrd.gz "$tmp/initrd.gz"
mkdir -p "$tmp/root/root/.ssh"
{ cat "$testbed/id_ed25519.pub"; printf '%s\n' "${keys[@]}"; } >"$tmp/root/root/.ssh/authorized_keys"
chmod 0700 "$tmp/root/root" "$tmp/root/root/.ssh"
chmod 0600 "$tmp/root/root/.ssh/authorized_keys"
(cd "$tmp/root" && printf '%s\n' root root/.ssh root/.ssh/authorized_keys |
	cpio --quiet -o -H newc --owner=0:0) | gzip -9n >>"$tmp/initrd.gz"
mcopy -o -i "$tmp/disk.raw" "$tmp/initrd.gz" ::/initrd.gz
mkdir -p "$(dirname "$out")"
qemu-img convert -O qcow2 "$tmp/disk.raw" "$out.tmp-$$"
chmod 0600 "$out.tmp-$$"
mv -f "$out.tmp-$$" "$out"
