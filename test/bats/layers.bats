#!/usr/bin/env bats
# Layered builds (issue 20) under TCG with the test bed's Debian-layout
# installer ISO: the install stage cached by its own key and reused when only a
# script changes, rebuilt when the answer file changes; stages shared by
# several builds at once (-j); gc and rm that know stages; signals in a stage
# that leave nothing behind. Few builds: each test goes on from the last.
load helper
load build

setup_file() {
  build_home
  need_installer
  build_www "$TESTBED/installer/di.iso"
  www_entry tb-di di.iso 'distro: debian' >"$C/isos.d/tb.yml"
  # the answer's mark is the hostname
  cat >"$C/profiles.d/tb.yml" <<EOF
$(tb_defaults 'disk_size: 256M' 'timeout: 300' 'iso: tb-di' 'hostname: lay-one')
la: {scripts: [a.sh]}
lslow: {}
ja: {preseed: shared.cfg.eta, installs: [shared.sh], scripts: [ja.sh]}
jb: {preseed: shared.cfg.eta, installs: [shared.sh], scripts: [jb.sh]}
fc: {from: ja, scripts: [fc.sh]}
cy1: {from: cy2}
cy2: {from: cy1}
EOF
  # ja and jb render the same answer file (pim's template without the profile's name in it): one install stage for both
  sed "s/<%= name %>/shared/; s|'/installs.d/' + name + '.sh|'/installs.d/shared.sh|" \
    "$REPO/defaults/preseeds.d/default.cfg.eta" >"$C/preseeds.d/shared.cfg.eta"
  printf '#!/bin/sh\necho "late command ran" >/etc/pim-late-command\n' >"$C/installs.d/shared.sh"
  printf '#!/bin/sh\necho ja-one >/root/mark\n' >"$C/scripts.d/ja.sh"
  printf '#!/bin/sh\necho jb-one >/root/mark\n' >"$C/scripts.d/jb.sh"
  printf '#!/bin/sh\necho fc-one >/root/child-mark\n' >"$C/scripts.d/fc.sh"
  # the late command the installer fetches: installs.d/PROFILE.sh
  printf '#!/bin/sh\necho "late command ran" >/etc/pim-late-command\n' >"$C/installs.d/la.sh"
  printf '#!/bin/sh\nsleep 100000\n' >"$C/installs.d/lslow.sh"
  printf '#!/bin/sh\necho a-one >/root/mark\n' >"$C/scripts.d/a.sh"
  printf '#!/bin/sh\necho "sleepy script running"\nsleep 100000\n' >"$C/scripts.d/sleepy.sh"
}

teardown_file() { build_teardown; }

stages_dir() { echo "$XDG_DATA_HOME/pim/stages"; }
# the stored install stages, one directory name a line
stages() { find "$(stages_dir)" -mindepth 1 -maxdepth 1 -name 'install-*' -printf '%f\n' 2>/dev/null | sort; }

@test "a changed script re-runs only provisioning, on the stored install stage: the rebuild boots with the new script's mark and the answer's" {
  run --separate-stderr pim-build run la
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  first="$output"
  [[ "$stderr" == *"the installer fetched preseed.cfg"* ]]
  [[ "$stderr" != *reusing* ]]
  [ "$(stages | wc -l)" -eq 1 ]
  st="$(stages_dir)/$(stages)"
  [ "$(stat -c %a "$st")" = 500 ]
  [ "$(stat -c %a "$st/disk.qcow2")" = 400 ]
  sum=$(sha256sum "$st/disk.qcow2")
  # the finished build stands alone: no backing file
  [ "$(qemu-img info --output=json "$first" | jq -r '."backing-filename" // "none"')" = none ]
  printf '#!/bin/sh\necho a-two >/root/mark\n' >"$XDG_CONFIG_HOME/pim/scripts.d/a.sh"
  run --separate-stderr pim-build run la
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [ "$output" != "$first" ]
  [[ "$stderr" =~ reusing\ install\ [0-9a-f]{8}\ \(built\ [0-9]+\ (s|min)\ ago\),\ provisioning ]]
  [[ "$stderr" != *"the installer"* ]]
  [ "$(stages | wc -l)" -eq 1 ]
  [ "$(sha256sum "$st/disk.qcow2")" = "$sum" ]
  # show: the chain, install reused, provision and finish made
  run pim-build show la --json
  [ "$(jq -r '[.stages[] | .stage + ":" + .how] | join(" ")' <<<"$output")" = "install:reused provision:made finish:made" ]
  [ "$(jq -r '.stages[0].stored' <<<"$output")" = true ]
  [ "$(jq -r '.stages[0].key[0:16]' <<<"$output")" = "$(stages | sed 's/install-//')" ]
  boot_build la
  run ssh_vm la 'cat /root/mark /etc/pim-late-command; hostname'
  pim-stop la --force >/dev/null
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = a-two ]
  [ "${lines[1]}" = "late command ran" ]
  [ "${lines[2]}" = lay-one ]
}

