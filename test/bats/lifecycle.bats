#!/usr/bin/env bats
# The VM lifecycle against real guests from the test bed, under TCG.

load helper

setup_file() {
  pim_isolate
  need_testbed
}

teardown() {
  pim_stop_all
}

teardown_file() {
  pim_cleanup
}

ssh_guest() {
  local port="$1"; shift
  ssh -i "$TESTBED/id_ed25519" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=20 root@127.0.0.1 "$@"
}

@test "run -> ps -> status -> ip -> os -> qmp -> ga -> console -> stop -> ps is empty" {
  run pim-run "$TESTBED/guest-full.qcow2" --name dev --snapshot --mem 256M --cpus 1
  [ "$status" -eq 0 ]
  [ "$output" = "dev" ] || [ "${lines[-1]}" = "dev" ]
  run --separate-stderr pim-run "$TESTBED/guest-full.qcow2" --name dev --snapshot --mem 256M
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"already running"* ]]

  run pim-console dev --ro --replay --until 'pim-testbed ready' --timeout 120
  [ "$status" -eq 0 ]

  run --separate-stderr pim-ps
  [ "$status" -eq 0 ]
  [ -z "$stderr" ]
  [ "${#lines[@]}" -eq 1 ]
  IFS=$'\t' read -r name state pid port uptime image bridged kind accel forwards <<<"${lines[0]}"
  [ "$name" = dev ]
  [ "$state" = running ]
  [ "$bridged" = no ]
  [ "$kind $accel $forwards" = "run tcg -" ]
  [ "$image" = "$TESTBED/guest-full.qcow2" ]
  kill -0 "$pid"
  [ "$pid" = "$(cat "$XDG_RUNTIME_DIR/pim/dev.pid")" ]

  run pim-ps -q
  [ "$output" = dev ]
  run pim-ps --json
  [ "$(jq -r .ssh_port <<<"$output")" = "$port" ]
  [ "$(jq -r .state <<<"$output")" = running ]

  run pim-status dev
  [ "$status" -eq 0 ]
  [[ "$output" == dev$'\t'running$'\t'"$pid"$'\t'* ]]
  run pim-status dev --json
  [ "$(jq -r .running <<<"$output")" = true ]

  run pim-ip dev
  [ "$status" -eq 0 ]
  [[ "$output" == *$'dev\teth0\t10.0.2.15/24\tipv4\t52:54:00:'* ]]
  run pim-ip dev --json
  [ "$(jq -r 'select(.family=="ipv4") | .address' <<<"$output")" = 10.0.2.15 ]

  run pim-os dev
  [ "$status" -eq 0 ]
  [[ "$output" == $'dev\tpim testbed (Debian packages)\t6.1.0-'*$'\tx86_64' ]]

  run pim-qmp dev query-status
  [ "$status" -eq 0 ]
  [ "$(jq -r .status <<<"$output")" = running ]
  run pim-qmp dev query-name
  [ "$(jq -r .name <<<"$output")" = dev ]

  run pim-ga dev guest-info
  [ "$status" -eq 0 ]
  [ "$(jq -r .version <<<"$output")" = "$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9.]*\).*/\1/p')" ]
  run pim-ga dev guest-exec '{"path":"/bin/busybox","arg":["hostname"],"capture-output":true}'
  [ "$status" -eq 0 ]
  execpid="$(jq -r .pid <<<"$output")"
  run pim-ga dev guest-exec-status "{\"pid\":$execpid}"
  [ "$status" -eq 0 ]

  # the console banner: printed by the guest's init on the serial console
  run pim-console dev --ro --replay --until 'Welcome to pim-testbed' --timeout 30
  [ "$status" -eq 0 ]
  [[ "$output" == *"Welcome to pim-testbed"* ]]

  # SSH through the recorded port forward
  run ssh_guest "$port" cat /proc/sys/kernel/hostname
  [ "$status" -eq 0 ]
  [ "$output" = pim-testbed ]

  run --separate-stderr pim-stop dev
  [ "$status" -eq 0 ]
  [[ "$output" == $'dev\tagent\t'* ]]
  pid_gone "$pid"

  run pim-ps
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/dev.qmp" ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/dev.pid" ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/dev.json" ]
}

