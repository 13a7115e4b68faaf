#!/usr/bin/env bash
# Build a real Debian 12 (bookworm) cloud image for pim's tests against the real
# cloud-init, made from Debian's packages the way Debian's "genericcloud" image
# is made (debian-cloud-images): the cloud kernel, systemd, cloud-init with the
# NoCloud datasource first in datasource_list, growpart (cloud-guest-utils),
# qemu-guest-agent, OpenSSH, sudo, locales, ifupdown + DHCP, and GRUB (grub-pc) in the
# MBR of a 2 GiB disk with one ext4 root partition at its end (so cloud-init's
# growpart and resizefs can grow it). No SSH host keys, an empty machine-id and
# no cloud-init state: every boot with a new seed is a first boot.
#
# needs: root, mmdebstrap, a Debian mirror (apt's sources), util-linux (losetup,
# mount), fdisk (sfdisk), e2fsprogs, qemu-utils; about 2 minutes.
#
# Output directory: ${PIM_DEBIAN_CLOUD_DIR:-<test bed dir>/../debian-cloud}
# (the test bed dir is ${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed};
# this image is kept beside it, never in it):
#   debian-12-cloud.qcow2   the image (compressed qcow2, about 200 MiB)
#   root-KEY.tar{,.versions} mmdebstrap's root file system and its package list, kept
#                           by a hash of the mmdebstrap arguments
#   stamp                   written last: hash=<sha256 of this script>, the package versions
#
# A build whose stamp still matches does nothing; PIM_TESTBED_FORCE=1 rebuilds.
# Progress goes to stderr; nothing is printed on stdout.

set -euo pipefail
exec 1>&2
export PATH=$PATH:/usr/sbin:/sbin
export LC_ALL=C

tb=${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}
out=${PIM_DEBIAN_CLOUD_DIR:-$(dirname "$tb")/debian-cloud}
image=debian-12-cloud.qcow2
suite=bookworm

log() { printf 'debian-cloud: %s\n' "$*" >&2; }
die() {
	printf 'debian-cloud: error: %s\n' "$*" >&2
	exit 1
}

hash=$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)
is_built() {
	[ -f "$out/stamp" ] && [ -s "$out/$image" ] &&
		[ "$(sed -n 's/^hash=//p' "$out/stamp")" = "$hash" ]
}
if [ "${PIM_TESTBED_FORCE:-0}" != 1 ] && is_built; then
	log "up to date: $out/$image"
	exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap into a loop device, grub-install)"
for t in mmdebstrap losetup sfdisk mkfs.ext4 qemu-img flock chroot; do
	command -v "$t" >/dev/null 2>&1 || die "missing tool $t (Debian packages: mmdebstrap util-linux fdisk e2fsprogs qemu-utils coreutils)"
done

mkdir -p "$out"
chmod 0755 "$out"
exec 9>"$out/.lock"
if ! flock -n 9; then
	log "another build holds $out/.lock; waiting"
	flock 9
fi
if [ "${PIM_TESTBED_FORCE:-0}" != 1 ] && is_built; then
	log "up to date: $out/$image"
	exit 0
