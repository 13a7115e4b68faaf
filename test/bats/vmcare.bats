#!/usr/bin/env bats
# Looking after VMs (issue 9): pim-snapshot (QMP jobs on a running VM,
# qemu-img on a stopped image, raw and --snapshot refused), pim-log (running,
# stopped, -f ending when the VM stops), pim-rm, and pim doctor on this host.
# One real guest (the test bed's full guest, copied into an isolated image
# store as "sg", not --snapshot), booted once and used in order; the tests
# of one file run in order, and each says what it expects of the one before.

load helper
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
  need_testbed
  mkdir -p "$XDG_DATA_HOME/pim/images"
  cp "$TESTBED/guest-full.qcow2" "$XDG_DATA_HOME/pim/images/sg.qcow2"
}

teardown_file() {
  pim_cleanup
}

IMG() { echo "$XDG_DATA_HOME/pim/images/sg.qcow2"; }

ssh_guest() {
  local port
  port=$(pim-ps --json | jq -r 'select(.name=="sg").ssh_port')
  ssh -i "$TESTBED/id_ed25519" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=20 root@127.0.0.1 "$@"
}

# the guest's disk content, whatever its internal snapshots
disk_sum() { qemu-img convert -U -O raw "$(IMG)" "$PIM_TMP/disk.raw" && sha256sum <"$PIM_TMP/disk.raw" | cut -d' ' -f1; }

@test "pim-snapshot of a stopped store image: qemu-img save, list, load back, rm; a missing tag is 66" {
  local before
  before=$(disk_sum)
  run --separate-stderr pim-snapshot sg save cold
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [[ "$output" == $'sg\tcold\tsaved\t'* ]]
  # the disk changes after the snapshot ...
  qemu-io -f qcow2 -c 'write -P 0xab 0 64k' "$(IMG)" >/dev/null
  [ "$(disk_sum)" != "$before" ]
  # ... and load puts it back
  run --separate-stderr pim-snapshot sg load cold
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [ "$(disk_sum)" = "$before" ]
  # list: NAME TAG ID VM-STATE DATE VM-CLOCK; disk only: vm_state 0
  run --separate-stderr pim-snapshot sg list --json
  [ "$status" -eq 0 ]
  [ "$(jq -r 'select(.tag=="cold") | .vm_state' <<<"$output")" = 0 ]
  run --separate-stderr pim-snapshot "$(IMG)" list -q
  [ "$output" = cold ]
  # a second save of the tag is 73, --force replaces it
  run --separate-stderr pim-snapshot sg save cold
  [ "$status" -eq 73 ]
  [[ "$stderr" == *"already has a snapshot cold"*"--force"* ]]
  run --separate-stderr pim-snapshot sg save cold --force
  [ "$status" -eq 0 ]
  [ "$(qemu-img snapshot -l "$(IMG)" | grep -c ' cold ')" -eq 1 ]
  run --separate-stderr pim-snapshot sg load nope
  [ "$status" -eq 66 ]
  [ "$stderr" = "pim-snapshot: sg has no snapshot nope; see pim-snapshot sg list" ]
  run --separate-stderr pim-snapshot sg rm nope
  [ "$status" -eq 66 ]
  run --separate-stderr pim-snapshot nosuch list
  [ "$status" -eq 66 ]
}

@test "pim-snapshot refuses a raw image (65), stopped or running, and says why" {
  qemu-img convert -O raw "$TESTBED/guest-bare.qcow2" "$PIM_TMP/bare.raw"
  run --separate-stderr pim-snapshot "$PIM_TMP/bare.raw" save x
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"is a raw image: only qcow2 images can hold snapshots"*"qemu-img convert -O qcow2"* ]]
  [ "$(wc -l <<<"$stderr")" -eq 1 ]
  # running: QMP says the disk is raw (no need for the guest to boot)
  pim-run "$PIM_TMP/bare.raw" --name rawvm --mem 128M --cpus 1 >/dev/null 2>&1
  run --separate-stderr pim-snapshot rawvm save x
  pim-stop --force rawvm >/dev/null
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"bare.raw is a raw image"* ]]
}

@test "pim-snapshot refuses a VM started with --snapshot (69): its writes go to a temporary overlay" {
  pim-run "$TESTBED/guest-bare.qcow2" --name tmpvm --snapshot --mem 128M --cpus 1 >/dev/null 2>&1
  run --separate-stderr pim-snapshot tmpvm save x
  pim-stop --force tmpvm >/dev/null
  [ "$status" -eq 69 ]
  [[ "$stderr" == "pim-snapshot: tmpvm runs with --snapshot: its disk writes go to a temporary overlay"*"without --snapshot" ]]
}

