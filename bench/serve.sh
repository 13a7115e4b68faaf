#!/usr/bin/env bash
# Benchmark: pim-serve answering a rendered /preseed.cfg on loopback under wrk.
# Prints wrk's latency distribution; the goal is a median (50%) under 5 ms.
# usage: bench/serve.sh [DURATION=10s] [CONNECTIONS=10] [THREADS=2]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
d=${1:-10s} c=${2:-10} t=${3:-2}
tmp=$(mktemp -d)
export XDG_CONFIG_HOME="$tmp/config" XDG_CACHE_HOME="$tmp/cache" PIM_LOG=${PIM_LOG:-info}
trap 'kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
"$repo/dist/bin/pim-serve" --port 0 >"$tmp/url" 2>/dev/null &
pid=$!
for _ in $(seq 50); do [ -s "$tmp/url" ] && break; sleep 0.1; done
url="$(cat "$tmp/url")/preseed.cfg"
curl -fsS "$url" >/dev/null
echo "wrk -t$t -c$c -d$d --latency $url" >&2
wrk -t"$t" -c"$c" -d"$d" --latency "$url"