@test "a changed answer file (the hostname) rebuilds the install stage" {
  sed -i 's/^la: {scripts: \[a.sh\]}/la: {scripts: [a.sh], hostname: lay-two}/' "$XDG_CONFIG_HOME/pim/profiles.d/tb.yml"
  run --separate-stderr pim-build run la
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [[ "$stderr" == *"the installer fetched preseed.cfg"* ]]
  [[ "$stderr" != *reusing* ]]
  [ "$(stages | wc -l)" -eq 2 ]
  [ "$(pim-build show la --json | jq -r '.stages[0].how')" = made ]
}

@test "gc keeps the stages that kept builds need (and the builds store disks need); rm removes only a build's own stage" {
  # la's second build backs the store disk pim-run made: it stays, and with it the first stage
  run pim-build gc --keep 1
  [ "$status" -eq 0 ]
  [ "$(pim-build list -q | grep -c '^la-')" -eq 2 ]
  [ "$(stages | wc -l)" -eq 2 ]
  rm "$XDG_DATA_HOME/pim/images/la.qcow2"
  old=$(pim-build show la --json | jq -r '.stages[0].key[0:16]')
  run pim-build gc --keep 1
  [ "$status" -eq 0 ]
  [ "$(pim-build list -q | grep -c '^la-')" -eq 1 ]
  [ "$(stages)" = "install-$old" ]
  [[ "$output" == *install-* ]]
}

@test "run ja jb -j 2: the install stage they share is made once (the other waits and reuses it); paths in the order given; a failure does not stop the others" {
  n=$(stages | wc -l)
  run --separate-stderr pim-build run ja jb -j 2
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [ "${#lines[@]}" -eq 2 ]
  [[ "${lines[0]}" == */ja-*/ja.qcow2 ]]
  [[ "${lines[1]}" == */jb-*/jb.qcow2 ]]
  [ "$(grep -c 'the installer fetched preseed.cfg' <<<"$stderr")" -eq 1 ]
  [ "$(grep -c 'reusing install' <<<"$stderr")" -eq 1 ]
  [[ "$stderr" == *"[ja] provisioning: scripts.d/ja.sh"* ]]
  [[ "$stderr" == *"[jb] provisioning: scripts.d/jb.sh"* ]]
  [ "$(stages | wc -l)" -eq $((n + 1)) ]
  [ "$(pim-build show ja --json | jq -r .stages[0].key)" = "$(pim-build show jb --json | jq -r .stages[0].key)" ]
  hows="$(pim-build show ja --json | jq -r .stages[0].how) $(pim-build show jb --json | jq -r .stages[0].how)"
  [ "$hows" = "made reused" ] || [ "$hows" = "reused made" ]
  paths=("${lines[@]}")
  # on a terminal (a real pty: script(1)): one live line per build, redrawn in place; the paths still in order
  env -u NO_COLOR TERM=xterm script -qec 'pim-build run ja jb -j 2' /dev/null </dev/null >"$PIM_TMP/tty.out"
  tty=$(cat "$PIM_TMP/tty.out")
  [[ "$tty" == *$'\r'*"ja: "*"... ("*$'s)'*$'\e[K\r\n'*"jb: "*"... ("*$'s)'*$'\e[K'* ]]
  [[ "$tty" == *$'\r\e[1A\e[J'* ]]
  [[ "$tty" == *"[ja] "*"(cached)"* ]]
  [[ "$tty" == *"${paths[0]}"$'\r\n'"${paths[1]}"* ]]
  run --separate-stderr pim-build run ja nosuch jb -j 2
  [ "$status" -eq 66 ]
  [ "$output" = "$(printf '%s\n%s' "${paths[0]}" "${paths[1]}")" ]
  [[ "$stderr" == *"[nosuch]"* ]]
}

