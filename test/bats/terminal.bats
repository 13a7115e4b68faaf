#!/usr/bin/env bats
# What reaches the user's terminal (issue 19): a guest's control sequences
# are shown escaped by pim-log and pim-console --ro on a terminal, and passed
# as they are to a pipe (defect 3); pim-console --until prints nothing after
# the matching line (defect 6); a paused VM stops at once, saying how
# (defect 8). One real guest (the test bed's full guest), booted once; the
# terminal is a real pseudo-terminal (test/lifecycle/pty-capture.py).

load helper
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
  need_testbed
  boot_guest full tt
  # the guest writes, on its serial console: a cursor-position query (the
  # terminal would answer it into the next prompt), a title (OSC), a bell,
  # colour, then numbered lines with a marker in the middle
  pim-exec tt -- /bin/busybox sh -c 'printf "q1\033[6nq2 \033]0;owned\007 \033[1;31mred\033[0m\n" >/dev/ttyS0; for i in $(seq 1 40); do echo "n$i"; [ $i = 20 ] && echo "pim-mark-here"; done >/dev/ttyS0; echo pim-all-written >/dev/ttyS0'
  pim-console tt --ro --replay --until 'pim-all-written' --timeout 60 >/dev/null
}

teardown_file() {
  pim_cleanup
}

pty() { python3 "$REPO/test/lifecycle/pty-capture.py" "$@"; }

@test "pim-log on a terminal: the guest's control sequences are shown escaped, colour passes; a pipe gets the bytes" {
  pty pim-log tt >"$PIM_TMP/tty.out"
  grep -qF 'q1^[[6nq2' "$PIM_TMP/tty.out"
  grep -qF '^[]0;owned^G' "$PIM_TMP/tty.out"
  ! grep -qF $'\e[6n' "$PIM_TMP/tty.out"
  ! grep -qF $'\a' "$PIM_TMP/tty.out"
  grep -qF $'\e[1;31mred\e[0m' "$PIM_TMP/tty.out"   # SGR colour is kept
  # a pipe: the bytes as they are
  pim-log tt >"$PIM_TMP/pipe.out"
  grep -qF $'q1\e[6nq2' "$PIM_TMP/pipe.out"
  grep -qF $'\e]0;owned\a' "$PIM_TMP/pipe.out"
}

@test "pim-console --ro --replay on a terminal: escaped too; a pipe gets the bytes" {
  pty pim-console tt --ro --replay --until 'pim-all-written' --timeout 60 >"$PIM_TMP/tty.out"
  grep -qF 'q1^[[6nq2' "$PIM_TMP/tty.out"
  ! grep -qF $'\e[6n' "$PIM_TMP/tty.out"
  pim-console tt --ro --replay --until 'pim-all-written' --timeout 60 >"$PIM_TMP/pipe.out"
  grep -qF $'q1\e[6nq2' "$PIM_TMP/pipe.out"
}

@test "pim-console --until stops at the matching line: nothing after it, on a pipe and on a terminal" {
  run --separate-stderr pim-console tt --ro --replay --until 'pim-mark-here' --timeout 60
  [ "$status" -eq 0 ]
  [ "$(tail -n 1 <<<"$output" | tr -d '\r')" = pim-mark-here ]
  [[ "$output" == *n20* ]]
  [[ "$output" != *n21* ]]
  pty pim-console tt --ro --replay --until 'pim-mark-here' --timeout 60 >"$PIM_TMP/tty.out"
  grep -q 'pim-mark-here' "$PIM_TMP/tty.out"
  ! grep -q 'n21' "$PIM_TMP/tty.out"
}

@test "a paused VM stops at once: resumed first (said on stderr), then its agent shuts it down; a terminal shows the stage" {
  pim-ctl tt pause
  run pim-status tt
  [ "$status" -eq 1 ]
  local t0=$SECONDS
  pty pim-stop tt --timeout 60 >"$PIM_TMP/stop.out"
  grep -q 'tt was paused: resumed it' "$PIM_TMP/stop.out"
  grep -q 'stopping tt: guest agent' "$PIM_TMP/stop.out"     # the live line on the terminal
  grep -qP '^tt\s+agent\s' <(tr '\r' '\n' <"$PIM_TMP/stop.out" | sed 's/\x1b\[K//g')
  [ $((SECONDS - t0)) -lt 40 ]
  run pim-ps -q
  [ -z "$output" ]
}

@test "pim-run --wait on a terminal shows what it waits for and the time so far; a pipe gets no status line" {
  pty pim-run "$TESTBED/guest-bare.qcow2" --name tw --snapshot --mem 256M --cpus 1 --wait ssh --wait-timeout 120 >"$PIM_TMP/wait.out"
  grep -qE 'waiting for ssh [0-9]+s' "$PIM_TMP/wait.out"
  grep -q 'ssh up after' "$PIM_TMP/wait.out"
  pim-stop tw >/dev/null
  run --separate-stderr pim-run "$TESTBED/guest-bare.qcow2" --name tw --snapshot --mem 256M --cpus 1 --wait ssh --wait-timeout 120
  [ "$status" -eq 0 ]
  [[ "$stderr" != *"waiting for"* ]]
  [[ "$stderr" != *$'\r'* ]]
  pim-stop tw >/dev/null
}