@test "kill -9 of QEMU: ps cleans up, and run works again with no manual clean-up" {
  boot_guest full crash
  pid="$(cat "$XDG_RUNTIME_DIR/pim/crash.pid")"
  kill -9 "$pid"
  for _ in $(seq 300); do pid_gone "$pid" && break; sleep 0.1; done
  pid_gone "$pid"
  run pim-ps
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/crash.qmp" ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/crash.json" ]
  run pim-status crash
  [ "$status" -eq 69 ]
  run pim-run "$TESTBED/guest-full.qcow2" --name crash --snapshot --mem 256M --cpus 1
  [ "$status" -eq 0 ]
  run pim-status crash
  [ "$status" -eq 0 ]
  pim-stop crash --force --timeout 5
}

@test "two racing pim-run of one name: exactly one VM starts, the other exits 75" {
  img="$TESTBED/guest-bare.qcow2"
  run bash -c '
    pim-run "$1" --name race --snapshot --mem 128M --cpus 1 >"$PIM_TMP/r1.out" 2>"$PIM_TMP/r1.err" & p1=$!
    pim-run "$1" --name race --snapshot --mem 128M --cpus 1 >"$PIM_TMP/r2.out" 2>"$PIM_TMP/r2.err" & p2=$!
    wait $p1; r1=$?; wait $p2; r2=$?
    printf "%s\n" "$r1" "$r2" | sort -n | tr "\n" " "' _ "$img"
  [ "$output" = "0 75 " ]
  cat "$PIM_TMP"/r*.err | grep -qE 'busy|already running'
  [ "$(cat "$PIM_TMP"/r*.out)" = race ]
  run pim-ps -q
  [ "$output" = race ]
  [ "$(pgrep -fc -- "-name race ")" -eq 1 ]
}

@test "bad names are refused with exit 64 and create nothing" {
  before="$(ls -A "$XDG_RUNTIME_DIR/pim" 2>/dev/null | sort)"
  for bad in '..' '-x' '' "$(printf 'a%.0s' {1..65})" 'a..b'; do
    run --separate-stderr pim-run "$bad"
    [ "$status" -eq 64 ]
    [ -n "$stderr" ]
    [ "$(wc -l <<<"$stderr")" -eq 1 ]
  done
  for bad in 'a/b' '../etc' '..'; do
    run pim-run "$TESTBED/guest-bare.qcow2" --name "$bad"
    [ "$status" -eq 64 ]
    for c in pim-status pim-ip pim-os pim-stop pim-console; do
      run "$c" "$bad"
      [ "$status" -eq 64 ]
    done
    run pim-qmp "$bad" query-status
    [ "$status" -eq 64 ]
  done
  [ "$(ls -A "$XDG_RUNTIME_DIR/pim" 2>/dev/null | sort)" = "$before" ]
}

@test "usage errors: unknown flag, bad JSON args, missing image, busy port" {
  run --separate-stderr pim-ps --jsno
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"unknown option --jsno"* ]]
  run pim-run nosuchimage
  [ "$status" -eq 66 ]
  run pim-run /nonexistent/disk.qcow2
  [ "$status" -eq 66 ]
  # a port that is taken
  python3 -c 'import socket,time,sys; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(30)' >"$PIM_TMP/port" 2>/dev/null 3>&- &
  holder=$!
  for _ in $(seq 200); do [ -s "$PIM_TMP/port" ] && break; sleep 0.05; done
  [ -s "$PIM_TMP/port" ]
  run --separate-stderr pim-run "$TESTBED/guest-bare.qcow2" --name busyport --ssh-port "$(cat "$PIM_TMP/port")"
  kill "$holder"
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"in use"* ]]
  [ ! -e "$XDG_RUNTIME_DIR/pim/busyport.json" ]
}

