#!/usr/bin/env bats
# pim-rm --stale (issue 19): what builds, pim-kboot VMs and failed starts left
# in the runtime dir goes; what a user keeps (a VM defined in vms.d, a name
# with an image in the store, a running VM) is never touched. One real guest
# runs meanwhile.

load helper
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
  need_testbed
}

teardown_file() {
  pim_cleanup
}

@test "pim-rm --stale removes build, kboot and failed-start leftovers, never a defined VM, a store image's log or a running VM" {
  boot_guest bare live
  local r="$XDG_RUNTIME_DIR/pim"
  # leftovers, as pim-ps --all lists them: a build's VM, a kboot VM, a failed start (log and stale metadata)
  echo "build console" >"$r/dev-build-0123abcd.log"
  echo "kboot console" >"$r/kb7.log"
  echo "qemu-system-x86_64: could not open disk" >"$r/broken.log"
  echo '{"name":"broken","pid":999999,"kind":"run","image":"/nonexistent.qcow2"}' >"$r/broken.json"
  # kept: a store image with its kept log, a defined VM with its kept log
  mkdir -p "$XDG_DATA_HOME/pim/images" "$XDG_CONFIG_HOME/pim/vms.d"
  qemu-img create -q -f qcow2 "$XDG_DATA_HOME/pim/images/mine.qcow2" 16M
  echo "mine's last boot" >"$r/mine.log"
  echo 'defd: {image: mine, mem: 256M}' >"$XDG_CONFIG_HOME/pim/vms.d/defd.yml"
  echo "defd's last boot" >"$r/defd.log"
  run pim-ps --all -q
  [[ "$output" == *dev-build-0123abcd* && "$output" == *kb7* ]]

  run --separate-stderr pim-rm --stale
  [ "$status" -eq 0 ]
  [ -z "$stderr" ]
  grep -q $'^dev-build-0123abcd\t.*dev-build-0123abcd.log$' <<<"$output"
  grep -q $'^kb7\t' <<<"$output"
  grep -q $'^broken\t' <<<"$output"
  ! grep -qE '^(live|mine|defd)\b' <<<"$output"
  [ ! -e "$r/dev-build-0123abcd.log" ] && [ ! -e "$r/kb7.log" ] && [ ! -e "$r/broken.log" ] && [ ! -e "$r/broken.json" ]
  # what the user keeps is all there
  [ -f "$r/mine.log" ] && [ -f "$r/defd.log" ] && [ -f "$XDG_DATA_HOME/pim/images/mine.qcow2" ]
  run pim-status live
  [ "$status" -eq 0 ]
  [ -f "$r/live.log" ]
  # again: nothing stale is nothing to do
  run --separate-stderr pim-rm --stale
  [ "$status" -eq 0 ] && [ -z "$output" ] && [ -z "$stderr" ]
  run pim-rm --stale live
  [ "$status" -eq 64 ]
  pim-stop live
}

@test "pim-rm on a terminal: one aligned table with a header, as pim-ps's; --json stays JSON lines; a pipe stays tab-separated" {
  local r="$XDG_RUNTIME_DIR/pim" out="$PIM_TMP/rm.tty"
  mkdir -p "$r" && chmod 700 "$r"
  echo one >"$r/left-one.log"
  echo two >"$r/kb-longer-name.log"
  python3 "$REPO/test/lifecycle/pty-capture.py" pim-rm left-one kb-longer-name | tr -d '\r' >"$out"
  cat "$out"
  [ "$(head -n 1 "$out" | awk '{print $1, $2}')" = "NAME PATH" ]
  [ "$(wc -l <"$out")" -eq 3 ]
  ! grep -q $'\t' "$out"
  # the second column starts at the same place on every line
  [ "$(awk '{print index($0, $2)}' "$out" | sort -u | wc -l)" -eq 1 ]
  grep -q '^left-one ' "$out" && grep -q '^kb-longer-name ' "$out"
  [ ! -e "$r/left-one.log" ] && [ ! -e "$r/kb-longer-name.log" ]
  # --json on a terminal: JSON lines, no table
  echo three >"$r/left-two.log"
  python3 "$REPO/test/lifecycle/pty-capture.py" pim-rm --json left-two | tr -d '\r' >"$out"
  [ "$(jq -r .name "$out")" = left-two ]
  # a pipe: NAME<TAB>PATH, no header
  echo four >"$r/left-three.log"
  run --separate-stderr pim-rm left-three
  [ "$status" -eq 0 ]
  [ "$output" = "left-three"$'\t'"$r/left-three.log" ]
}