@test "a running store VM: save, write a file in the guest, load: the file is gone and the guest runs on" {
  pim-run sg --mem 256M --cpus 1 >/dev/null
  pim-console sg --ro --replay --until 'pim-testbed ready' --timeout 120 >/dev/null
  run ssh_guest 'test -e /root/after-save'
  [ "$status" -eq 1 ]
  run --separate-stderr pim-snapshot sg save clean
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [[ "$output" == $'sg\tclean\tsaved\t'* ]]
  echo "# save of a running guest (256M, TCG): $(cut -f4 <<<"$output") s" >&3
  ssh_guest 'echo x >/root/after-save && sync'
  run ssh_guest 'test -e /root/after-save'
  [ "$status" -eq 0 ]
  # the snapshot holds RAM and devices: vm_state > 0 (QMP's query-block, not qemu-img)
  run --separate-stderr pim-snapshot sg list --json
  [ "$(jq -r 'select(.tag=="clean") | .vm_state' <<<"$output")" -gt 0 ]
  run --separate-stderr pim-snapshot sg load clean
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  echo "# load: $(cut -f4 <<<"$output") s" >&3
  run ssh_guest 'test -e /root/after-save'
  [ "$status" -eq 1 ]
  run pim-status sg
  [ "$status" -eq 0 ]
  [[ "$output" == $'sg\trunning\t'* ]]
  # the guest agent answers after the load too
  run pim-ga sg guest-ping
  [ "$status" -eq 0 ]
}

@test "a running VM: a disk-only snapshot does not load (65, the VM runs on), a missing tag is 66 (the VM runs on), rm" {
  run --separate-stderr pim-snapshot sg load cold
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"holds the disk only"*"pim-stop sg"* ]]
  run --separate-stderr pim-snapshot sg load nope
  [ "$status" -eq 66 ]
  run pim-qmp sg query-status
  [[ "$output" == *'"running":true'* ]]
  run --separate-stderr pim-snapshot sg save clean
  [ "$status" -eq 73 ]
  run --separate-stderr pim-snapshot sg save clean --force
  [ "$status" -eq 0 ]
  run --separate-stderr pim-snapshot sg rm cold
  [ "$status" -eq 0 ]
  [[ "$output" == $'sg\tcold\tremoved\t'* ]]
  run --separate-stderr pim-snapshot sg list -q
  [ "$output" = clean ]
  # no job is left behind in QEMU (each was dismissed)
  run pim-qmp sg query-jobs
  [ "$output" = '[]' ]
}

@test "pim-log of a running VM: the console; -n; pim-rm refuses it (75)" {
  run --separate-stderr pim-log sg
  [ "$status" -eq 0 ]
  [[ "$output" == *"pim-testbed ready"* ]]
  run --separate-stderr pim-log sg -n 2
  [ "$status" -eq 0 ]
  [ "${#lines[@]}" -eq 2 ]
  run --separate-stderr pim-rm sg
  [ "$status" -eq 75 ]
  [ "$stderr" = "pim-rm: sg is running (pid $(pim-ps --json | jq -r 'select(.name=="sg").pid')); stop it first (pim-stop sg)" ]
  [ -f "$XDG_RUNTIME_DIR/pim/sg.log" ]
}

@test "pim-log -f prints what the VM writes and ends when the VM stops" {
  mkfifo "$PIM_TMP/follow"
  pim-log sg -f -n 3 >"$PIM_TMP/follow" 2>"$PIM_TMP/follow.err" &
  local pid=$! first
  exec 5<"$PIM_TMP/follow"
  # the last lines come at once (the last may be the shell's prompt, without a
  # newline: 3 lines hold a whole one): from then on it follows
  read -r -t 30 first <&5
  [ -n "$first" ]
  pim-ga sg guest-exec '{"path":"/bin/busybox","arg":["sh","-c","echo pim-log-marker-$((6*7)) >/dev/ttyS0"]}' >/dev/null
  # stopping the VM ends pim-log -f: cat sees EOF when it exits
  pim-stop sg >/dev/null
  # (cat ends at EOF, when pim-log has exited; bounded, and pim-log killed if it did not)
  timeout 30 cat <&5 >"$PIM_TMP/followed" || { kill "$pid"; false; }
  exec 5<&-
  wait "$pid"
  grep -q 'pim-log-marker-42' "$PIM_TMP/followed"
  grep -q "sg's console closed (the VM stopped)" "$PIM_TMP/follow.err"
}

