#!/usr/bin/env bash
# Layered builds (issue 20), under TCG:
#
#   1. the test bed's installer ISO: a full build, then a rebuild after a
#      script change (the install stage reused). Target: rebuild <= 0.6x.
#   2. two profiles that share an install stage: `pim-build run ja jb -j 2`
#      against building them one after the other from nothing (the stages
#      wiped between, as before stages). Target: <= 0.75x. Also shown: one
#      after the other with the stage shared (no -j).
#   3. with --cloud: the real Debian cloud image (~/.cache/pim/debian-cloud,
#      test/testbed/debian-cloud.sh), full build then rebuild after a script
#      change. Target: rebuild <= 0.5x. Minutes under TCG.
#
# The Packer QEMU builder has no stages: a script change is a full rebuild
# (bench/build.sh times one on the same ISO). Prints a table of seconds.
#
#   bench/layers.sh [--cloud]
cloud=0
[ "${1:-}" = --cloud ] && cloud=1
source "$(dirname "$0")/common.sh"
bash test/testbed/installer/build.sh
[ "$cloud" = 1 ] && bash test/testbed/debian-cloud.sh
debcloud="$(dirname "$testbed")/debian-cloud/debian-12-cloud.qcow2"

# the ISO and the image through pim's catalog, from a loopback server (downloaded before timing)
www=("$testbed/installer/di.iso")
[ "$cloud" = 1 ] && www+=("$debcloud")
bench_www "${www[@]}"
c="$XDG_CONFIG_HOME/pim"
mkdir -p "$c/isos.d" "$c/profiles.d" "$c/scripts.d" "$c/installs.d" "$c/preseeds.d"
cat >"$c/isos.d/tb.yml" <<EOF
tb: {url: "$u/di.iso", checksum_url: "$u/SHA256SUMS", distro: debian}
debian-12-cloud: {kind: image, url: "$u/debian-12-cloud.qcow2", checksum_url: "$u/SHA256SUMS"}
EOF
cat >"$c/profiles.d/tb.yml" <<EOF
default: {ssh_user: root, ssh_keys: ["$(cat "$testbed/id_ed25519.pub")"], disk_size: 256M, mem: 256M, cpus: 1}
bench: {iso: tb, scripts: [bench.sh]}
ja: {iso: tb, preseed: shared.cfg.eta, installs: [shared.sh], scripts: [ja.sh]}
jb: {iso: tb, preseed: shared.cfg.eta, installs: [shared.sh], scripts: [jb.sh]}
real: {builder: cloud-init, image: debian-12-cloud, hostname: realweb, ssh_user: admin, disk_size: 3G, mem: 512M, cpus: 2, timeout: 1800, compress: true, scripts: [real.sh]}
EOF
# ja and jb render the same answer file: pim's template without the profile's name in it
sed "s/<%= name %>/shared/; s|'/installs.d/' + name + '.sh|'/installs.d/shared.sh|" \
  defaults/preseeds.d/default.cfg.eta >"$c/preseeds.d/shared.cfg.eta"
for f in installs.d/bench.sh installs.d/shared.sh; do printf '#!/bin/sh\necho late >/etc/pim-late\n' >"$c/$f"; done
for p in bench ja jb real; do printf '#!/bin/sh\necho %s-one >/root/mark\n' "$p" >"$c/scripts.d/$p.sh"; done
pim-iso download tb >/dev/null 2>&1
[ "$cloud" = 1 ] && pim-iso download debian-12-cloud >/dev/null 2>&1

# secs CMD...: the seconds CMD takes (its stderr in $tmp/err.log; a failure stops the bench)
secs() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null 2>>"$tmp/err.log" || { tail -n 30 "$tmp/err.log" >&2; exit 1; }
  t1=$(date +%s%N)
  echo "scale=1; ($t1 - $t0) / 1000000000" | bc
}
fresh() { rm -rf "$XDG_DATA_HOME/pim/builds" "$XDG_DATA_HOME/pim/stages" 2>/dev/null || { chmod -R u+w "$XDG_DATA_HOME/pim"; rm -rf "$XDG_DATA_HOME/pim/builds" "$XDG_DATA_HOME/pim/stages"; }; }
ratio() { echo "scale=2; $1 / $2" | bc; }
change() { echo "echo changed-$RANDOM >>/root/mark" >>"$c/scripts.d/$1.sh"; }

fresh
full=$(secs pim-build run bench)
change bench
re=$(secs pim-build run bench)
fresh
j2=$(secs pim-build run ja jb -j 2)
fresh
shared=$(secs sh -c 'pim-build run ja && pim-build run jb')
fresh
a=$(secs pim-build run ja)
fresh
b=$(secs pim-build run jb)
seq=$(echo "$a + $b" | bc)
printf '%-58s %8s %8s %8s\n' "test bed installer ISO (TCG)" seconds ratio target
printf '%-58s %8s\n' "full build" "$full"
printf '%-58s %8s %8s %8s\n' "rebuild after a script change (install reused)" "$re" "$(ratio "$re" "$full")" "<=0.60"
printf '%-58s %8s\n' "Packer: a script change is a full rebuild (bench/build.sh)" "=full"
printf '%-58s %8s\n' "ja then jb, each from nothing" "$seq"
printf '%-58s %8s %8s\n' "ja then jb, the install stage shared" "$shared" "$(ratio "$shared" "$seq")"
printf '%-58s %8s %8s %8s\n' "run ja jb -j 2" "$j2" "$(ratio "$j2" "$seq")" "<=0.75"
if [ "$cloud" = 1 ]; then
  fresh
  cfull=$(secs pim-build run real)
  change real
  cre=$(secs pim-build run real)
  printf '%-58s %8s\n' "real Debian cloud image: full build" "$cfull"
  printf '%-58s %8s %8s %8s\n' "real Debian cloud image: rebuild after a script change" "$cre" "$(ratio "$cre" "$cfull")" "<=0.50"
fi