fi
rm -rf "$out"/.build.*
tmp=$(mktemp -d "$out/.build.XXXXXX")
mnt=$tmp/mnt
loop=
cleanup() {
	local m
	for m in dev/pts dev proc sys ""; do
		mountpoint -q "$mnt/$m" 2>/dev/null && umount "$mnt/$m" 2>/dev/null || umount -l "$mnt/$m" 2>/dev/null || true
	done
	# only the loop device this build attached
	[ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
start=$(date +%s)

# --- the root file system -------------------------------------------------
# The package set of Debian's genericcloud image, less what a test VM does not
# need (firmware, man pages, translations; locales comes in as a dependency).
pkgs=(linux-image-cloud-amd64 systemd-sysv udev dbus cloud-init cloud-guest-utils
	qemu-guest-agent openssh-server sudo grub-pc e2fsprogs fdisk ifupdown isc-dhcp-client
	iproute2 netbase procps less ca-certificates)
mmargs=(--variant=minbase --mode=root --format=tar
	--aptopt='APT::Install-Recommends "false"'
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-include=/usr/share/locale/locale.alias'
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
	--include="$(
		IFS=,
		echo "${pkgs[*]}"
	)")
# the root's tarball is kept, by a hash of what makes it, so that a change to the
# rest of this script does not download and unpack everything again
rootkey=$(printf '%s\n' "$suite" "${mmargs[@]}" | sha256sum | cut -c1-16)
roottar=$out/root-$rootkey.tar
if [ -s "$roottar" ] && [ -s "$roottar.versions" ]; then
	log "root file system: $roottar (cached)"
else
	rm -f "$out"/root-*.tar "$out"/root-*.tar.versions
	log "mmdebstrap $suite: ${pkgs[*]}"
	mmdebstrap "${mmargs[@]}" \
		--customize-hook="chroot \"\$1\" dpkg-query -W -f 'package=\${Package} \${Version}\\n' >'$tmp/versions'" \
		"$suite" "$tmp/root.tar" >&2 || die "mmdebstrap failed"
	[ -s "$tmp/versions" ] || die "mmdebstrap's hook listed no packages"
	mv "$tmp/versions" "$roottar.versions"
	mv "$tmp/root.tar" "$roottar"
fi
cp "$roottar.versions" "$tmp/versions"

# --- the disk: MBR, one ext4 partition from 1 MiB to the end ---------------
raw=$tmp/disk.raw
truncate -s 2G "$raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"
loop=$(losetup -f --show -P "$raw")
part=${loop}p1
n=0
while [ ! -b "$part" ] && [ $n -lt 50 ]; do
	partx -a "$loop" 2>/dev/null || true
	sleep 0.1
	n=$((n + 1))
done
[ -b "$part" ] || die "no partition device $part"
mkfs.ext4 -q -L debroot "$part"
uuid=$(blkid -s UUID -o value "$part")
mkdir -p "$mnt"
mount "$part" "$mnt"
tar -C "$mnt" --xattrs --numeric-owner -xpf "$roottar"
# cloud-init's cc_locale sets en_US.UTF-8 on every first boot (update-locale,
# which refuses a locale that was never generated: cloud-init then ends its run
# in error), so the image has it generated, as Debian's cloud images do
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$mnt/etc/locale.gen"
grep -q '^en_US.UTF-8 UTF-8' "$mnt/etc/locale.gen" || die "no en_US.UTF-8 in the image's /etc/locale.gen (is locales installed?)"
chroot "$mnt" locale-gen >&2 || die "locale-gen failed"

# --- configuration, as debian-cloud-images does it ------------------------
printf 'UUID=%s / ext4 rw,discard,errors=remount-ro 0 1\n' "$uuid" >"$mnt/etc/fstab"
cat >"$mnt/etc/cloud/cloud.cfg.d/01_pim_testbed.cfg" <<'EOF'
# pim test bed: the seeds a test gives (NoCloud: a cidata volume or ds=nocloud
# on the command line or SMBIOS serial), else DataSourceNone, as a
# genericcloud image with no cloud around it falls back to.
datasource_list: [ NoCloud, None ]
EOF
cat >"$mnt/etc/network/interfaces" <<'EOF'
# cloud-init writes the network configuration (50-cloud-init)
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
EOF
mkdir -p "$mnt/etc/default/grub.d"
cat >"$mnt/etc/default/grub.d/15_pim_testbed.cfg" <<'EOF'
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"
GRUB_TIMEOUT=0
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
EOF
echo localhost >"$mnt/etc/hostname"

for m in dev dev/pts proc sys; do mount --bind "/$m" "$mnt/$m"; done
chroot "$mnt" grub-install --target=i386-pc --no-floppy "$loop" >&2 || die "grub-install failed"
chroot "$mnt" update-grub >&2 || die "update-grub failed"
sed -i "s|$loop[p0-9]*|UUID=$uuid|g" "$mnt/boot/grub/grub.cfg"
grep -q "root=UUID=$uuid" "$mnt/boot/grub/grub.cfg" || die "grub.cfg does not boot root=UUID=$uuid"

# nothing of this build's identity stays: cloud-init makes host keys on the
# first boot of an instance; systemd makes the machine-id
rm -f "$mnt"/etc/ssh/ssh_host_*
: >"$mnt/etc/machine-id"
rm -f "$mnt/var/lib/dbus/machine-id"
rm -rf "$mnt"/var/lib/cloud/* "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin "$mnt"/var/log/*.log
for m in sys proc dev/pts dev; do umount "$mnt/$m"; done
fstrim "$mnt" >/dev/null 2>&1 || true
umount "$mnt"
losetup -d "$loop"
loop=

log "qemu-img convert -c"
qemu-img convert -c -O qcow2 "$raw" "$tmp/$image"
chmod 0644 "$tmp/$image"
rm -f "$out/stamp"
mv -f "$tmp/$image" "$out/$image"
{
	printf 'hash=%s\n' "$hash"
	printf 'built=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	grep -E '^package=(linux-image-[0-9]|cloud-init |openssh-server |systemd |qemu-guest-agent |grub-pc )' "$tmp/versions" || true
} >"$tmp/stamp"
mv -f "$tmp/stamp" "$out/stamp"
log "done in $(($(date +%s) - start)) s: $out/$image ($(du -h "$out/$image" | cut -f1))"
