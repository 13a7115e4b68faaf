#!/usr/bin/env bash
# Build pim's test bed: small real guests made only from Debian packages.
#
# needs: apt dpkg coreutils findutils util-linux gzip cpio dosfstools syslinux syslinux-common mtools qemu-utils openssh-client
# (booting the guests, as verify.sh does, also needs: qemu-system-x86 socat openssh-client)
#
# Output directory: ${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}
#   vmlinuz                 Debian cloud kernel (linux-image-<abi>-cloud-amd64)
#   initrd.gz               busybox initramfs: virtio modules, button+evdev, isofs, qemu-ga,
#                           dropbear, jq, /init from this directory, rootfs/ (which holds
#                           a stand-in cloud-init that the persistent root runs)
#   id_ed25519{,.pub}       ssh key; the public half is root's authorized key in the guest
#   ssh_host_keys.pub       the guest's (dropbear's) host keys, public halves, one a line
#   guest-full.qcow2        syslinux FAT disk: pim.agent=1 pim.acpi=1 (qemu-ga, acpid, dropbear)
#   guest-noagent.qcow2     pim.agent=0 pim.acpi=1 (acpid, dropbear)
#   guest-bare.qcow2        pim.agent=0 pim.acpi=0 (dropbear only; ignores ACPI powerdown)
#   generic/vmlinuz         Debian generic kernel (linux-image-<abi>-amd64), has 9p and virtiofs
#   generic/modules/<kver>/ that kernel's modules for virtio, 9p and virtiofs, with modules.dep
#   busybox                 the static busybox binary
#   debs/                   downloaded .deb files, reused by later builds
#   stamp                   written last; records the hash of this script and its inputs
#
# A build whose stamp still matches does nothing. Environment:
#   PIM_TESTBED_DIR          output directory (see above)
#   PIM_TESTBED_KERNEL_ABI   e.g. 6.1.0-56; default: what linux-image-cloud-amd64 depends on
#   PIM_TESTBED_FORCE=1      rebuild even if the stamp matches
#
# Progress goes to stderr; nothing is printed on stdout.

set -euo pipefail
exec 1>&2 # everything goes to stderr
export PATH=$PATH:/usr/sbin:/sbin # mkfs.vfat, for users whose PATH lacks sbin
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}
arch=amd64
multiarch=x86_64-linux-gnu

log() { printf 'testbed: %s\n' "$*" >&2; }
die() {
	printf 'testbed: error: %s\n' "$*" >&2
	exit 1
}

# Outputs whose presence (with a matching stamp) means "built".
outputs=(vmlinuz initrd.gz id_ed25519 id_ed25519.pub ssh_host_keys.pub guest-full.qcow2
	guest-noagent.qcow2 guest-bare.qcow2 generic/vmlinuz generic/modules busybox)

# Modules for the test bed guest (cloud kernel) and for the generic kernel's
# direct-boot tree; both get every dependency modules.dep names.
cloud_modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	virtio_console failover net_failover virtio_net virtio_blk virtio_rng button evdev isofs)
generic_modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	virtio_console failover net_failover virtio_net virtio_blk
	9p 9pnet 9pnet_virtio netfs fscache virtiofs fuse button evdev)

# ---------------------------------------------------------------------------
# Cache check: hash of this script, /init and the rootfs overlay (content and
# executable bit), plus the knobs that change the result.
input_hash() {
	(
		cd "$here"
		find build.sh init rootfs -type f -print | LC_ALL=C sort | while IFS= read -r f; do
			x=-
			[ -x "$f" ] && x=x
			printf '%s %s %s\n' "$f" "$x" "$(sha256sum <"$f" | cut -d' ' -f1)"
		done
		printf 'abi=%s\n' "${PIM_TESTBED_KERNEL_ABI:-}"
	) | sha256sum | cut -d' ' -f1
}

is_built() {
	[ -f "$out/stamp" ] || return 1
	[ "$(sed -n 's/^hash=//p' "$out/stamp")" = "$hash" ] || return 1
	local f
	for f in "${outputs[@]}"; do [ -e "$out/$f" ] || return 1; done
}

hash=$(input_hash)
if [ "${PIM_TESTBED_FORCE:-0}" != 1 ] && is_built; then
	log "up to date: $out"
	exit 0
fi

