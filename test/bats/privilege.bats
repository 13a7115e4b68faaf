#!/usr/bin/env bats
# The unprivileged and sudo paths for real: as root, make a user (pimtest), a
# bridge that goes nowhere (pimbr0) and a sudoers rule for exactly QEMU, chown
# and kill; then run pim as that user with no TTY. Bridged QEMU runs as root
# through sudo -n, the queries need no sudo, a refused sudo is exit 77, and the
# runtime dir is private and the user's own. Host changes: test/privilege/host.sh.

load helper

PRIV_USER=pimtest
PRIV_BRIDGE=pimbr0
export PIM_PRIV_USER="$PRIV_USER" PIM_PRIV_BRIDGE="$PRIV_BRIDGE"

setup_file() {
  [ "$(id -u)" -eq 0 ] || skip "needs root: creates a user, a bridge and a sudoers rule"
  command -v sudo >/dev/null || skip "needs sudo (apt-get install sudo)"
  pim_isolate
  need_testbed
  chmod 755 "$PIM_TMP"
  bash "$REPO/test/privilege/host.sh" up "$PIM_TMP/host"
  PRIV_UID="$(id -u "$PRIV_USER")"
  export PRIV_UID
  # pim and the image where the user can reach them, whatever the repo's path
  cp -r "$REPO/dist" "$PIM_TMP/dist"
  chmod -R a+rX "$PIM_TMP/dist"
  mkdir -m 755 "$PIM_TMP/img"
  cp "$TESTBED/guest-full.qcow2" "$PIM_TMP/img/"
  chmod 644 "$PIM_TMP/img/guest-full.qcow2"
  IMG="$PIM_TMP/img/guest-full.qcow2"
  export IMG
  # the user's XDG_RUNTIME_DIR, as a login would make it
  install -d -m 700 -o "$PRIV_USER" -g "$PRIV_USER" "$PIM_TMP/u"
  rm -rf "/tmp/pim-$PRIV_UID"
  runuser -u "$PRIV_USER" -- node -e 0 || { echo "$PRIV_USER cannot run $(command -v node)" >&2; return 1; }
}

setup() {
  bash "$REPO/test/privilege/host.sh" sudoers on
}

teardown() {
  kill_leftovers
}

teardown_file() {
  [ -n "${PIM_TMP:-}" ] || return 0
  kill_leftovers
  bash "$REPO/test/privilege/host.sh" down "$PIM_TMP/host"
  pim_cleanup
}

# as_user [VAR=value...] CMD ARGS: run as the test user, no TTY (new session,
# stdin /dev/null), a clean environment, XDG_RUNTIME_DIR=$PIM_TMP/u unless
# XDG_RUNTIME_DIR= (empty: unset) is given.
as_user() {
  local -a envs=("XDG_RUNTIME_DIR=$PIM_TMP/u")
  while [[ "${1:-}" == *=* ]]; do
    if [ "$1" = XDG_RUNTIME_DIR= ]; then envs=(); else envs+=("$1"); fi
    shift
  done
  runuser -u "$PRIV_USER" -- setsid -w env -i \
    PATH="$PIM_TMP/dist/bin:$(dirname "$(command -v node)"):/usr/sbin:/usr/bin:/sbin:/bin" \
    HOME="/home/$PRIV_USER" LANG=C.UTF-8 NO_COLOR=1 PIM_ACCEL=tcg "${envs[@]}" "$@" </dev/null
}

run_bridged() {
  as_user pim-run "$IMG" --name br --bridged --bridge "$PRIV_BRIDGE" --snapshot --mem 256M --cpus 1 "$@"
}

# alive PID: the process exists and is not a zombie (this container's pid 1 may not reap)
alive() {
  local st
  st="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ "$st" != Z* ]]
}

dead() { ! alive "$1"; }

# no_qemu_named TEXT: no live process has TEXT in its command line
no_qemu_named() {
  local p
  for p in /proc/[0-9]*; do
    if grep -qaF -- "$1" "$p/cmdline" 2>/dev/null && alive "${p#/proc/}"; then
      echo "still running: pid ${p#/proc/}" >&2
      return 1
    fi
  done
}

