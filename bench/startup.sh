#!/usr/bin/env bash
# Start-up cost of pim's executables against bare `node -e 0`, side by side in
# one hyperfine run (same node binary: the first `node` on PATH, which is what
# the executables' `#!/usr/bin/env node` runs).
#  1. pim-ps (empty), pim-status NAME (a live test-bed guest), pim-stop --help
#  2. pim-ps with 20 runtime entries: 10 live (processes that look like their
#     QEMU), 10 stale (recreated before every run, since pim-ps cleans them up).
# Targets (issue 2): medians <= 1.5x node -e 0 for (1); <= 2x for (2).
# Needs hyperfine (apt-get install hyperfine) and a build (node build.mjs).
source "$(dirname "$0")/common.sh"
pids=()
cleanup() { pim-stop bench --force --timeout 5 >/dev/null 2>&1 || true; [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
echo "node $(node --version) at $(command -v node)" >&2

pim-run "$testbed/guest-full.qcow2" --name bench --snapshot --mem 256M --cpus 1 >/dev/null 2>&1
pim-console bench --ro --replay --until 'pim-testbed ready' --timeout 120 >/dev/null

hyperfine -N --warmup 5 --runs 40 --export-json "$tmp/startup.json" \
  'node -e 0' 'pim-ps' 'pim-status bench' 'pim-stop --help' >&2

pim-stop bench --force >/dev/null 2>&1
d="$XDG_RUNTIME_DIR/pim"
for i in $(seq 1 10); do
  bash -c "exec -a 'qemu-system-x86_64 -name live$i -qmp unix:$d/live$i.qmp,server=on,wait=off' sleep 600" & pids+=($!)
  echo "${pids[-1]}" >"$d/live$i.pid"
  printf '{"name":"live%s","kind":"run","image":"/img/live%s.qcow2","pid":%s,"ssh_port":%s,"bridged":false,"root":false,"agent":true,"accel":"tcg","mem":"256M","cpus":1,"snapshot":true,"owner":{"uid":0,"user":"root"},"started":"%s"}\n' \
    "$i" "$i" "${pids[-1]}" "$((20000 + i))" "$(date -u +%FT%TZ)" >"$d/live$i.json"
done
cat >"$tmp/stale.sh" <<STALE
for i in \$(seq 1 10); do
  echo 999999 >"$d/stale\$i.pid"; : >"$d/stale\$i.qmp"
  printf '{"name":"stale%s","pid":999999}\n' "\$i" >"$d/stale\$i.json"
done
STALE
bash "$tmp/stale.sh"
[ "$(pim-ps -q | wc -l)" -eq 10 ] || { echo "bench: expected 10 live entries" >&2; exit 70; }
hyperfine -N --warmup 3 --runs 40 --prepare "bash $tmp/stale.sh" --export-json "$tmp/ps20.json" \
  'node -e 0' 'pim-ps' >&2

node - "$tmp/startup.json" "$tmp/ps20.json" <<'JS'
const [a, b] = process.argv.slice(2).map((f) => require(f).results);
const med = (r) => r.median * 1000;
const base = med(a[0]);
console.log(`node -e 0: ${base.toFixed(1)} ms (median)`);
for (const r of a.slice(1)) console.log(`${r.command}: ${med(r).toFixed(1)} ms = ${(med(r) / base).toFixed(2)}x node (target <= 1.5x)`);
const base2 = med(b[0]);
console.log(`pim-ps, 20 entries (10 live, 10 stale): ${med(b[1]).toFixed(1)} ms = ${(med(b[1]) / base2).toFixed(2)}x node -e 0 at ${base2.toFixed(1)} ms (target <= 2x)`);
JS