@test "a dead VM and stale files: queries exit 69, stale entries are cleaned, a foreign pid is never trusted" {
  run pim-status ghost
  [ "$status" -eq 69 ]
  run pim-ip ghost
  [ "$status" -eq 69 ]
  run pim-qmp ghost query-status
  [ "$status" -eq 69 ]
  run pim-stop ghost
  [ "$status" -eq 69 ]
  # stale: a pidfile naming a live process that is not this VM's QEMU (this shell)
  sleep 300 >/dev/null 2>&1 3>&- & foreign=$!
  d="$XDG_RUNTIME_DIR/pim"
  echo "$foreign" >"$d/stale.pid"
  echo '{"name":"stale","pid":'"$foreign"',"agent":true}' >"$d/stale.json"
  : >"$d/stale.qmp"
  run pim-ps --json
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  [ ! -e "$d/stale.pid" ]
  [ ! -e "$d/stale.json" ]
  [ ! -e "$d/stale.qmp" ]
  run pim-stop stale
  [ "$status" -eq 69 ]
  kill -0 "$foreign"   # never signalled
  kill "$foreign"
}

@test "a guest with no agent: pim-ip exits 69 in bounded time; pim-stop falls back to ACPI" {
  boot_guest noagent na
  SECONDS=0
  run --separate-stderr pim-ip na --timeout 3
  [ "$status" -eq 69 ]
  [ "$SECONDS" -le "$(slow 10)" ]
  [[ "$stderr" == *"gave no reply to guest-sync"* ]]
  run pim-os na --timeout 2
  [ "$status" -eq 69 ]
  # pim-exec's --timeout bounds the whole command, the agent's first sync too (not a fixed 30 s)
  SECONDS=0
  run --separate-stderr pim-exec na --timeout 5 -- true
  [ "$status" -eq 69 ]
  [ "$SECONDS" -lt 25 ]   # not scaled: the old fixed wait was 30 s
  [[ "$stderr" == *"gave no reply to guest-sync within "* ]]
  run pim-stop na --timeout 30
  [ "$status" -eq 0 ]
  [[ "$output" == $'na\tacpi\t'* ]]
}

@test "pim-stop falls back to SIGTERM for a guest that ignores ACPI, and to SIGKILL for a hung QEMU" {
  boot_guest bare bare1
  run pim-stop bare1 --timeout 3
  [ "$status" -eq 0 ]
  [[ "$output" == $'bare1\tsigterm\t'* ]]

  boot_guest bare hung
  pid="$(cat "$XDG_RUNTIME_DIR/pim/hung.pid")"
  kill -STOP "$pid"   # QEMU can answer nothing and cannot act on SIGTERM
  run pim-stop hung --timeout 2
  [ "$status" -eq 0 ]
  [[ "$output" == $'hung\tsigkill\t'* ]]
  pid_gone "$pid"
}

@test "pim-stop reads names from stdin: pim-ps | pim-stop and pim-ps -q | xargs pim-stop" {
  boot_guest bare s1
  boot_guest bare s2
  run bash -c 'pim-ps | pim-stop --force --timeout 5 --json'
  [ "$status" -eq 0 ]
  [ "$(jq -r .name <<<"$output" | sort | tr '\n' ' ')" = "s1 s2 " ]
  [ "$(jq -r .stage <<<"$output" | sort -u)" = sigterm ]
  boot_guest bare s3
  run bash -c 'pim-ps -q | xargs pim-stop --force'
  [ "$status" -eq 0 ]
  [[ "$output" == $'s3\tsigterm\t'* ]]
  run pim-ps -q
  [ -z "$output" ]
}

@test "the umbrella: pim <sub> runs pim-<sub>, finds third-party pim-* on PATH, passes the status through" {
  run pim ps --json
  [ "$status" -eq 0 ]
  mkdir -p "$PIM_TMP/bin"
  printf '#!/bin/sh\necho "hello $*"\nexit 7\n' >"$PIM_TMP/bin/pim-hello"
  chmod +x "$PIM_TMP/bin/pim-hello"
  PATH="$PIM_TMP/bin:$PATH" run pim hello a b
  [ "$status" -eq 7 ]
  [ "$output" = "hello a b" ]
  PATH="$PIM_TMP/bin:$PATH" run pim --help
  [[ "$output" == *hello* ]]
  [[ "$output" == *stop* ]]
  run pim nosuch
  [ "$status" -eq 64 ]
  run pim status ghost
  [ "$status" -eq 69 ]
}

