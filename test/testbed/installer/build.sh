#!/usr/bin/env bash
# Build installer ISOs for pim's test bed (for pim-build): a small fake OS
# installer, made from the main test bed's outputs, in the layouts of Debian's
# netinst and Ubuntu's live-server ISOs, and the real Debian installer
# repacked the same way.
#
# needs: what ../build.sh needs, plus xorriso isolinux syslinux-common fdisk (sfdisk)
# (booting them, as verify.sh does, also needs: qemu-system-x86 qemu-utils
# openssh-client python3)
#
# Usage: test/testbed/installer/build.sh [--real|--no-real] [--force]
#   di-real.iso has its own stamp (stamp-real): it needs a download of
#   debian-installer-12-netboot-amd64 (about 130 MB, kept in the main test bed's
#   debs/), then about 3 s. By default it is built too, and a failure there is
#   only a warning (di.iso and ubuntu.iso are in place by then).
#   --real      build it, and fail if that fails (PIM_TESTBED_INSTALLER_REAL=1)
#   --no-real   do not build it (PIM_TESTBED_INSTALLER_REAL=0)
#   --force     rebuild even if the stamps match (PIM_TESTBED_FORCE=1)
# Booting di-real.iso needs about 1 GiB of guest memory (see verify.sh).
#
# Output directory: ${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}/installer
#   di.iso        ISO 9660 + El Torito (isolinux, BIOS; also isohybrid) with
#                 install.amd/vmlinuz and install.amd/initrd.gz: the fake
#                 debian-installer (see ./init), isolinux.cfg from isolinux/di.cfg
#   ubuntu.iso    the same installer as Ubuntu's casper/vmlinuz and casper/initrd,
#                 reading autoinstall user-data (isolinux/ubuntu.cfg)
#   di-real.iso   the real debian-installer's netboot kernel and initrd
#                 as install.amd/vmlinuz and install.amd/initrd.gz (isolinux/di-real.cfg)
#   cloud.qcow2   a "cloud image" for pim-build's builder: cloud-init: the
#                 installed system below as if the installer had written it,
#                 with no keys in it at all; the test bed's /init runs its
#                 stand-in cloud-init, which applies a NoCloud seed labelled
#                 cidata (../rootfs/usr/lib/pim-testbed/cloud-init)
#   stamp, stamp-real   written last; the hash of the inputs of each
#
# What the fake installer writes on the disk (the "installed system"):
#   MBR with syslinux's mbr.bin;
#   p1 (sectors 2048-67583, 32 MiB, active, type 0e) FAT16 "PIMBOOT": syslinux,
#      the test bed's cloud kernel and a small initramfs (busybox, modules, the
#      test bed's /init) booting with pim.root=LABEL=pimroot;
#   p2 (from sector 67584 to the end of the disk, type 83) ext4 "pimroot", made
#      by the installer (mke2fs from e2fsprogs), holding the test bed guest's
#      root file system (the main initrd's tree without its keys) with /init.
# The initrd carries that payload (pim/mbr.img, pim/boot.img.gz,
# pim/rootfs.cpio.gz) as an uncompressed cpio appended to the gzip one.
#
# Progress goes to stderr; nothing is printed on stdout.

set -euo pipefail
exec 1>&2
export PATH=$PATH:/usr/sbin:/sbin # mkfs.vfat, sfdisk
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tb=${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}
out=$tb/installer
multiarch=x86_64-linux-gnu

log() { printf 'testbed-installer: %s\n' "$*" >&2; }
die() {
	printf 'testbed-installer: error: %s\n' "$*" >&2
	exit 1
}

real=${PIM_TESTBED_INSTALLER_REAL:-auto}
force=${PIM_TESTBED_FORCE:-0}
for a in "$@"; do
	case "$a" in
		--real) real=1 ;;
		--no-real) real=0 ;;
		--force) force=1 ;;
		-h | --help)
			sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
			exit 0
			;;
		*) die "unknown argument $a (see --help)" ;;
	esac
done

# The disk layout, in 512-byte sectors; the installer reads it from
# /etc/pim-installer/layout.
BOOT_START=2048
BOOT_SECTORS=65536                         # 32 MiB FAT16
P2_START=$((BOOT_START + BOOT_SECTORS))   # 67584
MIN_ROOT_SECTORS=$((48 * 2048))           # the root file system needs about 20 MiB

