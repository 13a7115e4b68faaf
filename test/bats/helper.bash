bats_require_minimum_version 1.5.0
# Shared set-up for the BATS tests: the built executables on PATH, private
# XDG dirs per test file, TCG (KVM does not work on CI), and the test bed.
REPO="$(cd "$BATS_TEST_DIRNAME/../.." && pwd)"
export PATH="$REPO/dist/bin:$PATH"
export PIM_ACCEL=tcg
export NO_COLOR=1
export PIM_TESTBED_DIR="${PIM_TESTBED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pim/testbed}"
TESTBED="$PIM_TESTBED_DIR"

# Per test file: short paths (unix socket paths are limited to 107 bytes).
pim_isolate() {
  PIM_TMP="$(mktemp -d /tmp/pimt.XXXXXX)"
  export PIM_TMP
  export XDG_RUNTIME_DIR="$PIM_TMP/run" XDG_CONFIG_HOME="$PIM_TMP/config" XDG_DATA_HOME="$PIM_TMP/data" XDG_CACHE_HOME="$PIM_TMP/cache"
  mkdir -p "$XDG_RUNTIME_DIR"
  chmod 700 "$XDG_RUNTIME_DIR"
}

# Stop every VM of this test file (SIGTERM, then SIGKILL) so one failing test
# leaves nothing behind for the next.
pim_stop_all() {
  [ -n "${PIM_TMP:-}" ] && [ -d "$PIM_TMP/run/pim" ] || return 0
  pim-ps -q 2>/dev/null | pim-stop --force --timeout 5 >/dev/null 2>&1 || true
  local f
  for f in "$PIM_TMP"/run/pim/*.pid; do   # anything left (a test that broke QEMU on purpose)
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
}

# ... and remove its dirs.
pim_cleanup() {
  pim_stop_all
  [ -n "${PIM_TMP:-}" ] && rm -rf "$PIM_TMP"
}

need_testbed() {
  [ -f "$TESTBED/stamp" ] || bash "$REPO/test/testbed/build.sh" >&2
}

# the installer ISOs of the test bed (cached; builds the test bed first if needed)
need_installer() {
  bash "$REPO/test/testbed/installer/build.sh" >&2
}

# boot_guest KIND NAME [args...]: KIND is full, noagent or bare. Waits for the
# guest's "pim-testbed ready" line on the serial console (no fixed sleeps).
boot_guest() {
  local kind="$1" name="$2"; shift 2
  pim-run "$TESTBED/guest-$kind.qcow2" --name "$name" --snapshot --mem 256M --cpus 1 "$@"
  pim-console "$name" --ro --replay --until 'pim-testbed ready' --timeout 120 >/dev/null
}

# PIM_TEST_SLOW: a factor for every bound a test waits under (default 1); a
# loaded CI machine can set 3. The bounds only end a wait that failed: each
# wait ends as soon as its condition holds.
# Unset, it follows the machine's load: 1 + the 1-minute load average per core
# (rounded down), at most 3, so a machine busy with other work gives the tests
# more time. A bound that is itself what a test checks (a fix that made
# something end at its limit rather than a fixed 30 s) is not scaled past that.
if [ -z "${PIM_TEST_SLOW:-}" ]; then
  PIM_TEST_SLOW=$(awk -v n="$(nproc)" '{ f = 1 + int($1 / n); print (f > 3 ? 3 : f) }' /proc/loadavg 2>/dev/null || echo 1)
fi
export PIM_TEST_SLOW
slow() { echo $(($1 * PIM_TEST_SLOW)); }

# wait_until SECONDS CMD...: run CMD until it succeeds (every 0.1 s); false
# after SECONDS (times PIM_TEST_SLOW)
wait_until() {
  local end=$((SECONDS + $(slow "$1"))); shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.1
  done
}

# pid_gone PID: the process has exited (a zombie counts: this container's pid 1 does not reap).
pid_gone() {
  kill -0 "$1" 2>/dev/null || return 0
  grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

# serve_www DIR: a static HTTP server on loopback for DIR (the test bed's ISOs and
# images, for the catalog to download and verify); prints its port. stop_www ends it.
serve_www() {
  setsid python3 -m http.server 0 --bind 127.0.0.1 --directory "$1" >"$PIM_TMP/http.log" 2>&1 3>&- </dev/null &
  echo $! >"$PIM_TMP/http.pid"
  wait_until 10 grep -q 'port [0-9]' "$PIM_TMP/http.log"
  grep -o 'port [0-9]*' "$PIM_TMP/http.log" | head -1 | cut -d' ' -f2
}
stop_www() {
  [ -f "$PIM_TMP/http.pid" ] && kill "$(cat "$PIM_TMP/http.pid")" 2>/dev/null
  return 0
}

builds_dir() { echo "$XDG_DATA_HOME/pim/builds"; }

# no_build_leftovers PROFILE: nothing of a failed build is left: no build of
# PROFILE in the registry, no temporary disk, no VM, no QEMU
no_build_leftovers() {
  local profile="$1"
  run pim-build path "$profile"
  [ "$status" -eq 66 ]
  [ -z "$(find "$(builds_dir)" -maxdepth 1 -name '.tmp-*' 2>/dev/null)" ]
  [ -z "$(pim-ps -q | grep -- '-build-' || true)" ]
  # this test's QEMUs only (their QMP socket is in its runtime dir): another BATS file may
  # run a build of a profile of the same name at the same time
  ! pgrep -f "qemu-system.*$XDG_RUNTIME_DIR/pim/$profile-build-" >/dev/null
}

# build_log_of STDERR: the build log a failed pim-build named on its stderr
build_log_of() { sed -n 's/.*(build log: \(.*\))$/\1/p' <<<"$1" | tail -n 1; }

# build_log_tail STDERR: the end of that log (its consoles), for the test's
# output: a failure on CI says what the guest did
build_log_tail() {
  local log
  log=$(build_log_of "$1")
  [ -n "$log" ] && [ -f "$log" ] && tail -n 80 "$log"
  return 0
}
