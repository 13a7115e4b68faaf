# Shared start of the benches (sourced): the repository as the working directory,
# the built executables and Node 22 on PATH, TCG, the test bed (built when missing;
# $testbed), and a pim home of the bench's own under $tmp (every XDG dir). The
# EXIT trap calls bench_done; a bench that sets its own trap ends it with bench_done.
#
# bench_need TOOL...: stop (69) when a TOOL is not installed.
# bench_install PKG...: apt-get install each PKG whose command is missing.
# bench_www FILE...: FILEs linked into $tmp/www with their SHA256SUMS, served on
#   loopback for pim's catalog; sets u, the server's URL.
# bench_done: the server stopped, $tmp removed (kept with PIM_BENCH_KEEP=1).
# pim_answer PROFILE RESOURCE URL: the answer file RESOURCE (/preseed.cfg, /user-data,
#   /meta-data) that pim's build server at URL serves for PROFILE (for Packer to serve).
# median N...: the median of the numbers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/node_modules/.bin:$PWD/dist/bin:$PATH" PIM_ACCEL=tcg NO_COLOR=1
# the shared test bed, named before XDG_CACHE_HOME points into $tmp
export PIM_TESTBED_DIR="${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}"
testbed="$PIM_TESTBED_DIR"
tmp="$(mktemp -d /tmp/pimb.XXXXXX)"
export XDG_RUNTIME_DIR="$tmp/run" XDG_CONFIG_HOME="$tmp/config" XDG_DATA_HOME="$tmp/data" XDG_CACHE_HOME="$tmp/cache" XDG_STATE_HOME="$tmp/state"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

bench_done() {
  [ -f "$tmp/http.pid" ] && kill "$(cat "$tmp/http.pid")" 2>/dev/null
  [ -n "${PIM_BENCH_KEEP:-}" ] || rm -rf "$tmp"
}
trap bench_done EXIT

bench_need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "bench: needs $t (apt-get install $t)" >&2; exit 69; }
  done
}

bench_install() {
  local p
  for p in "$@"; do
    command -v "$p" >/dev/null || { echo "bench: installing $p" >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
  done
}

bench_www() {
  local f port
  mkdir -p "$tmp/www"
  for f in "$@"; do ln -s "$f" "$tmp/www/${f##*/}"; done
  (cd "$tmp/www" && sha256sum -- "${@##*/}" >SHA256SUMS)
  setsid python3 -m http.server 0 --bind 127.0.0.1 --directory "$tmp/www" >"$tmp/http.log" 2>&1 </dev/null &
  echo $! >"$tmp/http.pid"
  for _ in $(seq 100); do grep -q 'port [0-9]' "$tmp/http.log" && break; sleep 0.1; done
  port=$(grep -o 'port [0-9]*' "$tmp/http.log" | head -1 | cut -d' ' -f2)
  u="http://127.0.0.1:$port"
}

pim_answer() {
  node --input-type=module -e "
    const { renderAnswer } = await import('$PWD/lib/install/serve.ts');
    const { loadProfile } = await import('$PWD/lib/config/profile.ts');
    const [profile, resource, url] = process.argv.slice(1);
    process.stdout.write(renderAnswer(resource, await loadProfile(profile), url).body);
  " "$@"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

bash test/testbed/build.sh
