#!/usr/bin/env bash
# Benchmark pim-ventoy on a stand-in stick (test/testbed/ventoy-stick.sh), as root:
#  1. `pim-ventoy add` of a SIZE MiB ISO onto an image file (loop device, exfat-fuse
#     mount, copy with fsync, read-back hash, sidecar, unmount, detach: all of it)
#     against `cp` of the same file onto the same mounted file system followed by
#     `sync` (mount not counted). Goal: pim's throughput at least 0.8x cp+sync's.
#  2. `pim-ventoy list` with the stick present (a loop device of it: list reads
#     every disk's partition table, FAT16 and exFAT) against `node -e 0`.
#     Goal: within 2x.
# usage: bench/ventoy.sh [SIZE_MIB=1024] [RUNS=2]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
mib=${1:-1024} runs=${2:-2}
[ "$(id -u)" -eq 0 ] || { echo "bench/ventoy.sh: needs root (loop devices, mounts)" >&2; exit 77; }
export PATH="$repo/node_modules/.bin:$repo/dist/bin:$PATH" NO_COLOR=1
tmp=$(mktemp -d /tmp/pimv.XXXXXX)
export XDG_CONFIG_HOME="$tmp/config" XDG_CACHE_HOME="$tmp/cache" XDG_RUNTIME_DIR="$tmp/run"
mkdir -p "$XDG_RUNTIME_DIR" "$XDG_CACHE_HOME/pim/isos" "$XDG_CONFIG_HOME/pim/isos.d" "$tmp/mnt"
chmod 700 "$XDG_RUNTIME_DIR"
loop=
cleanup() {
  mountpoint -q "$tmp/mnt" && umount "$tmp/mnt"
  [ -n "$loop" ] && losetup -d "$loop"
  rm -rf "$tmp"
}
trap cleanup EXIT
img="$tmp/stick.img"
bash "$repo/test/testbed/ventoy-stick.sh" "$img" $((mib + mib / 4 + 64))
iso="$XDG_CACHE_HOME/pim/isos/big.iso"
head -c "$((mib * 1048576))" /dev/urandom >"$iso"
sum=$(sha256sum "$iso" | cut -d' ' -f1)
printf 'big:\n  url: http://127.0.0.1:9/big.iso\n  checksum: sha256:%s\n' "$sum" >"$XDG_CONFIG_HOME/pim/isos.d/big.yml"
pim-iso verify big >/dev/null # the verify record: add's check of the source is then a stat
sync
mount_p1() { loop=$(losetup -f --show -P "$img"); partx -u "$loop"; mount.exfat-fuse "${loop}p1" "$tmp/mnt" >/dev/null 2>&1; }
umount_p1() { umount "$tmp/mnt"; losetup -d "$loop"; loop=; }
secs() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo "scale=3; ($e - $s) / 1000000000" | bc; }
best() { printf '%s\n' "$@" | sort -n | head -1; }
cp_sync() { cp "$iso" "$tmp/mnt/big.iso" && sync; }
cpt=() pimt=()
for _ in $(seq "$runs"); do
  mount_p1; sync; cpt+=("$(secs cp_sync)"); rm "$tmp/mnt/big.iso"; umount_p1; sync
  pimt+=("$(secs pim-ventoy add big --stick "$img")"); sync
  mount_p1; rm "$tmp/mnt/big.iso" "$tmp/mnt/big.iso.sha256"; umount_p1
done
c=$(best "${cpt[@]}") p=$(best "${pimt[@]}")
echo "cp + sync of $mib MiB:                      ${c} s  ($(echo "scale=1; $mib / $c" | bc) MiB/s; runs: ${cpt[*]})"
echo "pim-ventoy add (incl. read-back hash):     ${p} s  ($(echo "scale=1; $mib / $p" | bc) MiB/s; runs: ${pimt[*]})"
echo "throughput, pim-ventoy add / cp+sync:      $(echo "scale=2; $c / $p" | bc)x (goal: at least 0.8x)"
loop=$(losetup -f --show -P "$img"); partx -u "$loop"
pim-ventoy list | grep -q "^$loop" || { echo "bench: list does not find $loop" >&2; exit 70; }
if command -v hyperfine >/dev/null; then
  hyperfine -N --warmup 3 --runs 30 'node -e 0' 'pim-ventoy list' "pim-ventoy list --stick $img" 2>&1 | grep -E 'Time|±|^Bench|faster|times'
else
  for c in 'node -e 0' 'pim-ventoy list'; do
    s=$(date +%s%N); for _ in $(seq 20); do $c >/dev/null; done; e=$(date +%s%N)
    echo "$c: $(((e - s) / 20000000)) ms (mean of 20)"
  done
fi
