#!/usr/bin/env bash
# pim-deploy against its own libvirtd and sshd (test/bats/libvirt.bash), TCG:
#   1. a re-deploy with nothing to do, locally (qemu:///system). Target: under 1 s.
#   2. upload throughput over qemu+ssh:// (virsh vol-upload of the file, hashed alongside) of a
#      256 MB image, against scp of the same file to the same sshd, side by side.
#      Target: at least 0.9x scp's throughput.
# Needs hyperfine, libvirt (libvirt-daemon-system) and openssh-server.
# Usage: bench/deploy.sh [RUNS] (default 5)
source "$(dirname "$0")/common.sh"
bench_need hyperfine
source test/bats/libvirt.bash
runs=${1:-5}
trap 'libvirt_down "$tmp"; bench_done' EXIT
libvirt_up "$tmp"
export PATH="$tmp/bin:$PATH"
mkdir -p "$XDG_CONFIG_HOME/pim/targets.d"
cat >"$XDG_CONFIG_HOME/pim/targets.d/bench.yml" <<EOF
default: {type: libvirt, virt_type: qemu, network: user, pool: pimt, pool_path: "$tmp/pool"}
loc: {uri: "$(lv_uri "$tmp")"}
rem: {uri: "qemu+ssh://root@127.0.0.1:$SSHD_PORT/system?socket=$tmp/lv/libvirt-sock"}
EOF
source test/bats/deploy.bash
b1=$(register bench one "$testbed/guest-full.qcow2")
# 1. the no-op
pim-deploy "$b1" loc >/dev/null
hyperfine -N --warmup 1 --runs "$runs" --export-json "$tmp/noop.json" "pim-deploy $b1 loc" >&2
noop=$(jq -r '.results[0].median' "$tmp/noop.json")

# 2. throughput: a 256 MB image of random data (it does not boot: the deploy ends in 79),
# its volume deleted before each run; pim-deploy's debug log times the upload itself
head -c 268435456 /dev/urandom >"$tmp/big.raw"
qemu-img convert -q -f raw -O qcow2 "$tmp/big.raw" "$tmp/big.qcow2"
rm -f "$tmp/big.raw"
size=$(stat -c %s "$tmp/big.qcow2")
b2=$(register big two "$tmp/big.qcow2")
up() { # one upload through pim-deploy; the health check fails fast (not a bootable disk): 79 expected
  virsh -q -c "$(lv_uri "$tmp")" "vol-delete --pool pimt big-$(sha256sum "$tmp/big.qcow2" | cut -c1-12).qcow2" >/dev/null 2>&1 || true
  PIM_LOG=debug pim-deploy "$b2" rem --health-timeout 0.1 2>"$tmp/up.log" >/dev/null || true
  sed -n 's/.*uploaded [0-9]* bytes in \([0-9.]*\) s$/\1/p' "$tmp/up.log" | grep . || { cat "$tmp/up.log" >&2; exit 70; }
}
sc() {
  local t0 t1
  t0=$(date +%s.%N)
  scp -q -S "$tmp/bin/ssh" -P "$SSHD_PORT" "$tmp/big.qcow2" "root@127.0.0.1:$tmp/scp.copy"
  t1=$(date +%s.%N)
  rm -f "$tmp/scp.copy"
  echo "$t0 $t1" | awk '{print $2 - $1}'
}
pd=() s=()
for _ in $(seq "$runs"); do pd+=("$(up)"); s+=("$(sc)"); done
mp=$(median "${pd[@]}") ms=$(median "${s[@]}")
awk -v n="$noop" -v p="$mp" -v s="$ms" -v b="$size" 'BEGIN {
  printf "no-op re-deploy (local): %.3f s (target < 1 s)\n", n
  printf "upload over qemu+ssh:// (vol-upload of the file, hashed alongside): %.1f MB/s (%.2f s)\n", b / p / 1e6, p
  printf "scp of the same file: %.1f MB/s (%.2f s)\n", b / s / 1e6, s
  printf "ratio: %.2fx (target >= 0.9x)\n", s / p
}'
