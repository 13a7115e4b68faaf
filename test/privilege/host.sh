#!/bin/bash
# Host set-up for test/bats/privilege.bats, as root: a user without a password,
# a Linux bridge that goes nowhere, a bridge.conf line allowing it, and a
# sudoers rule for exactly what pim's bridged mode needs.
#
#   host.sh up STATE_DIR        create user, bridge, bridge.conf line, sudoers rule
#   host.sh sudoers on|off      add or remove the sudoers rule
#   host.sh down STATE_DIR      undo everything "up" did (safe to run twice)
#
# Names are the test's own (PIM_PRIV_USER, PIM_PRIV_BRIDGE); an existing
# /etc/qemu/bridge.conf is backed up into STATE_DIR and restored byte for byte.
set -euo pipefail

USER_NAME="${PIM_PRIV_USER:-pimtest}"
BRIDGE="${PIM_PRIV_BRIDGE:-pimbr0}"
SUDOERS="/etc/sudoers.d/$USER_NAME"
BRCONF=/etc/qemu/bridge.conf
QEMU="$(type -P "${PIM_QEMU:-qemu-system-x86_64}")"

die() { echo "host.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"

sudoers_on() {
  local tmp
  tmp="$(mktemp)"
  # exactly: QEMU (bridged), chown (sockets and pidfile back to the user), kill (pim-stop --force)
  printf '%s ALL=(root) NOPASSWD: %s, %s, %s\n' "$USER_NAME" "$QEMU" "$(type -P chown)" "$(type -P kill)" >"$tmp"
  chmod 0440 "$tmp"
  visudo -cqf "$tmp" || { rm -f "$tmp"; die "sudoers rule does not parse"; }
  mv -f "$tmp" "$SUDOERS"
}

sudoers_off() { rm -f "$SUDOERS"; }

up() {
  local state="$1"
  mkdir -p "$state"
  id -u "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh "$USER_NAME"
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" up
  if [ ! -e "$state/bridge.conf.saved" ] && [ ! -e "$state/bridge.conf.absent" ]; then
    if [ -e "$BRCONF" ]; then cp -p "$BRCONF" "$state/bridge.conf.saved"; else : >"$state/bridge.conf.absent"; fi
    [ -d /etc/qemu ] || { mkdir -p /etc/qemu && : >"$state/etc-qemu.created"; }
  fi
  grep -qx "allow $BRIDGE" "$BRCONF" 2>/dev/null || echo "allow $BRIDGE" >>"$BRCONF"
  sudoers_on
}

down() {
  local state="$1"
  sudoers_off
  if [ -e "$state/bridge.conf.saved" ]; then
    cp -p "$state/bridge.conf.saved" "$BRCONF" && rm -f "$state/bridge.conf.saved"
  elif [ -e "$state/bridge.conf.absent" ]; then
    rm -f "$BRCONF" "$state/bridge.conf.absent"
    [ -e "$state/etc-qemu.created" ] && rmdir /etc/qemu 2>/dev/null && rm -f "$state/etc-qemu.created"
  fi
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  if id -u "$USER_NAME" >/dev/null 2>&1; then
    local uid
    uid="$(id -u "$USER_NAME")"
    pkill -KILL -U "$uid" 2>/dev/null || true   # only the test user's own processes
    for _ in $(seq 50); do pgrep -U "$uid" >/dev/null || break; sleep 0.1; done
    rm -rf "/tmp/pim-$uid"
    userdel -r "$USER_NAME" 2>/dev/null || userdel "$USER_NAME"
  fi
  return 0
}

case "${1:-}" in
  up) up "${2:?state dir}" ;;
  down) down "${2:?state dir}" ;;
  sudoers) case "${2:-}" in on) sudoers_on ;; off) sudoers_off ;; *) die "usage: host.sh sudoers on|off" ;; esac ;;
  *) die "usage: host.sh up|down STATE_DIR | sudoers on|off" ;;
esac
