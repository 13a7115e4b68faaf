#!/usr/bin/env bash
# pim-ip NAME against the seed method, side by side, on a live test-bed guest:
#   (echo '{"execute":"guest-network-get-interfaces"}'; sleep 1) | socat - UNIX-CONNECT:NAME.ga
# Target (issue 2): pim-ip at least 5x faster. Needs hyperfine, socat and a build.
source "$(dirname "$0")/common.sh"
bench_need hyperfine socat
trap 'pim-stop benchip --force --timeout 5 >/dev/null 2>&1 || true; bench_done' EXIT
pim-run "$testbed/guest-full.qcow2" --name benchip --snapshot --mem 256M --cpus 1 >/dev/null 2>&1
pim-console benchip --ro --replay --until 'pim-testbed ready' --timeout 120 >/dev/null
ga="$XDG_RUNTIME_DIR/pim/benchip.ga"
pim-ip benchip >&2
hyperfine -N --warmup 3 --runs 20 --export-json "$tmp/ip.json" \
  'pim-ip benchip' \
  "bash -c '(echo \"{\\\"execute\\\":\\\"guest-network-get-interfaces\\\"}\"; sleep 1) | socat - UNIX-CONNECT:$ga'" >&2
node - "$tmp/ip.json" <<'JS'
const r = require(process.argv[2]).results;
const [pim, seed] = r.map((x) => x.median * 1000);
console.log(`pim-ip: ${pim.toFixed(1)} ms (median); seed socat+sleep method: ${seed.toFixed(1)} ms; pim-ip is ${(seed / pim).toFixed(1)}x faster (target >= 5x)`);
JS
