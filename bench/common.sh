# Shared set-up for bench/startup.sh and bench/ip.sh (sourced): hyperfine, the
# built executables and Node 22 on PATH, private XDG dirs under $tmp, TCG.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v hyperfine >/dev/null || { echo "bench: needs hyperfine (apt-get install hyperfine)" >&2; exit 69; }
export PATH="$PWD/node_modules/.bin:$PWD/dist/bin:$PATH" PIM_ACCEL=tcg NO_COLOR=1
tmp="$(mktemp -d /tmp/pimb.XXXXXX)"
export XDG_RUNTIME_DIR="$tmp/run" XDG_CACHE_HOME="$tmp/cache"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
testbed="${PIM_TESTBED_DIR:-$HOME/.cache/pim/testbed}"
bash test/testbed/build.sh