netboot_pkg=debian-installer-12-netboot-amd64
netboot_dir=usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64

# The main test bed comes first: everything here is made from it.
PIM_TESTBED_DIR=$tb bash "$here/../build.sh"
[ -f "$tb/stamp" ] || die "no main test bed in $tb"

# ---------------------------------------------------------------------------
# Cache check: this directory's files (content and executable bit) and the
# main test bed's stamp (its inputs, kernel and package versions).
input_hash() {
	(
		cd "$here"
		find . -type f ! -name verify.sh ! -name ctl.py -print | LC_ALL=C sort | while IFS= read -r f; do
			x=-
			[ -x "$f" ] && x=x
			printf '%s %s %s\n' "$f" "$x" "$(sha256sum <"$f" | cut -d' ' -f1)"
		done
		printf 'main=%s\n' "$(sha256sum <"$tb/stamp" | cut -d' ' -f1)"
	) | sha256sum | cut -d' ' -f1
}
real_hash() { # the netboot package's version is looked up in the build
	(
		sha256sum <"$here/build.sh"
		sha256sum <"$here/isolinux/di-real.cfg"
		sha256sum <"$here/isolinux/di-real.txt"
	) | sha256sum | cut -d' ' -f1
}
stamp_is() { # stamp-file hash outputs...
	local s=$1 h=$2 f
	shift 2
	[ -f "$out/$s" ] && [ "$(sed -n 's/^hash=//p' "$out/$s")" = "$h" ] || return 1
	for f in "$@"; do [ -s "$out/$f" ] || return 1; done
}
hash=$(input_hash)
rhash=$(real_hash)
is_built() {
	stamp_is stamp "$hash" di.iso ubuntu.iso cloud.qcow2 || return 1
	[ "$real" = 0 ] && return 0
	stamp_is stamp-real "$rhash" di-real.iso
}
if [ "$force" != 1 ] && is_built; then
	log "up to date: $out"
	exit 0
fi

