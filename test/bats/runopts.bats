#!/usr/bin/env bats
# pim-run's second-copy and desktop options against real guests under TCG:
# a second VM of an image in use (issue 19 defect 4: the truth and --clone),
# --clone (a throwaway overlay, removed with the VM), --share (the QEMU argv a
# real QEMU starts with, and the mount line), --display and --cdrom refusals.

load helper
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
  need_testbed
  cp "$TESTBED/guest-full.qcow2" "$PIM_TMP/img.qcow2"
}

teardown_file() {
  pim_cleanup
}

@test "an image in use by a running VM: --snapshot says which VM holds it and offers --clone (75); --clone boots a throwaway overlay, removed with the VM" {
  pim-run "$PIM_TMP/img.qcow2" --name one --mem 256M --cpus 1
  run --separate-stderr pim-run "$PIM_TMP/img.qcow2" --name demo2 --snapshot --mem 256M --cpus 1
  echo "$stderr"
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"in use by running VM one"* ]]
  [[ "$stderr" == *"--clone"* ]]
  [[ "$stderr" != *"or use --snapshot"* ]]
  [ -z "$output" ]
  ! pim-ps -q | grep -qx demo2
  # the way out: a clone, with a host directory shared in
  mkdir -p "$PIM_TMP/shared"
  run --separate-stderr pim-run "$PIM_TMP/img.qcow2" --name demo2 --clone --share "$PIM_TMP/shared:hostdir" --mem 256M --cpus 1
  echo "$stderr"
  [ "$status" -eq 0 ]
  [ "$output" = demo2 ]
  [[ "$stderr" == *"mount -t "*" hostdir /mnt/hostdir"* ]]
  pim-console demo2 --ro --replay --until 'pim-testbed ready' --timeout 120 >/dev/null
  local clone="$XDG_RUNTIME_DIR/pim/demo2.clone.qcow2"
  [ "$(qemu-img info -U --output=json "$clone" | jq -r '."backing-filename"')" = "$PIM_TMP/img.qcow2" ]
  # QEMU reads the image without its lock, and has the share
  local argv
  argv=$(tr '\0' '\n' <"/proc/$(cat "$XDG_RUNTIME_DIR/pim/demo2.pid")/cmdline")
  [[ "$argv" == *"file=$clone,format=qcow2,if=none,id=disk0,backing.file.locking=off"* ]]
  [[ "$argv" == *"mount_tag=hostdir"* || "$argv" == *"tag=hostdir"* ]]
  pim-stop demo2 --force
  [ ! -e "$clone" ]
  ! compgen -G "$XDG_RUNTIME_DIR/pim/demo2.vfs*.sock"
  pim-stop one --force
}

@test "--display and --cdrom: bad values are refused before anything starts" {
  run --separate-stderr pim-run "$PIM_TMP/img.qcow2" --name d3 --display vnc:x
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"--display must be gtk, sdl, vnc or vnc:N"* ]]
  run --separate-stderr pim-run "$PIM_TMP/img.qcow2" --name d3 --cdrom "$PIM_TMP/none.iso"
  [ "$status" -eq 66 ]
  [[ "$stderr" == *"--cdrom"*"is not a file"* ]]
  ! pim-ps -q | grep -qx d3
}

@test "--display vnc:N serves VNC on 127.0.0.1 only; --cdrom attaches the ISO (a real QEMU starts with both)" {
  local iso="$PIM_TMP/cd.iso"
  mkdir -p "$PIM_TMP/cd" && echo hi >"$PIM_TMP/cd/hello.txt"
  xorriso -as mkisofs -quiet -o "$iso" "$PIM_TMP/cd" 2>/dev/null
  run --separate-stderr pim-run "$PIM_TMP/img.qcow2" --name d4 --snapshot --clone --display vnc:7 --cdrom "$iso" --mem 256M --cpus 1
  echo "$stderr"
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"VNC on 127.0.0.1:5907"* ]]
  local argv
  argv=$(tr '\0' '\n' <"/proc/$(cat "$XDG_RUNTIME_DIR/pim/d4.pid")/cmdline")
  [[ "$argv" == *"vnc=127.0.0.1:7"* ]]
  [[ "$argv" == *"file=$iso,format=raw,if=none,id=cd0,media=cdrom"* ]]
  # QEMU listens on 127.0.0.1:5907 and answers as a VNC server
  run timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5907; head -c 3 <&3'
  [ "$output" = "RFB" ]
  run pim-qmp d4 query-block
  [[ "$output" == *"$iso"* ]]
  pim-stop d4 --force
}

@test "pim-vm clone and resize: a running VM's disk is refused (75), a stopped one copied and grown, a stored build cloned as an overlay and never resized (65)" {
  local store="$XDG_DATA_HOME/pim/images"
  mkdir -p "$store"
  cp "$TESTBED/guest-bare.qcow2" "$store/vm1.qcow2"
  pim-run vm1 --mem 256M --cpus 1
  run --separate-stderr pim-vm clone vm1 vm2
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"in use by running VM vm1"* ]]
  run --separate-stderr pim-vm resize vm1 +64M
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"running VM vm1"*"stop it first"* ]]
  [ ! -e "$store/vm2.qcow2" ]
  pim-stop vm1 --force
  # stopped: a copy, then a bigger disk
  run --separate-stderr pim-vm clone vm1 vm2
  [ "$status" -eq 0 ]
  [ "$output" = "$store/vm2.qcow2" ]
  cmp "$store/vm1.qcow2" "$store/vm2.qcow2"
  [ "$(stat -c %a "$store/vm2.qcow2")" = 600 ]
  run pim-vm clone vm1 vm2
  [ "$status" -eq 73 ]
  local before after
  before=$(qemu-img info --output=json "$store/vm2.qcow2" | jq '."virtual-size"')
  run --separate-stderr pim-vm resize vm2 +64M
  [ "$status" -eq 0 ]
  after=$(qemu-img info --output=json "$store/vm2.qcow2" | jq '."virtual-size"')
  [ "$after" -eq $((before + 64 * 1024 * 1024)) ]
  [ "$output" = "$store/vm2.qcow2"$'\t'"$after" ]
  run pim-vm resize vm2 lots
  [ "$status" -eq 64 ]
  # a stored build: an overlay of it, and no resize of the build itself
  local id=web-0123456789ab b="$XDG_DATA_HOME/pim/builds/web-0123456789ab"
  mkdir -p "$b"
  qemu-img create -q -f qcow2 "$b/disk.qcow2" 64M
  printf '{"id":"%s","key":"0123456789ab%052d","profile":"web","created":"2026-01-01T00:00:00Z","disk":{"file":"disk.qcow2","format":"qcow2"}}\n' "$id" 0 >"$b/build.json"
  run --separate-stderr pim-vm resize web +1G
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"stored build $id"*"pim-vm clone"* ]]
  run --separate-stderr pim-vm resize "$b/disk.qcow2" +1G
  [ "$status" -eq 65 ]
  run --separate-stderr pim-vm clone web web2
  [ "$status" -eq 0 ]
  [ "$(qemu-img info --output=json "$store/web2.qcow2" | jq -r '."backing-filename"')" = "$b/disk.qcow2" ]
  run pim-vm resize web2 +64M
  [ "$status" -eq 0 ]
  [ "$(qemu-img info --output=json "$b/disk.qcow2" | jq '."virtual-size"')" -eq $((64 * 1024 * 1024)) ]
}
