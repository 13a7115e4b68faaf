#!/usr/bin/env bats
# pim-gdb: QEMU under a real gdb, started with the QEMU argv pim-run would use,
# headless as ever (the guest agent answers, pim-stop stops it); --attach to a
# running VM's QEMU reads its threads and leaves it running.

load helper

setup_file() {
  pim_isolate
  need_testbed
  command -v gdb >/dev/null || skip "no gdb (.ci/apt-packages installs it)"
}

teardown() { pim_stop_all; }
teardown_file() { pim_cleanup; }

# the QEMU command line of a VM, one word a line, the SSH port (free, so it differs) as PORT
# (and the program as a name: gdb starts it by its full path)
argv_of() { tr '\0' '\n' <"/proc/$1/cmdline" | sed -E -e 's/127\.0\.0\.1:[0-9]+-:22/127.0.0.1:PORT-:22/' -e '1s#.*/##'; }
headless_only() { grep -vxE -- '-daemonize|-d|guest_errors|-D' "$1" | grep -vx "$XDG_RUNTIME_DIR/pim/g1.log"; }
ps_state() { pim-ps --json | jq -r --arg n "$1" 'select(.name==$n).state'; }

@test "pim-gdb NAME -- -batch -ex run: QEMU runs under gdb with pim-run's exact argv, comes up, and pim-stop ends it" {
  pim-gdb "$TESTBED/guest-full.qcow2" --name g1 --snapshot --mem 128M --cpus 1 -- -batch -ex run >"$PIM_TMP/gdb.out" 2>&1 3>&- &
  gpid=$!
  # the VM appears once QEMU, under gdb, has written its pidfile and listens
  wait_until 60 eval 'pim-status g1 >/dev/null 2>&1 || ! kill -0 "$gpid"' || true
  run pim-wait g1 --for agent --timeout 120
  [ "$status" -eq 0 ]
  qpid=$(cat "$XDG_RUNTIME_DIR/pim/g1.pid")
  [ "$(ps -o comm= -p "$(ps -o ppid= -p "$qpid" | tr -d ' ')")" = gdb ]
  argv_of "$qpid" >"$PIM_TMP/gdb.argv"
  [ "$(ps_state g1)" = running ]
  run pim-stop g1
  [ "$status" -eq 0 ]
  wait "$gpid"
  grep -q 'exited normally' "$PIM_TMP/gdb.out"
  # pim-run of the same: the same QEMU command line
  pim-run "$TESTBED/guest-full.qcow2" --name g1 --snapshot --mem 128M --cpus 1 >/dev/null
  argv_of "$(cat "$XDG_RUNTIME_DIR/pim/g1.pid")" >"$PIM_TMP/run.argv"
  # but for what only a daemonized QEMU has: -daemonize, and its stderr log (-d guest_errors -D LOG)
  diff <(headless_only "$PIM_TMP/run.argv") <(headless_only "$PIM_TMP/gdb.argv")
}

@test "pim-gdb --attach: gdb attaches to a running VM's QEMU, reads its threads, and the VM runs on" {
  boot_guest full a1 >/dev/null
  run --separate-stderr pim-gdb a1 --attach -- -batch -ex 'info threads'
  [ "$status" -eq 0 ]
  [ "$(grep -c 'Thread 0x' <<<"$output")" -ge 2 ]
  [[ "$output" == *qemu-system-x86* ]]
  [ "$(ps_state a1)" = running ]
  pim-ga a1 guest-ping >/dev/null
}

@test "pim-gdb: --attach to a VM that does not run is 69; --console and --wait are usage errors; no gdb is 69" {
  run --separate-stderr pim-gdb nosuch --attach
  [ "$status" -eq 69 ]
  run --separate-stderr pim-gdb "$TESTBED/guest-full.qcow2" --name g2 --console
  [ "$status" -eq 64 ]
  run --separate-stderr env PATH="$REPO/node_modules/.bin:$REPO/dist/bin:/usr/sbin:/nonexistent" "$REPO/dist/bin/pim-gdb" "$TESTBED/guest-full.qcow2" --name g3
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"gdb was not found"* ]]
  [ -z "$(pim-ps -q)" ]
}