# ---------------------------------------------------------------------------
missing_tools=()
need() { command -v "$1" >/dev/null 2>&1 || missing_tools+=("$1 (package $2)"); }
need xorriso xorriso
need sfdisk fdisk
need mkfs.vfat dosfstools
need syslinux syslinux
need mcopy mtools
need cpio cpio
need gzip gzip
need dpkg-deb dpkg
need apt-get apt
need flock util-linux
[ -f /usr/lib/ISOLINUX/isolinux.bin ] || missing_tools+=("/usr/lib/ISOLINUX/isolinux.bin (package isolinux)")
[ -f /usr/lib/ISOLINUX/isohdpfx.bin ] || missing_tools+=("/usr/lib/ISOLINUX/isohdpfx.bin (package isolinux)")
[ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || missing_tools+=("ldlinux.c32 (package syslinux-common)")
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || missing_tools+=("mbr.bin (package syslinux-common)")
[ ${#missing_tools[@]} -eq 0 ] || die "missing tools: ${missing_tools[*]}"

mkdir -p "$out"
exec 9>"$out/.lock"
if ! flock -n 9; then
	log "another build holds $out/.lock; waiting"
	flock 9
fi
if [ "$force" != 1 ] && is_built; then
	log "up to date: $out"
	exit 0
fi
rm -rf "$out"/.build.* # leftovers of interrupted builds (we hold the lock)
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM HUP
start=$(date +%s)
log "building in $tmp"

# ---------------------------------------------------------------------------
# Packages: into the main test bed's debs/, named as apt-get download names them.
declare -A pkg_ver=() pkg_arch=()
load_candidates() {
	local p v a
	while read -r p v a; do
		pkg_ver[$p]=$v
		pkg_arch[$p]=$a
	done < <(apt-cache show --no-all-versions "$@" 2>/dev/null | awk '
		/^Package: /      { p = $2 }
		/^Version: /      { v = $2 }
		/^Architecture: / { a = $2 }
		/^$/ { if (p != "" && !(p in done)) { print p, v, a; done[p] = 1 }; p = "" }
		END  { if (p != "" && !(p in done)) print p, v, a }')
}
deb_file() {
	local v=${pkg_ver[$1]}
	printf '%s/debs/%s_%s_%s.deb' "$tb" "$1" "${v//:/%3a}" "${pkg_arch[$1]}"
}
apt_updated=0
ensure_debs() { # pkg...: download what debs/ lacks
	local p todo=() f sandbox=()
	load_candidates "$@"
	for p in "$@"; do
		if [ -z "${pkg_ver[$p]:-}" ] && [ "$apt_updated" = 0 ] && [ "$(id -u)" = 0 ]; then
			log "apt-get update"
			apt_updated=1
			apt-get -q update >&2 || true
			load_candidates "$@"
		fi
		[ -n "${pkg_ver[$p]:-}" ] || die "apt-cache knows no package $p"
		[ -s "$(deb_file "$p")" ] || todo+=("$p=${pkg_ver[$p]}")
	done
	[ ${#todo[@]} -gt 0 ] || return 0
	log "downloading ${todo[*]}"
	[ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
	mkdir -p "$tmp/dl" "$tb/debs"
	(cd "$tmp/dl" && apt-get -q "${sandbox[@]}" download "${todo[@]}" >&2) || die "apt-get download failed: ${todo[*]}"
	for f in "$tmp"/dl/*.deb; do
		p=${f##*/}
		p=${p%%_*}
		rm -f "$tb/debs/${p}"_*.deb # older versions of the same package
		mv -f "$f" "$tb/debs/"
	done
	for p in "$@"; do [ -s "$(deb_file "$p")" ] || die "missing after download: $(deb_file "$p")"; done
}

# ---------------------------------------------------------------------------
build_fake() {
	# The main test bed's initramfs tree: busybox and its links, qemu-ga,
	# dropbear and their libraries, the cloud kernel's modules, /init and the
	# rootfs overlay. Its device nodes are left out (no root needed).
	local main=$tmp/main
	mkdir -p "$main"
	(cd "$main" && gunzip -c "$tb/initrd.gz" | cpio -i -d -m --quiet --no-absolute-filenames \
		-f './dev/*' 'dev/*') || die "cannot unpack $tb/initrd.gz"
	[ -x "$main/init" ] && [ -x "$main/bin/busybox" ] || die "$tb/initrd.gz has no /init or busybox"
	grep -q 'pim.root=' "$main/init" || die "$tb/initrd.gz predates pim.root= in test/testbed/init: rebuild the main test bed"
	local kver
	kver=$(ls "$main/lib/modules")
	log "main test bed: kernel $kver"

	# --- the installed system's root file system --------------------------
	# The guest's tree without its keys: the host key is made on first boot,
	# root's authorized_keys is what the installer's late command writes.
	local root=$tmp/root
	cp -a "$main" "$root"
	rm -rf "$root/root/.ssh" "$root/etc/dropbear" "$root"/newroot
	mkdir -p "$root/etc/dropbear" "$root/etc/ssh" "$root/dev" "$root/home" "$root/var/log/installer"
	chmod 0700 "$root/etc/dropbear" "$root/root"
	(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --quiet --null -o -H newc --owner=0:0) | gzip -9n >"$tmp/rootfs.cpio.gz"
	log "root file system: $(du -sh --apparent-size "$root" | cut -f1) ($(du -h "$tmp/rootfs.cpio.gz" | cut -f1) compressed)"

	# --- its boot initramfs: busybox, modules and /init, which mounts the root
	local bi=$tmp/bootinitrd a
	mkdir -p "$bi"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,var,newroot,lib/modules}
	cp -a "$main/bin/busybox" "$bi/bin/"
	while IFS= read -r a; do
		[ -e "$bi/$a" ] || [ -L "$bi/$a" ] || ln -s /bin/busybox "$bi/$a"
	done < <("$main/bin/busybox" --list-full)
	cp -a "$main/lib/modules/$kver" "$bi/lib/modules/"
	cp -a "$main/init" "$bi/init"
	cp -a "$here/../rootfs/etc" "$bi/"
	(cd "$bi" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --quiet --null -o -H newc --owner=0:0) | gzip -9n >"$tmp/boot-initrd.gz"

	# --- p1: FAT with syslinux. Its hidden-sectors field holds its offset on
	# the disk (2048): syslinux's boot sector finds ldlinux.sys with it.
	export MTOOLS_SKIP_CHECK=1
	local boot=$tmp/boot.img
	mkfs.vfat -F 16 -h "$BOOT_START" -n PIMBOOT -C "$boot" $((BOOT_SECTORS / 2)) >/dev/null
	syslinux --install "$boot"
	cat >"$tmp/syslinux.cfg" <<-EOF
		# the installed pim test bed system (written by pim's fake installer)
		DEFAULT pim
		PROMPT 0
		TIMEOUT 0
		LABEL pim
		  KERNEL /vmlinuz
		  INITRD /initrd.gz
		  APPEND console=tty0 console=ttyS0 pim.root=LABEL=pimroot pim.agent=1 pim.acpi=1
	EOF
	mcopy -i "$boot" "$tb/vmlinuz" ::/vmlinuz
	mcopy -i "$boot" "$tmp/boot-initrd.gz" ::/initrd.gz
	mcopy -i "$boot" "$tmp/syslinux.cfg" ::/syslinux.cfg
	gzip -6n <"$boot" >"$tmp/boot.img.gz"

	# --- the MBR: syslinux's boot code and the table; the installer stretches
	# p2 to the end of the disk it finds.
	local head=$tmp/head.img
	truncate -s $(((P2_START + MIN_ROOT_SECTORS) * 512)) "$head"
	sfdisk --quiet --no-reread --no-tell-kernel "$head" >/dev/null <<-EOF
		label: dos
		label-id: 0x70696d31
		start=$BOOT_START, size=$BOOT_SECTORS, type=e, bootable
		start=$P2_START, type=83
	EOF
	dd if=/usr/lib/syslinux/mbr/mbr.bin of="$head" bs=440 count=1 conv=notrunc status=none
	head -c 512 "$head" >"$tmp/mbr.img"

	# --- the installer's initramfs ------------------------------------------
	# busybox, the modules, the main test bed's udhcpc script and /etc, the
	# installer's /init, parsers and shims, and mke2fs (e2fsprogs: busybox's
	# makes only ext2) with the libraries its loader resolves in the packages.
	local e2pkgs=(e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 libc6)
	ensure_debs "${e2pkgs[@]}"
	local sys=$tmp/sys p
	mkdir -p "$sys"
	for p in "${e2pkgs[@]}"; do dpkg-deb -x "$(deb_file "$p")" "$sys"; done
	local ir=$tmp/installer
	mkdir -p "$ir"/{bin,sbin,usr/bin,usr/sbin,usr/lib/pim-installer,proc,sys,dev,tmp,run,target,root,var/log,etc/pim-installer,lib/modules}
	ln -s /run "$ir/var/run"
	cp -a "$here/../rootfs/etc/." "$ir/etc/"
	local mke2fs
	mke2fs=$(find "$sys" -path '*sbin/mke2fs' -type f | head -n 1)
	[ -n "$mke2fs" ] || die "no mke2fs in e2fsprogs"
	install -m 0755 "$mke2fs" "$ir/sbin/mke2fs" # before the busybox links: busybox has a mke2fs too
	install -m 0644 "$sys/etc/mke2fs.conf" "$ir/etc/mke2fs.conf"
	local ld libpath listing name arrow file _ src dst
	ld=$(find "$sys" -name 'ld-linux-x86-64.so.2' -type f | head -n 1)
	[ -n "$ld" ] || die "no dynamic loader in libc6"
	libpath=$sys/lib/$multiarch:$sys/usr/lib/$multiarch:$sys/lib:$sys/usr/lib
	listing=$("$ld" --library-path "$libpath" --list "$mke2fs") || die "ldd mke2fs failed: $listing"
	if grep -q 'not found' <<<"$listing"; then die "ldd mke2fs: $(grep 'not found' <<<"$listing")"; fi
	while read -r name arrow file _; do
		if [[ "$name" == /* ]]; then
			src=$ld
			dst=$name
		elif [ "$arrow" = "=>" ]; then
			src=$file
			dst=${file#"$sys"}
		else
			continue
		fi
		[ -e "$ir$dst" ] && continue
		mkdir -p "$ir${dst%/*}"
		cp -L "$src" "$ir$dst"
	done <<<"$listing"
	cp -a "$main/bin/busybox" "$ir/bin/"
	while IFS= read -r a; do
		[ -e "$ir/$a" ] || [ -L "$ir/$a" ] || ln -s /bin/busybox "$ir/$a"
	done < <("$main/bin/busybox" --list-full)
	cp -a "$main/lib/modules/$kver" "$ir/lib/modules/"
	install -m 0755 "$here/init" "$ir/init"
	install -m 0644 "$here/lib/preseed.awk" "$here/lib/autoinstall.awk" "$ir/usr/lib/pim-installer/"
	install -m 0755 "$here/bin/in-target" "$here/bin/curtin" "$ir/usr/bin/"
	chmod 0755 "$ir/etc/udhcpc.script"
	chmod 1777 "$ir/tmp"
	printf 'BOOT_SECTORS=%s\nP2_START=%s\nMIN_ROOT_SECTORS=%s\n' \
		"$BOOT_SECTORS" "$P2_START" "$MIN_ROOT_SECTORS" >"$ir/etc/pim-installer/layout"
	(cd "$ir" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --quiet --null -o -H newc --owner=0:0) | gzip -9n >"$tmp/installer.cpio.gz"

	# The payload, already compressed: an uncompressed cpio appended to the
	# initrd (the kernel unpacks concatenated archives, compressed or not).
	local pl=$tmp/payload
	mkdir -p "$pl/pim"
	mv "$tmp/mbr.img" "$tmp/boot.img.gz" "$tmp/rootfs.cpio.gz" "$pl/pim/"
	(cd "$pl" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --quiet --null -o -H newc --owner=0:0) >"$tmp/payload.cpio"

	local flavour fl
	for flavour in debian ubuntu; do
		fl=$tmp/flavour-$flavour
		mkdir -p "$fl/etc/pim-installer"
		echo "$flavour" >"$fl/etc/pim-installer/flavour"
		(cd "$fl" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
			cpio --quiet --null -o -H newc --owner=0:0) | gzip -9n >"$tmp/flavour-$flavour.cpio.gz"
		# The kernel takes an uncompressed archive only at a 4-byte aligned
		# offset, and skips the zeros between archives: pad to 512 bytes.
		truncate -s %512 "$tmp/installer.cpio.gz" "$tmp/flavour-$flavour.cpio.gz"
		cat "$tmp/installer.cpio.gz" "$tmp/flavour-$flavour.cpio.gz" "$tmp/payload.cpio" >"$tmp/initrd-$flavour"
	done
	log "installer initrd: $(du -h "$tmp/initrd-debian" | cut -f1) (payload $(du -h "$tmp/payload.cpio" | cut -f1))"

	make_iso di.iso PIM_DI "$tmp/iso-di" di install.amd/vmlinuz "$tb/vmlinuz" install.amd/initrd.gz "$tmp/initrd-debian"
	make_iso ubuntu.iso PIM_UBUNTU "$tmp/iso-ubuntu" ubuntu casper/vmlinuz "$tb/vmlinuz" casper/initrd "$tmp/initrd-ubuntu"

	# --- cloud.qcow2: the same layout as an installed disk, made here: the MBR,
	# p1 the boot FAT, p2 an ext4 "pimroot" of the root tree (mke2fs -d fills it
	# without a mount, at p2's offset in the image), 96 MiB in all.
	local cloud=$tmp/cloud.img root_sectors=$((64 * 2048))
	truncate -s $(((P2_START + root_sectors) * 512)) "$cloud"
	dd if="$pl/pim/mbr.img" of="$cloud" bs=512 count=1 conv=notrunc status=none
	sfdisk --quiet --no-reread --no-tell-kernel "$cloud" >/dev/null <<-EOF
		label: dos
		label-id: 0x70696d32
		start=$BOOT_START, size=$BOOT_SECTORS, type=e, bootable
		start=$P2_START, size=$root_sectors, type=83
	EOF
	gunzip -c "$pl/pim/boot.img.gz" | dd of="$cloud" bs=512 seek="$BOOT_START" conv=notrunc status=none
	MKE2FS_CONFIG=$sys/etc/mke2fs.conf "$ld" --library-path "$libpath" "$mke2fs" -q -F -t ext4 -L pimroot \
		-U 70696d00-636c-6f75-6400-000000000001 -E offset=$((P2_START * 512)) -d "$root" "$cloud" $((root_sectors / 2))k ||
		die "mke2fs of the cloud image's root failed"
	qemu-img convert -O qcow2 "$cloud" "$tmp/cloud.qcow2"
	rm -f "$cloud"
	log "cloud.qcow2 $(du -h "$tmp/cloud.qcow2" | cut -f1)"
}

# make_iso NAME VOLID TREE CFG PATH FILE PATH FILE: isolinux (BIOS El Torito,
# isohybrid MBR) with isolinux/CFG.cfg as isolinux.cfg and CFG.txt as its message.
make_iso() {
	local name=$1 volid=$2 tree=$3 cfg=$4
	shift 4
	mkdir -p "$tree/isolinux" "$tree/.disk"
	cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$tree/isolinux/"
	cp "$here/isolinux/$cfg.cfg" "$tree/isolinux/isolinux.cfg"
	cp "$here/isolinux/$cfg.txt" "$tree/isolinux/boot.txt"
	printf 'pim test bed %s (%s)\n' "$name" "$(sed -n 's/^cloud-kernel=//p' "$tb/stamp")" >"$tree/.disk/info"
	while [ $# -gt 0 ]; do
		mkdir -p "$tree/$(dirname "$1")"
		cp "$2" "$tree/$1"
		shift 2
	done
	xorriso -as mkisofs -quiet -o "$tmp/$name" -V "$volid" -r -J \
		-b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
		-isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin "$tree" 2>"$tmp/xorriso.log" ||
		die "xorriso $name failed: $(cat "$tmp/xorriso.log")"
	log "$name $(du -h "$tmp/$name" | cut -f1)"
}

# build_real: di-real.iso, moved into place with its stamp.
build_real() {
	ensure_debs "$netboot_pkg"
	local d=$tmp/netboot
	mkdir -p "$d"
	log "unpacking the netboot kernel and initrd from $netboot_pkg ${pkg_ver[$netboot_pkg]}"
	dpkg-deb --fsys-tarfile "$(deb_file "$netboot_pkg")" |
		tar -x -C "$d" "./$netboot_dir/linux" "./$netboot_dir/initrd.gz" ||
		die "no $netboot_dir/{linux,initrd.gz} in $netboot_pkg"
	make_iso di-real.iso PIM_DI_REAL "$tmp/iso-real" di-real \
		install.amd/vmlinuz "$d/$netboot_dir/linux" install.amd/initrd.gz "$d/$netboot_dir/initrd.gz"
	rm -f "$out/stamp-real"
	mv -f "$tmp/di-real.iso" "$out/"
	{
		printf 'hash=%s\n' "$rhash"
		printf 'built=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
		printf 'package=%s %s\n' "$netboot_pkg" "${pkg_ver[$netboot_pkg]}"
	} >"$tmp/stamp-real"
	mv -f "$tmp/stamp-real" "$out/stamp-real"
}

# ---------------------------------------------------------------------------
# Build what is stale; move each set into place with its stamp last (the old
# stamp goes first: an interrupted move leaves no stamp).
if [ "$force" = 1 ] || ! stamp_is stamp "$hash" di.iso ubuntu.iso cloud.qcow2; then
	build_fake
	rm -f "$out/stamp"
	mv -f "$tmp/di.iso" "$tmp/ubuntu.iso" "$tmp/cloud.qcow2" "$out/"
	{
		printf 'hash=%s\n' "$hash"
		printf 'built=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
		sed -n 's/^cloud-kernel=/kernel=/p' "$tb/stamp"
		for p in e2fsprogs libext2fs2; do printf 'package=%s %s\n' "$p" "${pkg_ver[$p]}"; done
	} >"$tmp/stamp"
	mv -f "$tmp/stamp" "$out/stamp"
fi
if [ "$real" != 0 ] && { [ "$force" = 1 ] || ! stamp_is stamp-real "$rhash" di-real.iso; }; then
	if [ "$real" = 1 ]; then
		build_real
	else
		# In a subshell, whose failure (a die, or any command under its own set -e)
		# ends only this part. Not as a condition: that would turn set -e off.
		set +e
		(
			set -e
			build_real
		)
		rc=$?
		set -e
		[ "$rc" = 0 ] || log "warning: di-real.iso was not built (see above; --no-real skips it); di.iso and ubuntu.iso are ready"
	fi
fi
log "done in $(($(date +%s) - start)) s: $out"
