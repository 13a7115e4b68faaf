#!/usr/bin/env bash
# pim-ssh and pim-cp on a live test-bed guest (TCG), side by side with plain OpenSSH:
#   1. `pim-ssh NAME -- true` over the cached master connection, against a fresh
#      `ssh` to the same forwarded port (same key, same options, no control master).
#      Target (issue 10): the cached one at least 3x faster.
#   2. `pim-cp` of a 100 MB file to the guest, against plain `scp -O` to the same
#      guest (its own connection, same key). Target: pim-cp at least 0.9x scp's
#      throughput.
# Needs hyperfine and a build. Usage: bench/ssh.sh [RUNS] (default 10)
source "$(dirname "$0")/common.sh"
bench_need hyperfine
runs=${1:-10}
name=benchssh
trap 'pim-stop $name --force --timeout 5 >/dev/null 2>&1 || true; bench_done' EXIT
# 512M: the guest's /tmp (tmpfs, in RAM) takes the 100 MB file
pim-run "$testbed/guest-full.qcow2" --name $name --snapshot --mem 512M --cpus 1 --wait ssh --wait agent >/dev/null 2>&1
export PIM_SSH_KEY="$testbed/id_ed25519"
port=$(jq -r .ssh_port "$XDG_RUNTIME_DIR/pim/$name.json")
pim-ssh $name -- true # the master, and the pinned known_hosts
kh="$XDG_RUNTIME_DIR/pim/$name.ssh/known_hosts"
fresh=(ssh -F none -i "$PIM_SSH_KEY" -o IdentitiesOnly=yes -o UserKnownHostsFile="$kh" -o StrictHostKeyChecking=yes
  -o GlobalKnownHostsFile=/dev/null -o ControlMaster=no -o ControlPath=none -o LogLevel=ERROR -p "$port" root@127.0.0.1)

hyperfine -N --warmup 2 --runs "$runs" --export-json "$tmp/ssh.json" \
  "pim-ssh $name -- true" \
  "${fresh[*]} true" >&2

head -c $((100 * 1024 * 1024)) /dev/urandom >"$tmp/100M"
scp_plain="scp -q -O -F none -i $PIM_SSH_KEY -o IdentitiesOnly=yes -o UserKnownHostsFile=$kh -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null -o ControlMaster=no -o ControlPath=none -P $port $tmp/100M root@127.0.0.1:/tmp/plain"
hyperfine -N --warmup 1 --runs 5 --export-json "$tmp/cp.json" \
  "pim-cp $tmp/100M $name:/tmp/pim" \
  "$scp_plain" >&2
# both copies arrived whole
want=$(sha256sum <"$tmp/100M" | cut -d' ' -f1)
for f in pim plain; do
  got=$(pim-ssh $name -- sha256sum /tmp/$f | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "bench: /tmp/$f in the guest is not the file sent" >&2; exit 65; }
done

node - "$tmp/ssh.json" "$tmp/cp.json" <<'JS'
const [cached, fresh] = require(process.argv[2]).results.map((x) => x.median * 1000);
const [pimcp, scp] = require(process.argv[3]).results.map((x) => x.median);
const mbs = (s) => 100 / s;
console.log(`pim-ssh -- true (cached master): ${cached.toFixed(0)} ms; fresh ssh: ${fresh.toFixed(0)} ms; cached is ${(fresh / cached).toFixed(1)}x faster (target >= 3x)`);
console.log(`pim-cp 100 MB: ${pimcp.toFixed(2)} s (${mbs(pimcp).toFixed(1)} MB/s); scp -O: ${scp.toFixed(2)} s (${mbs(scp).toFixed(1)} MB/s); pim-cp at ${(scp / pimcp).toFixed(2)}x scp's throughput (target >= 0.9x)`);
JS