# Kill, as root, every QEMU this file started: by pidfile, then any process
# whose command line names this file's private dir.
kill_leftovers() {
  local f p
  for f in "$PIM_TMP"/u/pim/*.pid /tmp/pim-"${PRIV_UID:-none}"/*.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  for p in /proc/[0-9]*; do
    grep -qaF "$PIM_TMP/" "$p/cmdline" 2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null || true
  done
  return 0
}

@test "bridged as the user: QEMU runs as root via sudo -n, its files are the user's, queries need no sudo" {
  run --separate-stderr run_bridged
  [ "$status" -eq 0 ]
  [ "$output" = br ]
  d="$PIM_TMP/u/pim"
  pid="$(cat "$d/br.pid")"
  [ "$(ps -o user= -p "$pid")" = root ]
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "bridge,id=net0,br=$PRIV_BRIDGE,"
  for f in br.qmp br.ga br.serial br.pid br.json br.log; do
    [ "$(stat -c %U "$d/$f")" = "$PRIV_USER" ]
  done
  [ "$(stat -c '%U %a' "$d")" = "$PRIV_USER 700" ]
  [ "$(jq -r .root "$d/br.json")" = true ]
  [ "$(jq -r .bridged "$d/br.json")" = true ]

  # from here on sudo is refused: nothing below may use it
  bash "$REPO/test/privilege/host.sh" sudoers off
  run as_user sudo -n true
  [ "$status" -ne 0 ]

  run as_user pim-console br --ro --replay --until 'pim-testbed ready' --timeout 120
  [ "$status" -eq 0 ]

  run --separate-stderr as_user pim-ps
  [ "$status" -eq 0 ]
  [ -z "$stderr" ]
  [ "${#lines[@]}" -eq 1 ]
  IFS=$'\t' read -r name state ppid port uptime image bridged kind accel forwards <<<"${lines[0]}"
  [ "$name $state $ppid $port $bridged $kind $forwards" = "br running $pid - yes run -" ]
  [ "$image" = "$IMG" ]

  run --separate-stderr as_user pim-status br
  [ "$status" -eq 0 ]
  [[ "$output" == br$'\t'running$'\t'"$pid"$'\t'* ]]

  run --separate-stderr as_user pim-qmp br query-status
  [ "$status" -eq 0 ]
  [ "$(jq -r .status <<<"$output")" = running ]

  # the agent answers although nothing on pimbr0 hands out addresses
  run --separate-stderr as_user pim-ga br guest-info
  [ "$status" -eq 0 ]
  [ "$(jq -r '.supported_commands | length' <<<"$output")" -gt 0 ]
  run --separate-stderr as_user pim-ga br guest-get-host-name
  [ "$status" -eq 0 ]
  [ "$(jq -r '."host-name"' <<<"$output")" = pim-testbed ]

  # the guest agent stage of pim-stop needs no sudo either
  run --separate-stderr as_user pim-stop br
  [ "$status" -eq 0 ]
  [[ "$output" == $'br\tagent\t'* ]]
  dead "$pid"
  for ext in qmp ga serial pid json; do [ ! -e "$d/br.$ext" ]; done
  run as_user pim-ps
  [ "$status" -eq 0 ]
  [ -z "$output" ]
}

@test "pim-stop --force of a root QEMU: sudo -n kill; refused sudo is 77 and the VM stays" {
  run_bridged >/dev/null
  d="$PIM_TMP/u/pim"
  pid="$(cat "$d/br.pid")"
  [ "$(ps -o user= -p "$pid")" = root ]

  bash "$REPO/test/privilege/host.sh" sudoers off
  run --separate-stderr as_user pim-stop br --force --timeout 5
  [ "$status" -eq 77 ]
  [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == *"sudo refused"*"kill"* ]]
  alive "$pid"
  run as_user pim-status br
  [ "$status" -eq 0 ]

  bash "$REPO/test/privilege/host.sh" sudoers on
  run --separate-stderr as_user pim-stop br --force --timeout 5
  [ "$status" -eq 0 ]
  [[ "$output" == $'br\tsigterm\t'* ]]
  dead "$pid"
  for ext in qmp ga serial pid json; do [ ! -e "$d/br.$ext" ]; done
}

@test "bridged as the user without a sudoers rule: exit 77, a one-line hint, no runtime files left" {
  bash "$REPO/test/privilege/host.sh" sudoers off
  run --separate-stderr run_bridged
  [ "$status" -eq 77 ]
  [ -z "$output" ]
  [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == "pim-run: sudo refused"*"sudoers"* ]]
  d="$PIM_TMP/u/pim"
  for ext in qmp ga serial pid json; do [ ! -e "$d/br.$ext" ]; done
  run as_user pim-ps
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  # and no QEMU of ours is left, as root or as the user
  no_qemu_named "$PIM_TMP/u/pim/br.qmp"
}

@test "no XDG_RUNTIME_DIR: /tmp/pim-UID, 0700, the user's; user-mode QEMU runs as the user" {
  rt="/tmp/pim-$PRIV_UID"
  rm -rf "$rt"
  run --separate-stderr as_user XDG_RUNTIME_DIR= pim-run "$IMG" --name um --snapshot --mem 256M --cpus 1
  [ "$status" -eq 0 ]
  [ "$output" = um ]
  [ "$(stat -c '%U %a' "$rt")" = "$PRIV_USER 700" ]
  pid="$(cat "$rt/um.pid")"
  [ "$(ps -o user= -p "$pid")" = "$PRIV_USER" ]
  [ "$(jq -r .root "$rt/um.json")" = false ]
  run as_user XDG_RUNTIME_DIR= pim-ps -q
  [ "$output" = um ]
  run as_user XDG_RUNTIME_DIR= pim-stop um --force --timeout 5
  [ "$status" -eq 0 ]
  dead "$pid"
  rm -rf "$rt"

  # a dir the user made too open is made private again
  install -d -m 755 -o "$PRIV_USER" -g "$PRIV_USER" "$rt"
  run as_user XDG_RUNTIME_DIR= pim-run "$IMG" --name um --snapshot --mem 256M --cpus 1
  [ "$status" -eq 0 ]
  [ "$(stat -c %a "$rt")" = 700 ]
  as_user XDG_RUNTIME_DIR= pim-stop um --force --timeout 5
  rm -rf "$rt"
}

@test "a runtime dir owned by another user is refused with 77" {
  # /tmp/pim-UID made by someone else first (root here)
  rt="/tmp/pim-$PRIV_UID"
  rm -rf "$rt"
  install -d -m 700 "$rt"
  for cmd in "pim-run $IMG --name um --snapshot --mem 256M --cpus 1" "pim-ps" "pim-status um"; do
    run --separate-stderr as_user XDG_RUNTIME_DIR= $cmd
    [ "$status" -eq 77 ]
    [ "${#stderr_lines[@]}" -eq 1 ]
    [[ "$stderr" == *"runtime dir $rt is owned by uid 0, not you (uid $PRIV_UID)"* ]]
  done
  [ -z "$(ls -A "$rt")" ]
  rm -rf "$rt"

  # $XDG_RUNTIME_DIR/pim made by root
  install -d -m 755 -o "$PRIV_USER" -g "$PRIV_USER" "$PIM_TMP/u2"
  install -d -m 755 "$PIM_TMP/u2/pim"
  run --separate-stderr as_user XDG_RUNTIME_DIR="$PIM_TMP/u2" pim-run "$IMG" --name um --snapshot --mem 256M --cpus 1
  [ "$status" -eq 77 ]
  [[ "$stderr" == *"runtime dir $PIM_TMP/u2/pim is owned by uid 0"* ]]
  [ -z "$(ls -A "$PIM_TMP/u2/pim")" ]
  # nothing was started
  no_qemu_named "$PIM_TMP/u2/"
  rm -rf "$PIM_TMP/u2"
}
