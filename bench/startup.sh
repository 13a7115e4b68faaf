#!/usr/bin/env bash
# Start-up cost of pim's executables against bare `node -e 0`, side by side in
# hyperfine runs (same node binary: the first `node` on PATH, which is what
# the executables' `#!/usr/bin/env node` runs).
#  1. no VMs: pim-ps, pim-stop --help
#  2. three live test-bed guests (idle, booted): pim-ps (which asks each VM's QMP
#     for its state, all at once), pim-ps -q (which asks none), pim-status NAME
#  3. pim-ps with 20 runtime entries: 10 live (processes that look like their
#     QEMU, with no QMP socket: "unknown" at once), 10 stale (recreated before
#     every run, since pim-ps cleans them up).
# Targets: medians <= 1.5x node -e 0 for (1); (2) is reported; <= 2x for (3).
# Needs hyperfine (apt-get install hyperfine) and a build (node build.mjs).
source "$(dirname "$0")/common.sh"
bench_need hyperfine
pids=()
cleanup() { pim-ps -q 2>/dev/null | pim-stop --force --timeout 5 >/dev/null 2>&1 || true; [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; bench_done; }
trap cleanup EXIT
echo "node $(node --version) at $(command -v node)" >&2

[ -z "$(pim-ps -q)" ] || { echo "bench: expected no VMs" >&2; exit 70; }
hyperfine -N --warmup 5 --runs 40 --export-json "$tmp/empty.json" \
  'node -e 0' 'pim-ps' 'pim-stop --help' >&2

for n in bench bench2 bench3; do
  pim-run "$testbed/guest-full.qcow2" --name "$n" --snapshot --mem 128M --cpus 1 >/dev/null 2>&1
done
for n in bench bench2 bench3; do
  pim-console "$n" --ro --replay --until 'pim-testbed ready' --timeout 180 >/dev/null
done
[ "$(pim-ps | grep -c $'\trunning\t')" -eq 3 ] || { echo "bench: expected 3 running VMs" >&2; exit 70; }
hyperfine -N --warmup 5 --runs 40 --export-json "$tmp/live.json" \
  'node -e 0' 'pim-ps' 'pim-ps -q' 'pim-status bench' >&2

pim-ps -q | pim-stop --force >/dev/null 2>&1
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

node - "$tmp/empty.json" "$tmp/live.json" "$tmp/ps20.json" <<'JS'
const [a, b, c] = process.argv.slice(2).map((f) => require(f).results);
const med = (r) => r.median * 1000;
const line = (r, base, what, target) => console.log(`${r.command}${what}: ${med(r).toFixed(1)} ms = ${(med(r) / base).toFixed(2)}x node -e 0 at ${base.toFixed(1)} ms${target ? ` (target <= ${target})` : ''}`);
console.log(`node -e 0: ${med(a[0]).toFixed(1)} ms (median)`);
for (const r of a.slice(1)) line(r, med(a[0]), ', no VMs', '1.5x');
for (const r of b.slice(1)) line(r, med(b[0]), ', 3 live VMs', '');
line(c[1], med(c[0]), ', 20 entries (10 live without QMP, 10 stale)', '2x');
JS