@test "pim-console on a terminal: raw and two-way, Ctrl-] detaches; without a terminal it refuses unless --ro" {
  boot_guest full con
  run python3 "$REPO/test/lifecycle/console-pty.py" con
  [ "$status" -eq 0 ]
  [ "${lines[-1]}" = detached ]
  run --separate-stderr pim-console con </dev/null
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"--ro"* ]]
  # the VM is untouched by detaching
  run pim-status con
  [ "$status" -eq 0 ]
  # --ro reads the log, so it works while someone holds the console socket
  socat -u "UNIX-CONNECT:$XDG_RUNTIME_DIR/pim/con.serial" - >/dev/null 2>&1 3>&- &
  holder=$!
  pim-console con --ro --until 'pim-marker-42' --timeout 30 >"$PIM_TMP/mark.out" 2>&1 3>&- &
  marker=$!
  # once it has the log open, make the guest write a line on its console
  for _ in $(seq 400); do ls -l "/proc/$marker/fd" 2>/dev/null | grep -q 'con\.log' && break; kill -0 "$marker"; sleep 0.05; done
  ls -l "/proc/$marker/fd" | grep -q 'con\.log'
  pim-ga con guest-exec '{"path":"/bin/busybox","arg":["sh","-c","echo pim-marker-$((6*7)) >/dev/ttyS0"]}'
  wait "$marker"
  grep -q 'pim-marker-42' "$PIM_TMP/mark.out"
  # and it ends, status 0, when the VM stops
  pim-console con --ro >"$PIM_TMP/ro.out" 2>"$PIM_TMP/ro.err" 3>&- &
  follower=$!
  pim-stop con
  wait "$follower"
  grep -q 'console closed' "$PIM_TMP/ro.err"
  kill "$holder" 2>/dev/null || true
}

@test "pim-run --console: the serial console on the terminal, in the foreground; QEMU's status is pim-run's" {
  run python3 "$REPO/test/lifecycle/run-console-pty.py" "$TESTBED/guest-full.qcow2" --name fg --snapshot --mem 256M --cpus 1
  [ "$status" -eq 0 ]
  [ "${lines[-1]}" = exited ]
  # nothing left behind once it has returned
  [ ! -e "$XDG_RUNTIME_DIR/pim/fg.qmp" ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/fg.json" ]
  run pim-ps -q
  [ -z "$output" ]
}

@test "pim-status exits 1 for a paused VM; a socket path over the limit is 73; a broken image is 69 with nothing left" {
  boot_guest bare paused
  pim-qmp paused stop
  run pim-status paused
  [ "$status" -eq 1 ]
  [[ "$output" == $'paused\tpaused\t'* ]]
  pim-qmp paused cont
  run pim-status paused
  [ "$status" -eq 0 ]

  long="$PIM_TMP/$(printf 'r%.0s' {1..90})"
  mkdir -p "$long"
  XDG_RUNTIME_DIR="$long" run --separate-stderr pim-run "$TESTBED/guest-bare.qcow2" --name toolong
  [ "$status" -eq 73 ]
  [[ "$stderr" == *"limit"* ]]
  [ -z "$(ls -A "$long/pim" 2>/dev/null)" ]

  printf 'QFI\373garbage-not-a-real-qcow2-header' >"$PIM_TMP/broken.qcow2"
  run --separate-stderr pim-run "$PIM_TMP/broken.qcow2" --mem 128M
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"QEMU failed to start"* ]]
  [ "$(wc -l <<<"$stderr")" -eq 1 ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/broken.qmp" ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/broken.json" ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/broken.pid" ]
}

@test "EPIPE exits quietly: a large answer piped into head" {
  boot_guest bare pipe
  run bash -c 'pim-qmp pipe query-qmp-schema 2>"$PIM_TMP/epipe.err" | head -c 10 >/dev/null; echo "${PIPESTATUS[0]}"'
  [ "$output" = 0 ]
  [ ! -s "$PIM_TMP/epipe.err" ]
  [ "$(pim-qmp pipe query-qmp-schema | wc -c)" -gt 100000 ]   # more than a pipe buffer (64 KiB)
}