# ---------------------------------------------------------------------------
missing_tools=()
need() { command -v "$1" >/dev/null 2>&1 || missing_tools+=("$1 (package $2)"); }
need apt-get apt
need apt-cache apt
need dpkg-deb dpkg
need flock util-linux
need cpio cpio
need gzip gzip
need mkfs.vfat dosfstools
need syslinux syslinux
need mcopy mtools
need qemu-img qemu-utils
need ssh-keygen openssh-client
need sha256sum coreutils
[ -e /usr/lib/syslinux/ldlinux.sys ] || [ -e /usr/lib/SYSLINUX/ldlinux.sys ] ||
	[ -d /usr/lib/syslinux/modules/bios ] || missing_tools+=("syslinux BIOS modules (package syslinux-common)")
if [ ${#missing_tools[@]} -gt 0 ]; then
	die "missing tools: ${missing_tools[*]}"
fi

mkdir -p "$out" "$out/debs"
exec 9>"$out/.lock"
if ! flock -n 9; then
	log "another build holds $out/.lock; waiting"
	flock 9
fi
# Another build may have finished while we waited.
if [ "${PIM_TESTBED_FORCE:-0}" != 1 ] && is_built; then
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
# Packages
apt_updated=0
apt_update() {
	[ "$apt_updated" = 1 ] && return 1
	apt_updated=1
	if [ "$(id -u)" != 0 ]; then
		log "not root: cannot run apt-get update"
		return 1
	fi
	log "apt-get update"
	apt-get -q update >&2 || return 1
}

cloud_pkg_abi() {
	apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		sed -n 's/^ *Depends: linux-image-\(.*\)-cloud-amd64$/\1/p' | head -n 1
}

abi=${PIM_TESTBED_KERNEL_ABI:-}
if [ -z "$abi" ]; then
	abi=$(cloud_pkg_abi)
	if [ -z "$abi" ] && apt_update; then abi=$(cloud_pkg_abi); fi
	[ -n "$abi" ] || die "cannot find the cloud kernel: apt-cache knows no linux-image-cloud-amd64"
fi
cloud_kpkg=linux-image-$abi-cloud-amd64
generic_kpkg=linux-image-$abi-amd64
if ! apt-cache show "$generic_kpkg" >/dev/null 2>&1; then
	alt=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-.*-amd64\)$/\1/p' | head -n 1)
	[ -n "$alt" ] || die "no generic kernel package $generic_kpkg and no linux-image-amd64"
	log "warning: no $generic_kpkg; using $alt"
	generic_kpkg=$alt
fi
log "kernels: $cloud_kpkg, $generic_kpkg"

# Shared libraries come from the Debian packages too (not from the host):
# walk the Depends of qemu-guest-agent, dropbear-bin and jq through library packages.
deps_of() {
	apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
		--no-replaces --no-enhances "$@" 2>/dev/null |
		sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \([^<>[:space:]]*\)$/\2/p' | sort -u
}
declare -A seen_pkg=()
lib_pkgs=()
frontier=(qemu-guest-agent dropbear-bin jq)
while [ ${#frontier[@]} -gt 0 ]; do
	next=()
	while IFS= read -r p; do
		p=${p%:any}
		p=${p%:"$arch"}
		case "$p" in lib* | zlib1g) ;; *) continue ;; esac
		[ -n "${seen_pkg[$p]:-}" ] && continue
		seen_pkg[$p]=1
		lib_pkgs+=("$p")
		next+=("$p")
	done < <(deps_of "${frontier[@]}")
	frontier=("${next[@]}")
done
[ ${#lib_pkgs[@]} -gt 0 ] || die "could not resolve the library packages of qemu-guest-agent/dropbear-bin/jq"

# openssh-client only for its scp (which needs nothing but libc): the server side of
# scp and of tools that copy files with it (Packer's provisioners, pim-cp);
# jq for the test bed's stand-in cloud-init (rootfs/usr/lib/pim-testbed/cloud-init)
pkgs=(busybox-static qemu-guest-agent dropbear-bin jq openssh-client "${lib_pkgs[@]}" "$cloud_kpkg" "$generic_kpkg")

# Candidate version and architecture of every package: "pkg ver arch".
candidates() {
	apt-cache show --no-all-versions "$@" 2>/dev/null | awk '
		/^Package: /      { p = $2 }
		/^Version: /      { v = $2 }
		/^Architecture: / { a = $2 }
		/^$/ { if (p != "" && !(p in done)) { print p, v, a; done[p] = 1 }; p = "" }
		END  { if (p != "" && !(p in done)) print p, v, a }'
}
declare -A pkg_ver=() pkg_arch=()
load_candidates() {
	local p v a
	while read -r p v a; do
		pkg_ver[$p]=$v
		pkg_arch[$p]=$a
	done < <(candidates "${pkgs[@]}")
}
load_candidates
for p in "${pkgs[@]}"; do
	if [ -z "${pkg_ver[$p]:-}" ]; then
		apt_update && load_candidates
		break
	fi
done
for p in "${pkgs[@]}"; do
	[ -n "${pkg_ver[$p]:-}" ] || die "apt-cache knows no package $p"
done

deb_file() { # pkg -> path of its .deb in debs/ (as apt-get download names it)
	local v=${pkg_ver[$1]}
	printf '%s/debs/%s_%s_%s.deb' "$out" "$1" "${v//:/%3a}" "${pkg_arch[$1]}"
}

download() {
	local dl=$tmp/dl
	mkdir -p "$dl"
	local sandbox=()
	[ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
	(cd "$dl" && apt-get -q "${sandbox[@]}" download "$@" >&2)
}

todo=()
for p in "${pkgs[@]}"; do [ -s "$(deb_file "$p")" ] || todo+=("$p=${pkg_ver[$p]}"); done
if [ ${#todo[@]} -gt 0 ]; then
	log "downloading ${#todo[@]} packages"
	if ! download "${todo[@]}"; then
		apt_update || true
		download "${todo[@]}" || die "apt-get download failed for: ${todo[*]}"
	fi
	for f in "$tmp"/dl/*.deb; do
		p=${f##*/}
		p=${p%%_*}
		rm -f "$out/debs/${p}"_*.deb # older versions of the same package
		mv -f "$f" "$out/debs/"
	done
fi
for p in "${pkgs[@]}"; do [ -s "$(deb_file "$p")" ] || die "missing after download: $(deb_file "$p")"; done

# ---------------------------------------------------------------------------
# Unpack
sys=$tmp/sys # userspace packages
cloud=$tmp/cloud
generic=$tmp/generic
mkdir -p "$sys" "$cloud" "$generic"
log "unpacking"
for p in busybox-static qemu-guest-agent dropbear-bin jq "${lib_pkgs[@]}"; do dpkg-deb -x "$(deb_file "$p")" "$sys"; done
mkdir -p "$tmp/ssh" && dpkg-deb -x "$(deb_file openssh-client)" "$tmp/ssh" && install -D -m 0755 "$tmp/ssh/usr/bin/scp" "$sys/usr/bin/scp"
dpkg-deb -x "$(deb_file "$cloud_kpkg")" "$cloud"
dpkg-deb -x "$(deb_file "$generic_kpkg")" "$generic"

busybox=$sys/bin/busybox
[ -x "$busybox" ] || die "no bin/busybox in busybox-static"
"$busybox" true || die "cannot run $busybox on this host"

one_dir() { # the single entry of a directory
	local d=("$1"/*)
	[ ${#d[@]} = 1 ] && [ -e "${d[0]}" ] || die "expected exactly one entry in $1"
	printf '%s' "${d[0]##*/}"
}
ckver=$(one_dir "$cloud/lib/modules")
gkver=$(one_dir "$generic/lib/modules")
log "cloud kernel $ckver, generic kernel $gkver"

# The packages ship no modules.dep (their postinst runs depmod): make one.
"$busybox" depmod -b "$cloud" "$ckver"
"$busybox" depmod -b "$generic" "$gkver"

# mod_closure KDIR NAME... : paths (relative to KDIR) of the modules and all
# their dependencies. Built-in modules are skipped; unknown ones are fatal.
mod_closure() {
	local kdir=$1
	shift
	local -A path=() deps=() want=()
	local line p n d
	while IFS= read -r line; do
		p=${line%%:*}
		n=${p##*/}
		n=${n%%.ko*}
		n=${n//-/_}
		path[$n]=$p
		deps[$p]=${line#*:}
	done <"$kdir/modules.dep"
	for n in "$@"; do
		n=${n//-/_}
		p=${path[$n]:-}
		if [ -z "$p" ]; then
			if grep -Eq "/${n//_/[-_]}\.ko" "$kdir/modules.builtin" 2>/dev/null; then
				log "module $n is built into the kernel"
				continue
			fi
			die "module $n not found in $kdir"
		fi
		want[$p]=1
		for d in ${deps[$p]}; do want[$d]=1; done
	done
	printf '%s\n' "${!want[@]}" | LC_ALL=C sort
}

# copy_modules KDIR DEST NAME... : copy the closure and a modules.dep holding only it.
copy_modules() {
	local kdir=$1 dest=$2
	shift 2
	local list
	list=$(mod_closure "$kdir" "$@")
	mkdir -p "$dest"
	while IFS= read -r p; do
		mkdir -p "$dest/${p%/*}"
		cp "$kdir/$p" "$dest/$p"
	done <<<"$list"
	awk -F: 'NR == FNR { keep[$0] = 1; next } ($1 in keep)' <(printf '%s\n' "$list") \
		"$kdir/modules.dep" >"$dest/modules.dep"
	awk 'NR == FNR { keep[$0] = 1; next } ($0 in keep)' <(printf '%s\n' "$list") \
		"$kdir/modules.order" >"$dest/modules.order" 2>/dev/null || : >"$dest/modules.order"
	[ -f "$kdir/modules.builtin" ] && cp "$kdir/modules.builtin" "$dest/"
	log "$(wc -l <<<"$list") modules -> ${dest#"$tmp"/}"
}

# ---------------------------------------------------------------------------
o=$tmp/out
mkdir -p "$o/generic"

# ssh key: keep the existing one across rebuilds.
if [ -s "$out/id_ed25519" ] && [ -s "$out/id_ed25519.pub" ] &&
	ssh-keygen -y -f "$out/id_ed25519" >/dev/null 2>&1; then
	cp "$out/id_ed25519" "$out/id_ed25519.pub" "$o/"
else
	log "ssh-keygen"
	ssh-keygen -q -t ed25519 -N '' -C pim-testbed -f "$o/id_ed25519" </dev/null
fi
chmod 0600 "$o/id_ed25519"
chmod 0644 "$o/id_ed25519.pub"

# --- initramfs root ---------------------------------------------------------
r=$tmp/initrd
log "assembling the initramfs"
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc/dropbear,root/.ssh,proc,sys,dev,tmp,run,mnt,var/log,var/lib}
ln -s /run "$r/var/run"
cp -a "$here/rootfs/." "$r/"
chmod 0755 "$r/sbin/shutdown" "$r/etc/acpi/PWRF/00000080" "$r/etc/udhcpc.script" "$r/usr/lib/pim-testbed/cloud-init" "$r/usr/bin/cloud-init"
install -m 0755 "$here/init" "$r/init"
install -m 0755 "$busybox" "$r/bin/busybox"
while IFS= read -r a; do
	[ -e "$r/$a" ] || [ -L "$r/$a" ] || ln -s /bin/busybox "$r/$a"
done < <("$busybox" --list-full)
install -m 0755 "$sys/usr/sbin/qemu-ga" "$r/usr/sbin/qemu-ga"
install -m 0755 "$sys/usr/sbin/dropbear" "$r/usr/sbin/dropbear"
install -m 0755 "$sys/usr/bin/dropbearkey" "$r/usr/bin/dropbearkey"
install -m 0755 "$sys/usr/bin/scp" "$r/usr/bin/scp"
install -m 0755 "$sys/usr/bin/jq" "$r/usr/bin/jq"

# Shared libraries: what the packages' own dynamic loader (= ldd) resolves
# against the unpacked packages, copied to the path it names.
ld=$(find "$sys" -name 'ld-linux-x86-64.so.2' -type f | head -n 1)
[ -n "$ld" ] || die "no dynamic loader in libc6"
libpath=$sys/lib/$multiarch:$sys/usr/lib/$multiarch:$sys/lib:$sys/usr/lib
for b in usr/sbin/qemu-ga usr/sbin/dropbear usr/bin/dropbearkey usr/bin/scp usr/bin/jq; do
	listing=$("$ld" --library-path "$libpath" --list "$sys/$b") || die "ldd $b failed: $listing"
	if grep -q 'not found' <<<"$listing"; then die "ldd $b: $(grep 'not found' <<<"$listing")"; fi
	while read -r name arrow file _; do
		if [[ "$name" == /* ]]; then # the interpreter, at the path the binary names
			src=$ld
			dst=$name
		elif [ "$arrow" = "=>" ]; then
			src=$file
			dst=${file#"$sys"}
		else
			continue # linux-vdso
		fi
		[ -e "$r$dst" ] && continue
		mkdir -p "$r${dst%/*}"
		cp -L "$src" "$r$dst"
	done <<<"$listing"
done

# Host keys made at build time: the first ssh to a fresh guest would otherwise
# wait about a second for dropbear -R to make one under TCG, and the guest's
# identity is the same on every boot (public halves in ssh_host_keys.pub).
: >"$o/ssh_host_keys.pub"
for t in ed25519 ecdsa rsa; do
	k=$r/etc/dropbear/dropbear_${t}_host_key
	"$ld" --library-path "$libpath" "$sys/usr/bin/dropbearkey" -t "$t" -f "$k" >/dev/null 2>&1 ||
		die "dropbearkey -t $t failed"
	chmod 0600 "$k"
	"$ld" --library-path "$libpath" "$sys/usr/bin/dropbearkey" -y -f "$k" 2>/dev/null |
		grep -E '^(ssh-|ecdsa-)' | sed 's/ [^ ]*$/ pim-testbed/' >>"$o/ssh_host_keys.pub"
done
[ "$(wc -l <"$o/ssh_host_keys.pub")" = 3 ] || die "could not read the host keys back"

copy_modules "$cloud/lib/modules/$ckver" "$r/lib/modules/$ckver" "${cloud_modules[@]}"

install -m 0600 "$o/id_ed25519.pub" "$r/root/.ssh/authorized_keys"
chmod 0700 "$r/root" "$r/root/.ssh"
chmod 1777 "$r/tmp"
chmod 0700 "$r/etc/dropbear"
if [ "$(id -u)" = 0 ]; then
	mknod -m 0600 "$r/dev/console" c 5 1 || true
	mknod -m 0666 "$r/dev/null" c 1 3 || true
fi

(cd "$r" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
	cpio --quiet --null -o -H newc --owner=0:0) | gzip -9n >"$o/initrd.gz"
log "initrd.gz $(du -h "$o/initrd.gz" | cut -f1)"

install -m 0644 "$cloud/boot/vmlinuz-$ckver" "$o/vmlinuz"

# --- generic kernel for direct boot ---------------------------------------
install -m 0644 "$generic/boot/vmlinuz-$gkver" "$o/generic/vmlinuz"
copy_modules "$generic/lib/modules/$gkver" "$o/generic/modules/$gkver" "${generic_modules[@]}"
install -m 0755 "$busybox" "$o/busybox"

# --- bootable disks ---------------------------------------------------------
export MTOOLS_SKIP_CHECK=1
make_disk() { # name append
	local img=$tmp/$1.img
	log "disk $1: $2"
	mkfs.vfat -n PIMTESTBED -C "$img" 65536 >/dev/null
	syslinux --install "$img"
	printf 'DEFAULT l\nPROMPT 0\nTIMEOUT 0\nLABEL l\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND %s\n' \
		"$2" >"$tmp/syslinux.cfg"
	mcopy -i "$img" "$o/vmlinuz" ::/vmlinuz
	mcopy -i "$img" "$o/initrd.gz" ::/initrd.gz
	mcopy -i "$img" "$tmp/syslinux.cfg" ::/syslinux.cfg
	qemu-img convert -O qcow2 "$img" "$o/$1.qcow2"
	rm -f "$img"
}
make_disk guest-full "console=ttyS0 pim.agent=1 pim.acpi=1"
make_disk guest-noagent "console=ttyS0 pim.agent=0 pim.acpi=1"
make_disk guest-bare "console=ttyS0 pim.agent=0 pim.acpi=0"

# ---------------------------------------------------------------------------
# Move into place. The old stamp goes first, the new one last: a build
# interrupted in between leaves no stamp, so it does not look complete.
rm -f "$out/stamp"
for f in "${outputs[@]}"; do
	case "$f" in generic/*) continue ;; esac
	mv -f "$o/$f" "$out/$f"
done
rm -rf "$out/generic"
mv "$o/generic" "$out/generic"
{
	printf 'hash=%s\n' "$hash"
	printf 'built=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	printf 'cloud-kernel=%s\n' "$ckver"
	printf 'generic-kernel=%s\n' "$gkver"
	for p in "${pkgs[@]}"; do printf 'package=%s %s\n' "$p" "${pkg_ver[$p]}"; done
} >"$tmp/stamp"
mv -f "$tmp/stamp" "$out/stamp"
log "done in $(($(date +%s) - start)) s: $out"
