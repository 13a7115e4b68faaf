#!/usr/bin/env bash
# The whole test suite: type check, build, unit tests (vitest), the test-bed
# guests, and the BATS tests, which boot real QEMU guests under TCG.
# On a fresh Debian machine it first installs what the tests need with
# apt-get (as root, or through sudo): the list is .ci/apt-packages.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf 'test.sh: %s\n' "$*" >&2; }

# Every tool in .ci/tools must resolve to the project's node_modules or to a file
# owned by the Debian package named there; say where each came from, and stop
# loudly on the first one that came from anywhere else.
check_tools() {
  local tool want path owner bad=0
  while read -r tool want _; do
    case "$tool" in '' | '#'*) continue ;; esac
    path=$(command -v "$tool" || true)
    if [ -z "$path" ]; then
      say "missing tool: $tool (should come from $want)"; bad=1; continue
    fi
    if [[ $want == npm:* ]]; then
      if [[ $(readlink -f "$path") == "$PWD/node_modules/"* ]]; then
        say "tool $tool: $path (npm package ${want#npm:})"
      else
        say "tool $tool: $path is not from node_modules (want npm package ${want#npm:})"; bad=1
      fi
      continue
    fi
    # dpkg may record the path before /usr was merged (/bin/zsh for /usr/bin/zsh)
    owner=
    for p in "$path" "$(readlink -f "$path")" "${path#/usr}"; do
      # (dpkg -S lists diversions first: GNU parallel diverts moreutils' parallel)
      owner=$(dpkg -S "$p" 2>/dev/null | grep -v '^diversion by' | head -n 1) && [ -n "$owner" ] && break
    done
    owner=${owner%%:*}
    if [ "$owner" = "$want" ]; then
      say "tool $tool: $path (Debian package $owner)"
    else
      say "tool $tool: $path belongs to ${owner:-no Debian package}, want $want: install it through .ci/apt-packages"; bad=1
    fi
  done <.ci/tools
  [ "$bad" -eq 0 ] || { say "tools not installed by the project: fix .ci/apt-packages or .ci/tools"; exit 1; }
}

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
mapfile -t wanted < <(grep -v '^\s*#' .ci/apt-packages | sed '/^\s*$/d' | sort -u)
command -v npm >/dev/null 2>&1 || wanted+=(nodejs npm)
missing=()
for p in "${wanted[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Node 22 comes from the npm registry as a devDependency (package "node"), so
# every npm script below runs on it whatever the system's node is.
say "npm ci"
npm ci --no-audit --no-fund --loglevel=error
# bats declares its executable through directories.bin, which npm links only when
# package-lock.json records it ("bin"); an `npm install` that rewrites the lock
# drops it. Link it from the package itself then (check_tools still checks it).
if [ ! -e node_modules/.bin/bats ] && [ -x node_modules/bats/bin/bats ]; then
  say "npm linked no bats: linking node_modules/.bin/bats (restore \"bin\" in package-lock.json)"
  ln -s ../bats/bin/bats node_modules/.bin/bats
fi
# The suite runs only on what the project installed: node_modules/.bin and the
# system's directories, never /usr/local, ~/.local, pyenv shims or the like.
export PATH="$PWD/node_modules/.bin:/usr/sbin:/usr/bin:/sbin:/bin"
check_tools
say "node $(node --version), $(qemu-system-x86_64 --version | head -n1)"

say "type check, lint and build"
npm run --silent typecheck
npm run --silent lint
npm run --silent build

say "test bed (cached in ${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed})"
bash test/testbed/build.sh
say "real Debian cloud image (cached beside the test bed; mmdebstrap, about 2 min the first time)"
bash test/testbed/debian-cloud.sh

results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
say "unit tests"
unit=0
vitest run --reporter=default --reporter=json --outputFile="$results/unit.json" || unit=$?
# Two test files at a time (GNU parallel, through bats --jobs): much of a test's
# time is a guest booting or a bounded wait running out, so two files share the
# two cores well (a whole run here: 11.8 min against 16.8 min one file at a
# time). Tests within a file stay in order; PIM_BATS_JOBS=1 runs one file at a time.
say "BATS tests (real guests under TCG), ${PIM_BATS_JOBS:-2} files at a time"
bats_rc=0
bats --jobs "${PIM_BATS_JOBS:-2}" --no-parallelize-within-files --print-output-on-failure --timing --formatter tap test/bats | tee "$results/bats.tap" || bats_rc=$?

upass=$(node -e 'const r=require(process.argv[1]);console.log(r.numPassedTests)' "$results/unit.json" 2>/dev/null || echo 0)
ufail=$(node -e 'const r=require(process.argv[1]);console.log(r.numFailedTests)' "$results/unit.json" 2>/dev/null || echo 1)
bpass=$(grep -c '^ok ' "$results/bats.tap" || true)
bfail=$(grep -c '^not ok ' "$results/bats.tap" || true)
echo "unit: $upass passed, $ufail failed"
echo "bats: $bpass passed, $bfail failed"
echo "tests: $((upass + bpass)) passed, $((ufail + bfail)) failed"
[ "$unit" -eq 0 ] && [ "$bats_rc" -eq 0 ]