# start_slow NAME [pim|pim-run]: start NAME with a QEMU that announces its pid on a
# FIFO and then hangs before it execs the real one; $bg is the command, $wpid the wrapper
start_slow() {
  local name=$1 how=${2:-pim-run}
  slow="$PIM_TMP/slow-qemu-$name"
  rm -f "$PIM_TMP/$name.fifo"
  mkfifo "$PIM_TMP/$name.fifo"
  printf '#!/bin/bash\necho "$$" >"%s"\nsleep 1000\nexec qemu-system-x86_64 "$@"\n' "$PIM_TMP/$name.fifo" >"$slow"
  chmod +x "$slow"
  if [ "$how" = pim ]; then
    PIM_QEMU=$slow pim run "$TESTBED/guest-full.qcow2" --name "$name" --snapshot --mem 256M 2>"$PIM_TMP/$name.err" &
  else
    PIM_QEMU=$slow pim-run "$TESTBED/guest-full.qcow2" --name "$name" --snapshot --mem 256M 2>"$PIM_TMP/$name.err" &
  fi
  bg=$!
  read -r -t 60 wpid <"$PIM_TMP/$name.fifo"
}

# nothing of VM NAME is left: no QEMU (the wrapper's process group), no runtime files but the log
nothing_left_of() {
  local name=$1
  ! pgrep -g "$wpid"
  [ -z "$(pim-ps -q | grep -x "$name" || true)" ]
  run bash -c "ls -A '$XDG_RUNTIME_DIR/pim' | grep '^$name\.' | grep -v '\.log\$'"
  [ -z "$output" ]
}

@test "Ctrl-C while pim-run starts QEMU (made slow through PIM_QEMU): 130, no QEMU, no runtime files" {
  start_slow slowint
  kill -INT "$bg"
  st=0
  wait "$bg" || st=$?
  [ "$st" -eq 130 ]
  grep -q 'interrupted by SIGINT' "$PIM_TMP/slowint.err"
  nothing_left_of slowint
}

@test "signals through the umbrella: SIGTERM to pim ends the command's start (143), nothing left" {
  start_slow slowterm pim
  kill -TERM "$bg"
  st=0
  wait "$bg" || st=$?
  [ "$st" -eq 143 ]
  nothing_left_of slowterm
  # and timeout(1) around pim: the command gets the signal, the status comes back
  run timeout --preserve-status -s INT 2 pim kboot --kernel "$TESTBED/vmlinuz" --exec 'sleep 300' --timeout 300
  [ "$status" -eq 130 ]
  [ -z "$(pim-ps -q)" ]
}

@test "a planted symlink in a runtime dir others could write to: refused (77), the victim untouched" {
  local rt="$PIM_TMP/rt-open"
  mkdir -p "$rt/pim"
  chmod 0777 "$rt/pim"
  echo precious >"$PIM_TMP/precious"
  ln -s "$PIM_TMP/precious" "$rt/pim/victim.log"
  run --separate-stderr env XDG_RUNTIME_DIR="$rt" pim-run "$TESTBED/guest-full.qcow2" --name victim --snapshot --mem 256M
  [ "$status" -eq 77 ]
  [[ "$stderr" == *"writable by others"* ]]
  [ "$(cat "$PIM_TMP/precious")" = precious ]
  [ -L "$rt/pim/victim.log" ]
  # a private dir with a symlink planted where the log goes: unlinked, never written through
  chmod 0700 "$rt/pim"
  run env XDG_RUNTIME_DIR="$rt" pim-run "$TESTBED/guest-full.qcow2" --name victim --snapshot --mem 256M
  [ "$status" -eq 0 ]
  [ "$(cat "$PIM_TMP/precious")" = precious ]
  [ ! -L "$rt/pim/victim.log" ]
  XDG_RUNTIME_DIR="$rt" pim-stop victim --force >/dev/null
}

@test "a FIFO in the runtime dir does not hang pim-ps or the queries" {
  mkfifo "$XDG_RUNTIME_DIR/pim/fifo.json" "$XDG_RUNTIME_DIR/pim/fifo.pid"
  run timeout 10 pim-ps
  [ "$status" -eq 0 ]
  run timeout 10 pim-status fifo
  [ "$status" -eq 69 ]
  rm -f "$XDG_RUNTIME_DIR/pim/fifo.json" "$XDG_RUNTIME_DIR/pim/fifo.pid"
}

