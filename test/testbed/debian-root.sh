#!/usr/bin/env bash
# A minimal real Debian 12 (bookworm) root, made with mmdebstrap from Debian's
# packages, for running pim's answer files' late commands as the installers
# run them (test/bats/answers.bats): `in-target` and `curtin in-target --` are a
# chroot into a copy of this root mounted at /target.
#
# Packages: minbase, openssh-server (sshd -T checks the drop-in), sudo (visudo
# checks the sudoers file), passwd and adduser (useradd, chpasswd), wget (the
# late command fetches installs.d/PROFILE.sh, as d-i's busybox wget does).
# No services run: mmdebstrap installs with a policy that starts nothing.
#
# needs: root, mmdebstrap, a Debian mirror (apt's sources); about a minute.
#
# Output: ${PIM_DEBIAN_ROOT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/debian-root-<hash>},
# where <hash> is the start of this script's sha256, so a changed script makes a
# new root; prints that directory on stdout. Inside it:
#   root/    the root file system (do not change it: tests use it read-only)
#   stamp    written last: the package versions
# A root whose stamp exists is not built again.

set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
export LC_ALL=C

log() { printf 'debian-root: %s\n' "$*" >&2; }
die() {
	printf 'debian-root: error: %s\n' "$*" >&2
	exit 1
}

hash=$(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-16)
out=${PIM_DEBIAN_ROOT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/debian-root-$hash}
if [ -f "$out/stamp" ] && [ -d "$out/root/usr" ]; then
	echo "$out"
	exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root makes files owned by other users)"
command -v mmdebstrap >/dev/null 2>&1 || die "missing tool mmdebstrap (apt-get install mmdebstrap)"

mkdir -p "$out"
exec 9>"$out/.lock"
if ! flock -n 9; then
	log "another build holds $out/.lock; waiting"
	flock 9
fi
if [ -f "$out/stamp" ] && [ -d "$out/root/usr" ]; then
	echo "$out"
	exit 0
fi

rm -rf "$out/root" "$out/.root.tmp"
log "mmdebstrap bookworm into $out/root"
mmdebstrap --variant=minbase --mode=root --quiet \
	--aptopt='APT::Install-Recommends "false"' \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--include=openssh-server,sudo,passwd,adduser,wget \
	--customize-hook='mkdir -p "$1/target"' \
	bookworm "$out/.root.tmp" >&2
mv "$out/.root.tmp" "$out/root"
chroot "$out/root" dpkg-query -W -f '${Package} ${Version}\n' openssh-server sudo passwd adduser wget >"$out/stamp.tmp"
mv "$out/stamp.tmp" "$out/stamp"
log "built $out"
echo "$out"
