#!/usr/bin/env bash
# pim and OCI registries, against Debian's docker-registry on loopback (TLS with a
# self-signed certificate and htpasswd auth, as in test/bats/oci.bats):
#   1. a first push of a 256 MiB build (pim-deploy BUILD reg: the layer hashed as it
#      goes up in chunks), against skopeo copy of the same image from an OCI layout to
#      the same kind of registry, side by side, each into a fresh registry.
#      Target: pim at least 0.8x skopeo's throughput.
#   2. a re-push of the unchanged build. Target: under 1 s.
#   3. a remote-cache hit in a second pim home (pim-build run PROFILE: the key computed,
#      the build pulled and verified), against pim-build pull of the same tag.
#      Target: at most the pull's time plus 1 s.
# Needs hyperfine, docker-registry, skopeo, apache2-utils, openssl.
#   4. a pull into a fresh home against skopeo copy of the same tag to an OCI layout.
# Usage: bench/oci.sh [RUNS] (default 5)
source "$(dirname "$0")/common.sh"
bench_need hyperfine
source test/bats/oci.bash
source test/bats/deploy.bash
runs=${1:-5}
regn=0
fresh_registry() { # a new registry (new storage) on the same port for each measured push
  [ -n "${REGDIR:-}" ] && kill_registry "$REGDIR"
  regn=$((regn + 1))
  REGDIR="$tmp/reg$regn"
  mkdir -p "$REGDIR"
  [ -f "$tmp/reg1/htpasswd" ] && cp "$tmp/reg1/htpasswd" "$tmp/reg1/cert.pem" "$tmp/reg1/key.pem" "$REGDIR/"
  REG_PORT=${REG_PORT:-$(free_port)} start_registry "$REGDIR" tls >/dev/null
  REG_PORT=${REG##*:}
}
trap '[ -n "${REGDIR:-}" ] && kill_registry "$REGDIR"; bench_done' EXIT
export PIM_REG="$REG_USER:$REG_PASS"
fresh_registry
mkdir -p "$XDG_CONFIG_HOME/pim/targets.d" "$XDG_CONFIG_HOME/pim/profiles.d"
echo "reg: {type: oci, ref: \"$REG/team/images\", insecure: true, creds_env: PIM_REG}" >"$XDG_CONFIG_HOME/pim/targets.d/reg.yml"

# a 256 MiB build of random data (it does not compress: every byte goes over the wire)
head -c 268435456 /dev/urandom >"$tmp/big.raw"
qemu-img convert -q -f raw -O qcow2 "$tmp/big.raw" "$tmp/big.qcow2"
rm -f "$tmp/big.raw"
size=$(stat -c %s "$tmp/big.qcow2")
b=$(register big one "$tmp/big.qcow2")

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t0 $t1" | awk '{print $2 - $1}'; }
# cpu CMD...: its wall-clock seconds, then its CPU seconds (user + system), on one line
cpu() {
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$tmp/cpu" "$@" >/dev/null
  t1=$(date +%s.%N)
  echo "$t0 $t1 $(tail -1 "$tmp/cpu")" | awk '{print $2 - $1, $3 + $4}'
}
regcpu() { awk '{print ($14 + $15) / 100}' "/proc/$(cat "$REGDIR/pid")/stat"; }

# the OCI layout skopeo copies: the image pim pushed, as it is (digests kept)
pim-deploy "$b" reg >/dev/null
skopeo copy -q --preserve-digests --dest-oci-accept-uncompressed-layers --src-tls-verify=false --src-creds "$PIM_REG" \
  "docker://$REG/team/images:big" "oci:$tmp/layout:big"

# 1. first pushes, interleaved (pim, skopeo, pim, ...) so that both meet the same load, each
#    into a fresh registry; pim's digest cache and upload sessions emptied. Each run's wall
#    clock, its CPU (user + system) and the registry's CPU are kept: on a shared machine the
#    CPU figures hold still while the wall clock moves with the other runs.
pp=() sk=() pc=() sc=() prc=() src=() pair=() loads=()
for _ in $(seq "$runs"); do
  loads+=("$(cut -d' ' -f1 /proc/loadavg)")
  fresh_registry
  rm -rf "$XDG_CACHE_HOME/pim/oci"
  read -r w c < <(cpu pim-deploy "$b" reg)
  pp+=("$w") pc+=("$c") prc+=("$(regcpu)")
  fresh_registry
  read -r w2 c < <(cpu skopeo copy -q --preserve-digests --dest-tls-verify=false --dest-creds "$PIM_REG" "oci:$tmp/layout:big" "docker://$REG/team/images:big")
  sk+=("$w2") sc+=("$c") src+=("$(regcpu)")
  pair+=("$(awk -v p="$w" -v s="$w2" 'BEGIN {print s / p}')")
  echo "bench: push $((${#pp[@]})): pim ${w}s (cpu ${pc[-1]}s, registry ${prc[-1]}s), skopeo ${w2}s (cpu ${c}s, registry ${src[-1]}s), load ${loads[-1]}" >&2
done
mp=$(median "${pp[@]}") ms=$(median "${sk[@]}") mpair=$(median "${pair[@]}")
mpc=$(median "${pc[@]}") msc=$(median "${sc[@]}") mprc=$(median "${prc[@]}") msrc=$(median "${src[@]}")
mload=$(median "${loads[@]}")

# 2. the unchanged re-push
noopload=$(cut -d' ' -f1 /proc/loadavg)
hyperfine -N --warmup 1 --runs "$((runs + 2))" --export-json "$tmp/noop.json" "pim-deploy $b reg" >&2
noop=$(jq -r '.results[0].median' "$tmp/noop.json")
noopcpu=$(jq -r '.results[0] | .user + .system' "$tmp/noop.json")

# 3. a remote-cache hit in a second home against a pull of the same tag
echo "bench: {builder: raw, disk_size: 256M}" >"$XDG_CONFIG_HOME/pim/profiles.d/bench.yml"
key=$(pim-build key bench)
id="bench-${key:0:12}"
src="$XDG_DATA_HOME/pim/builds/$b"
mkdir -p "$XDG_DATA_HOME/pim/builds/$id"
cp "$src/big.qcow2" "$XDG_DATA_HOME/pim/builds/$id/bench.qcow2"
jq --arg k "$key" --arg id "$id" '.key=$k | .id=$id | .profile="bench" | .disk.file="bench.qcow2"' "$src/build.json" >"$XDG_DATA_HOME/pim/builds/$id/build.json"
: >"$XDG_DATA_HOME/pim/builds/$id/build.log"
echo "cache: {type: oci, ref: \"$REG/team/cache\", insecure: true, creds_env: PIM_REG}" >>"$XDG_CONFIG_HOME/pim/targets.d/reg.yml"
pim-deploy "$id" cache >/dev/null
conf="$XDG_CONFIG_HOME"
export XDG_DATA_HOME="$tmp/b/data" XDG_CACHE_HOME="$tmp/b/cache" XDG_CONFIG_HOME="$tmp/b/config"
mkdir -p "$XDG_CONFIG_HOME/pim/profiles.d"
cp "$conf/pim/profiles.d/bench.yml" "$XDG_CONFIG_HOME/pim/profiles.d/"
printf 'build:\n  remote_cache: {ref: "%s/team/cache", insecure: true, creds_env: PIM_REG}\n' "$REG" >"$XDG_CONFIG_HOME/pim/pim.yml"
pl=() hit=()
hitload=$(cut -d' ' -f1 /proc/loadavg)
for _ in $(seq "$runs"); do
  rm -rf "$XDG_DATA_HOME" "$XDG_CACHE_HOME"
  pl+=("$(secs pim-build pull --insecure --creds-env PIM_REG "$REG/team/cache:$id")")
  rm -rf "$XDG_DATA_HOME" "$XDG_CACHE_HOME"
  hit+=("$(secs pim-build run bench)")
  [ -f "$XDG_DATA_HOME/pim/builds/$id/bench.qcow2" ] || { echo "bench: the cache hit did not register $id" >&2; exit 70; }
done
mpl=$(median "${pl[@]}") mh=$(median "${hit[@]}")

# 4. a pull of the same image in a fresh home, against skopeo copy of it to an OCI layout
#    (both fetch the 256 MiB layer and check its digest; pim also unpacks the disk)
pu=() su=()
for _ in $(seq "$runs"); do
  rm -rf "$XDG_DATA_HOME" "$XDG_CACHE_HOME" "$tmp/pulled"
  read -r w _ < <(cpu pim-build pull --insecure --creds-env PIM_REG "$REG/team/cache:$id")
  pu+=("$w")
  read -r w _ < <(cpu skopeo copy -q --preserve-digests --dest-oci-accept-uncompressed-layers --src-tls-verify=false --src-creds "$PIM_REG" "docker://$REG/team/cache:$id" "oci:$tmp/pulled:x")
  su+=("$w")
done
mpu=$(median "${pu[@]}") msu=$(median "${su[@]}")

awk -v p="$mp" -v s="$ms" -v b="$size" -v n="$noop" -v pl="$mpl" -v h="$mh" -v pr="$mpair" -v pc="$mpc" -v sc="$msc" \
  -v prc="$mprc" -v src="$msrc" -v la="$mload" -v runs="$runs" -v pu="$mpu" -v su="$msu" \
  -v nc="$noopcpu" -v nl="$noopload" -v hl="$hitload" 'BEGIN {
  printf "first push of %d bytes (median of %d, interleaved, load average %s): pim-deploy %.2f s (%.1f MB/s), skopeo copy of the same OCI layout %.2f s (%.1f MB/s)\n", b, runs, la, p, b / p / 1e6, s, b / s / 1e6
  printf "ratio: %.2fx of skopeo by the medians, %.2fx by the median of each pair (target >= 0.8x)\n", s / p, pr
  printf "CPU per push: pim %.2f s, skopeo %.2f s; the registry: %.2f s under pim, %.2f s under skopeo\n", pc, sc, prc, src
  printf "pull in a fresh home: pim-build pull %.2f s (%.1f MB/s), skopeo copy to an OCI layout %.2f s (%.1f MB/s), %.2fx\n", pu, b / pu / 1e6, su, b / su / 1e6, su / pu
  printf "re-push of the unchanged build: %.3f s, %.3f s of CPU (median of %d, load average %s; target < 1 s)\n", n, nc, runs + 2, nl
  printf "remote-cache hit: %.2f s; pull of the same tag: %.2f s; difference %.2f s (median of %d, interleaved, load average %s; target <= 1 s)\n", h, pl, h - pl, runs, hl
}'