@test "UEFI vars with --snapshot: a copy made under the VM's lock, the image's own untouched, the copy gone after" {
  [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || [ -f /usr/share/OVMF/OVMF_CODE.fd ] || skip "no OVMF firmware"
  local img="$PIM_TMP/uefi"
  mkdir -p "$img"
  cp "$TESTBED/guest-full.qcow2" "$img/u.qcow2"
  cp "$(ls /usr/share/OVMF/OVMF_VARS_4M.fd /usr/share/OVMF/OVMF_VARS.fd 2>/dev/null | head -1)" "$img/u.efivars.fd"
  sum=$(sha256sum "$img/u.efivars.fd")
  pim-run "$img/u.qcow2" --snapshot --mem 256M
  [ -f "$XDG_RUNTIME_DIR/pim/u.efivars.fd" ]
  pgrep -f "qemu-system.*$XDG_RUNTIME_DIR/pim/u.efivars.fd" >/dev/null
  # a second run of the same name fails before it touches the running VM's vars
  before=$(sha256sum "$XDG_RUNTIME_DIR/pim/u.efivars.fd")
  run pim-run "$img/u.qcow2" --snapshot --mem 256M
  [ "$status" -eq 75 ]
  [ "$(sha256sum "$XDG_RUNTIME_DIR/pim/u.efivars.fd")" = "$before" ]
  pim-stop u --force >/dev/null
  [ ! -e "$XDG_RUNTIME_DIR/pim/u.efivars.fd" ]
  [ "$(sha256sum "$img/u.efivars.fd")" = "$sum" ]
}

@test "a silent guest agent: pim says what it sees (a paused VM 69, another client on the socket 75)" {
  boot_guest full gasilent
  pim-ga gasilent guest-ping >/dev/null
  pim-qmp gasilent stop >/dev/null
  run --separate-stderr pim-ip gasilent --timeout 2
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"not running inside QEMU (status paused)"* ]]
  [[ "$stderr" == *"pim-ctl gasilent resume"* ]]
  # with a long agent timeout too: pim asks QMP once the agent is slow, and ends at once
  SECONDS=0
  run --separate-stderr pim-ip gasilent --timeout 60
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"not running inside QEMU (status paused)"* ]]
  [ "$SECONDS" -lt "$(slow 30)" ] || { echo "waited ${SECONDS} s of the 60 s agent timeout"; false; }
  pim-qmp gasilent cont >/dev/null
  # another client holds the agent's socket (it takes one at a time)
  socat -u "UNIX-CONNECT:$XDG_RUNTIME_DIR/pim/gasilent.ga" - >/dev/null 3>&- &
  holder=$!
  for _ in $(seq 100); do pim-qmp gasilent query-chardev | grep -q '"label":"ga0","frontend-open":true,"filename":"unix:' && break; sleep 0.1; done
  run --separate-stderr pim-os gasilent --timeout 2
  kill "$holder"
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"another client holds gasilent's guest-agent socket"* ]]
  run pim-os gasilent --timeout 10
  [ "$status" -eq 0 ]
}

@test "QEMU that wrote no pidfile is told to quit through QMP: 70, no QEMU left, no runtime files" {
  wrap="$PIM_TMP/no-pidfile-qemu"
  # drops -pidfile FILE from QEMU's arguments
  printf '#!/bin/bash\na=()\nwhile [ $# -gt 0 ]; do if [ "$1" = -pidfile ]; then shift 2; continue; fi; a+=("$1"); shift; done\nexec qemu-system-x86_64 "${a[@]}"\n' >"$wrap"
  chmod +x "$wrap"
  run --separate-stderr env PIM_QEMU="$wrap" pim-run "$TESTBED/guest-bare.qcow2" --name nopid --snapshot --mem 128M
  [ "$status" -eq 70 ]
  [[ "$stderr" == *"wrote no pidfile"* ]]
  for _ in $(seq 50); do pgrep -f "qemu-system.*$XDG_RUNTIME_DIR/pim/nopid.qmp" >/dev/null || break; sleep 0.1; done
  ! pgrep -f "qemu-system.*$XDG_RUNTIME_DIR/pim/nopid.qmp"
  run bash -c "ls -A '$XDG_RUNTIME_DIR/pim' | grep '^nopid\.' | grep -v '\.log\$'"
  [ -z "$output" ]
}