@test "pim-log of a stopped VM: the kept log, with what QEMU said; -f has nothing to follow; no log is 66" {
  # a second life of sg, stopped by SIGTERM: QEMU writes why it ends into the log
  pim-run sg --mem 256M --cpus 1 >/dev/null
  pim-console sg --ro --replay --until 'pim-testbed ready' --timeout 120 >/dev/null
  pim-stop --force sg >/dev/null
  run pim-ps -q
  [[ "$output" != *sg* ]]
  run --separate-stderr pim-log sg
  [ "$status" -eq 0 ]
  # QEMU's words come after the console's, which are whole (QEMU's stderr appends to the log)
  [[ "${lines[0]}" == *"Linux version"* ]] || [[ "${lines[0]}" == *"SeaBIOS"* ]] || { echo "${lines[0]}"; false; }
  [[ "$output" == *"pim-testbed ready"* ]]
  # (after the shell's prompt, on its line: the console's last line had no newline)
  [[ "${lines[-1]}" == *"qemu-system-x86_64: terminating on signal 15"* ]] || { echo "${lines[-1]}"; false; }
  run --separate-stderr timeout 10 pim-log sg -f
  [ "$status" -eq 0 ]
  [[ "$output" == *"terminating on signal 15"* ]]
  [ "$stderr" = "sg is not running: its log is shown, there is nothing to follow" ]
  run --separate-stderr pim-log nosuch
  [ "$status" -eq 66 ]
  [[ "$stderr" == "pim-log: no log of nosuch in "* ]]
}

@test "qemu-img sees the snapshot a running VM saved, with its RAM; pim-snapshot loads it into the stopped image" {
  run --separate-stderr pim-snapshot sg list --json
  [ "$status" -eq 0 ]
  [ "$(jq -r 'select(.tag=="clean") | .vm_state' <<<"$output")" -gt 0 ]
  run --separate-stderr pim-snapshot sg load clean
  [ "$status" -eq 0 ]
  [[ "$output" == $'sg\tclean\tloaded\t'* ]]
}