@test "from: a changed child rebuilds only the child; a changed parent rebuilds both; the child boots with both marks; a cycle is 78 at FILE:LINE" {
  run --separate-stderr pim-build run fc
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [[ "$stderr" == *"fc starts from ja-"*"(cached)"* ]]
  [ "$(pim-build show fc --json | jq -r .stages[0].inputs.from)" = "$(pim-build show ja --json | jq -r .key)" ]
  printf '#!/bin/sh\necho fc-two >/root/child-mark\n' >"$XDG_CONFIG_HOME/pim/scripts.d/fc.sh"
  run --separate-stderr pim-build run fc
  [ "$status" -eq 0 ]
  [ "$(pim-build list -q | grep -c '^ja-')" -eq 1 ]
  [ "$(pim-build list -q | grep -c '^fc-')" -eq 2 ]
  printf '#!/bin/sh\necho ja-two >/root/mark\n' >"$XDG_CONFIG_HOME/pim/scripts.d/ja.sh"
  run --separate-stderr pim-build run fc
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [ "$(pim-build list -q | grep -c '^ja-')" -eq 2 ]
  [ "$(pim-build list -q | grep -c '^fc-')" -eq 3 ]
  [ "$(pim-build show fc --json | jq -r .stages[0].inputs.from)" = "$(pim-build show ja --json | jq -r .key)" ]
  boot_build fc
  run ssh_vm fc 'cat /root/mark /root/child-mark'
  pim-stop fc --force >/dev/null
  [ "$output" = "$(printf 'ja-two\nfc-two')" ]
  run --separate-stderr pim-build run cy1
  [ "$status" -eq 78 ]
  [[ "$stderr" == *"tb.yml:"*"from: cy1 -> cy2 -> cy1 is a cycle"* ]]
}

@test "signals: SIGINT while an install stage is made leaves no stage; SIGTERM while provisioning on a reused stage leaves it as it was" {
  before=$(stages)
  pim-build run lslow 2>"$PIM_TMP/slow.err" &
  pid=$!
  wait_until 60 said_or_ended "$PIM_TMP/slow.err" 'fetched preseed.cfg' "$pid"
  grep -q 'fetched preseed.cfg' "$PIM_TMP/slow.err"
  [ -n "$(find "$(stages_dir)" -maxdepth 1 -name '.tmp-install-*')" ]
  kill -INT "$pid"
  st=0
  wait "$pid" || st=$?
  [ "$st" -eq 130 ]
  no_build_leftovers lslow
  [ "$(stages)" = "$before" ]
  [ -z "$(find "$(stages_dir)" -maxdepth 1 -name '.*' ! -name '*.lock')" ]
  # la's stage reused, a script that never ends, SIGTERM: 143, the stage unchanged, no use mark left
  sum=$(sha256sum "$(stages_dir)"/install-*/disk.qcow2)
  cp "$XDG_CONFIG_HOME/pim/scripts.d/sleepy.sh" "$XDG_CONFIG_HOME/pim/scripts.d/a.sh"
  pim-build run la 2>"$PIM_TMP/sleepy.err" &
  pid=$!
  wait_until 300 said_or_ended "$PIM_TMP/sleepy.err" 'sleepy script running' "$pid"
  grep -q 'reusing install' "$PIM_TMP/sleepy.err"
  grep -q 'sleepy script running' "$PIM_TMP/sleepy.err"
  kill -TERM "$pid"
  st=0
  wait "$pid" || st=$?
  [ "$st" -eq 143 ]
  [ "$(sha256sum "$(stages_dir)"/install-*/disk.qcow2)" = "$sum" ]
  [ -z "$(find "$(stages_dir)" -maxdepth 1 -name '.*' ! -name '*.lock')" ]
  [ -z "$(find "$(builds_dir)" -maxdepth 1 -name '.tmp-*')" ]
  [ -z "$(pim-ps -q | grep -- '-build-' || true)" ]
}