@test "pim-rm removes the kept log and stale runtime files, keeps the image unless --image; nothing left is 66" {
  # stale files of a VM that died: a pidfile naming a process that is not its QEMU
  echo 1 >"$XDG_RUNTIME_DIR/pim/sg.pid"
  echo '{"name":"sg","pid":1}' >"$XDG_RUNTIME_DIR/pim/sg.json"
  run --separate-stderr pim-rm sg
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [[ "$output" == *$'sg\t'"$XDG_RUNTIME_DIR/pim/sg.log"* ]]
  [[ "$output" == *"sg.pid"* ]]
  [[ "$output" == *"sg.json"* ]]
  [ ! -e "$XDG_RUNTIME_DIR/pim/sg.log" ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/sg.pid" ]
  [ -f "$(IMG)" ]
  run --separate-stderr pim-log sg
  [ "$status" -eq 66 ]
  run --separate-stderr pim-rm sg
  [ "$status" -eq 66 ]
  [[ "$stderr" == "pim-rm: nothing of sg to remove"* ]]
  # names from stdin, as pim-stop reads them; --image is the only way the image goes
  run --separate-stderr bash -c 'echo "sg stopped" | pim-rm --image'
  [ "$status" -eq 0 ]
  [ "$output" = "sg	$(IMG)" ]
  [ ! -e "$(IMG)" ]
}

# Does the test bed guest reach userspace under KVM, with -cpu host as pim-run
# uses it? Told by QEMU itself, not by pim: the oracle for pim doctor's kvm line.
kvm_boots() {
  [ -e /dev/kvm ] || return 1
  rm -f "$PIM_TMP/kvm.fifo"
  mkfifo "$PIM_TMP/kvm.fifo"
  qemu-system-x86_64 -accel kvm -cpu host -M q35 -m 256 -nodefaults -display none -monitor none -serial stdio \
    -kernel "$TESTBED/vmlinuz" -initrd "$TESTBED/initrd.gz" -append console=ttyS0 \
    </dev/null >"$PIM_TMP/kvm.fifo" 2>/dev/null &
  local pid=$! ok=1
  timeout 60 grep -q -m1 'pim-testbed ready' <"$PIM_TMP/kvm.fifo" && ok=0
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
  return $ok
}

@test "pim doctor on this host: KVM as it really is (a test run), the runtime dir ok, one line per check, never a prompt" {
  local t0=$SECONDS
  run --separate-stderr env -u PIM_ACCEL timeout 60 pim doctor </dev/null
  echo "# pim doctor: $((SECONDS - t0)) s" >&3
  local kvm works=0
  kvm=$(grep $'^kvm\t' <<<"$output")
  kvm_boots && works=1
  if [ ! -e /dev/kvm ]; then
    [[ "$kvm" == $'kvm\twarn\tno /dev/kvm'* ]]
  elif [ "$works" = 1 ]; then
    [[ "$kvm" == $'kvm\tok\t'* ]]
  else
    # this project's CI host: /dev/kvm opens, guests fail at run time
    [[ "$kvm" == $'kvm\tfail\t/dev/kvm opens, but KVM fails at run time: '* ]] || { echo "$kvm"; false; }
    [ "$status" -eq 1 ]
  fi
  [ -z "$stderr" ]
  grep -q $'^runtime-dir\tok\t' <<<"$output"
  grep -q $'^node\tok\t22\.' <<<"$output" || grep -q $'^node\tok\t2[3-9]\.' <<<"$output"
  grep -q $'^qemu\tok\t.*qemu-system-x86_64 [0-9]' <<<"$output"
  # every line: CHECK ok|warn|fail DETAIL
  run awk -F'\t' 'NF != 3 || $2 !~ /^(ok|warn|fail)$/ { bad = 1 } END { exit bad }' <<<"$output"
  [ "$status" -eq 0 ]
  # with PIM_ACCEL=tcg a broken KVM is a warning, not a failure
  if [ "$works" = 0 ] && [ -e /dev/kvm ]; then
    run --separate-stderr env PIM_ACCEL=tcg pim-doctor --json
    [ "$(jq -r 'select(.name=="kvm").status' <<<"$output")" = warn ]
    [[ "$(jq -r 'select(.name=="kvm").detail' <<<"$output")" == *"PIM_ACCEL=tcg is set"* ]]
  fi
}

@test "pim doctor: a 0777 runtime dir is a fail (exit 1), a 0755 one a warn; neither is changed" {
  local rd="$PIM_TMP/rt"
  mkdir -p "$rd/pim"
  chmod 777 "$rd/pim"
  run --separate-stderr env XDG_RUNTIME_DIR="$rd" PIM_ACCEL=tcg pim-doctor --json
  [ "$status" -eq 1 ]
  [ "$(jq -r 'select(.name=="runtime-dir").status' <<<"$output")" = fail ]
  [[ "$(jq -r 'select(.name=="runtime-dir").detail' <<<"$output")" == *"is writable by others (mode 777)"*"rm -r $rd/pim"* ]]
  # the runtime dir was the only failure
  [ "$(jq -r 'select(.status=="fail").name' <<<"$output")" = runtime-dir ]
  [ "$(stat -c %a "$rd/pim")" = 777 ]
  chmod 755 "$rd/pim"
  run --separate-stderr env XDG_RUNTIME_DIR="$rd" PIM_ACCEL=tcg pim-doctor
  [ "$status" -eq 0 ]
  [[ "$(grep $'^runtime-dir\t' <<<"$output")" == $'runtime-dir\twarn\t'*"mode 755"* ]]
  [ "$(stat -c %a "$rd/pim")" = 755 ]
}

@test "pim doctor --timeout 3 with a QEMU that hangs, its child holding the pipe: done at the limit, the QEMU's whole group killed" {
  local fq="$PIM_TMP/fakeq"
  mkdir -p "$fq"
  # a QEMU that never answers, with a child that keeps stdout and stderr open
  printf '#!/bin/sh\nsleep 1000 &\necho $! >>"%s/children"\nsleep 1000\n' "$fq" >"$fq/qemu-system-x86_64"
  chmod +x "$fq/qemu-system-x86_64"
  local t0=$SECONDS
  run --separate-stderr env -u PIM_ACCEL PATH="$fq:$PATH" timeout 120 pim doctor --timeout 3 </dev/null
  local took=$((SECONDS - t0))
  echo "# pim doctor --timeout 3, hanging QEMU: $took s" >&3
  [ "$status" -eq 1 ]
  [[ "$(grep $'^qemu\t' <<<"$output")" == $'qemu\tfail\t'*"did not answer within 3 s"* ]]
  [ "$took" -lt "$(slow 30)" ]   # 3 s and a kill's grace, not the 1000 s the child would hold the pipe
  local c
  for c in $(cat "$fq/children"); do pid_gone "$c"; done
}

@test "completion: pim-snapshot completes actions and the tags of the VM named before them" {
  qemu-img create -q -f qcow2 "$PIM_TMP/c.qcow2" 1M
  qemu-img snapshot -c base "$PIM_TMP/c.qcow2"
  run pim-snapshot complete -- "$PIM_TMP/c.qcow2" ''
  [[ "$output" == *save*load*list*rm* ]]
  run pim-snapshot complete -- "$PIM_TMP/c.qcow2" load ''
  [ "${lines[0]}" = $'base\tdisk only' ]
  run pim-doctor complete -- --j
  [[ "$output" == *--json* ]]
}
