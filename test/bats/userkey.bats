#!/usr/bin/env bats
# pim's own SSH key for the user (issue 19, defects 1 and 2): made on first
# use under pim's data dir (ed25519, 0600 in a 0700 dir), put into the demo
# guest (test/testbed/demo.sh) and into every build, and used by pim-ssh and
# pim-cp when nothing else is given; pim-ssh -i KEY --config writes
# IdentityFile. HOME is an empty directory: no ~/.ssh/id_* to fall back on,
# and no PIM_SSH_KEY. Every ssh runs without a terminal (setsid, stdin
# /dev/null), so a password prompt cannot be answered: it fails.
# The last test is the README's tour (a new user's first hour), its commands
# read from README.md and run as they are: one build, from a local ISO, and one boot.

load helper
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
  need_testbed
  export HOME="$PIM_TMP/home"
  mkdir -p "$HOME"
  unset PIM_SSH_KEY PIM_SSH_USER
}

teardown_file() {
  stop_www
  pim_cleanup
}

KEY() { echo "$XDG_DATA_HOME/pim/ssh/id_ed25519"; }

# nossh CMD...: no terminal to ask a password on
noterm() { setsid -w "$@" </dev/null; }

@test "pim's own key: made on first use (pim-ssh --pubkey), ed25519, the key 0600 in a 0700 dir; the same key after" {
  [ ! -e "$(KEY)" ]
  run --separate-stderr pim-ssh --pubkey
  [ "$status" -eq 0 ]
  [[ "$output" == "ssh-ed25519 "* ]]
  [ "$(stat -c %a "$(dirname "$(KEY)")")" = 700 ]
  [ "$(stat -c %a "$(KEY)")" = 600 ]
  ssh-keygen -y -f "$(KEY)" | cut -d' ' -f1,2 >"$PIM_TMP/derived"
  [ "$(cut -d' ' -f1,2 <<<"$output")" = "$(cat "$PIM_TMP/derived")" ]
  first="$output"
  run pim-ssh --pubkey
  [ "$output" = "$first" ]
  run --separate-stderr pim-ssh --pubkey somevm
  [ "$status" -eq 64 ]
}

@test "the demo guest takes pim's key: pim-ssh and pim-cp log in with nothing given, no password prompt" {
  bash "$REPO/test/testbed/demo.sh" "$XDG_DATA_HOME/pim/images/pim-demo.qcow2"
  run pim-run pim-demo --snapshot --mem 256M --cpus 1 --wait ssh --wait-timeout 120
  [ "$status" -eq 0 ]
  run --separate-stderr noterm pim-ssh pim-demo -- echo 'logged in as $(id -un)'
  [ "$status" -eq 0 ]
  [ "$output" = "logged in as root" ]
  grep -qx "  IdentityFile $(KEY)" "$XDG_RUNTIME_DIR/pim/pim-demo.ssh/config"
  echo payload >"$PIM_TMP/up"
  run noterm pim-cp "$PIM_TMP/up" pim-demo:/tmp/up
  [ "$status" -eq 0 ]
  run noterm pim-ssh pim-demo -- cat /tmp/up
  [ "$output" = payload ]
  # on a terminal pim-cp shows scp's progress meter (bytes, rate); in a pipe nothing
  head -c 3000000 /dev/urandom >"$PIM_TMP/big"
  python3 "$REPO/test/lifecycle/pty-capture.py" pim-cp "$PIM_TMP/big" pim-demo:/tmp/big >"$PIM_TMP/cp.out"
  grep -q '100%' "$PIM_TMP/cp.out"
  grep -qE '[0-9.]+(KB|MB)' "$PIM_TMP/cp.out"
  run --separate-stderr noterm pim-cp "$PIM_TMP/big" pim-demo:/tmp/big2
  [ "$status" -eq 0 ] && [ -z "$output" ]
}

@test "pim-ssh -i KEY --config writes IdentityFile: plain ssh -F logs in with that key, and a key the guest refuses is refused" {
  run pim-ssh -i "$TESTBED/id_ed25519" --config pim-demo
  [ "$status" -eq 0 ]
  grep -qx "  IdentityFile $TESTBED/id_ed25519" "$output"
  grep -qx "  IdentitiesOnly yes" "$output"
  run noterm ssh -F "$(pim-ssh -i "$TESTBED/id_ed25519" --config pim-demo)" pim-demo echo via-i
  [ "$status" -eq 0 ]
  [ "$output" = via-i ]
  ssh-keygen -q -t ed25519 -N '' -f "$PIM_TMP/stranger" </dev/null
  ssh -F "$(pim-ssh --config pim-demo)" -O exit pim-demo 2>/dev/null || true   # no cached master to ride on
  run noterm ssh -F "$(pim-ssh -i "$PIM_TMP/stranger" --config pim-demo)" pim-demo echo should-not
  [ "$status" -ne 0 ]
  # and without -i the config names pim's own key again
  run pim-ssh --config pim-demo
  grep -qx "  IdentityFile $(KEY)" "$output"
  ! grep -q stranger "$output"
  run noterm ssh -F "$output" pim-demo echo via-pim-key
  [ "$output" = via-pim-key ]
  pim-stop pim-demo
}

# tour_lines KIND: the lines of the README tour's ```KIND blocks (## A tour ... the next ##),
# comment and blank lines left out
tour_lines() {
  awk -v kind="$1" '
    /^## / { tour = ($0 ~ /^## A tour/) ; next }
    !tour { next }
    /^```/ { inb = (!inb && $0 == "```" kind); next }
    inb && $0 !~ /^[[:space:]]*(#|$)/ { print }' "$REPO/README.md"
}

@test "the README's tour, verbatim, on a clean HOME from a local installer ISO: build (ssh_keys: [], no ~/.ssh), run, pim-ssh with no -i, copy, stop; no prompt" {
  need_installer
  export XDG_STATE_HOME="$PIM_TMP/state"
  [ ! -e "$HOME/.ssh" ]
  # the ISO "you already have": the test bed's installer ISO (d-i's layout) and its SHA256SUMS
  mkdir -p "$HOME/Downloads" "$PIM_TMP/tour"
  ln -s "$TESTBED/installer/di.iso" "$HOME/Downloads/debian-12.iso"
  (cd "$HOME/Downloads" && sha256sum debian-12.iso >SHA256SUMS)
  echo "notes of the tour" >"$PIM_TMP/tour/notes.txt"
  local c="$XDG_CONFIG_HOME/pim" line n=0 profile
  mapfile -t tour < <(tour_lines sh)
  profile=$(tour_lines yaml)
  [ "${#tour[@]}" -ge 9 ]
  [[ "$profile" == "dev:"* ]]
  cd "$PIM_TMP/tour"
  for line in "${tour[@]}"; do
    n=$((n + 1))
    if [[ "$line" == "pim-build run dev"* ]]; then
      # the README's profile, as the user writes it after pim-config init; the test bed's
      # sizes (and root: its installer's target has no useradd) added, ssh_keys left empty
      printf '%s\n  ssh_user: root\n  disk_size: 256M\n  mem: 256M\n  cpus: 1\n  timeout: 300\n' "$profile" >"$c/profiles.d/dev.yml"
      # pim-run dev boots the newest build of dev; a definition of that build at the test bed's size
      mkdir -p "$c/vms.d"
      printf 'dev: {image: "build:dev", mem: 256M, cpus: 1}\n' >"$c/vms.d/dev.yml"
    fi
    # the one change: a longer wait for SSH than the default 120 s, for a shared machine under load
    [[ "$line" != "pim-run dev --wait ssh"* ]] || line="${line/--wait ssh/--wait ssh --wait-timeout 300}"
    echo "tour $n: $line" >&3
    # no terminal to answer a question on: a password prompt or a host-key question fails
    run --separate-stderr setsid -w bash -c "$line" </dev/null
    [[ "$stderr" != *"password"* && "$stderr" != *"(yes/no"* ]]
    case "$line" in
      "pim doctor"*) [ "$status" -eq 0 ] || [ "$status" -eq 1 ] ;; # 1: a check fails (this host's KVM)
      *) [ "$status" -eq 0 ] || { build_log_tail "$stderr"; pim-log dev -n 30 2>/dev/null; false; } ;;
    esac
    case "$line" in
      "pim-build run dev"*) [[ "$output" == "$XDG_DATA_HOME/pim/builds/dev-"*/dev.qcow2 ]] ;;
      "pim-run dev"*) [ "$output" = dev ] && [[ "$stderr" != *"no SSH key you hold"* ]] ;;
      "pim-ssh dev -- uptime"*) [[ "$output" == *"load average"* ]] ;;
      "pim-exec dev -- cat /tmp/notes.txt"*) [ "$output" = "notes of the tour" ] ;;
      "pim-ps"*) [[ "$output" == dev$'\t'running$'\t'* ]] ;;
      "pim-stop dev"*)
        [[ "$output" == dev$'\t'* ]]
        ! pim-status dev >/dev/null 2>&1 ;;
    esac
    # before the VM stops: pim's per-build key is gone from it, pim's own key (the only one) logs in
    if [[ "$line" == "pim-ps"* ]]; then
      run setsid -w pim-ssh dev -- cat /root/.ssh/authorized_keys </dev/null
      [ "$(grep -c . <<<"$output")" -eq 1 ]
      [ "$(cut -d' ' -f1,2 <<<"$output")" = "$(cut -d' ' -f1,2 "$(KEY).pub")" ]
    fi
  done
  # the ISO was used in place, verified: the cache holds a link to it
  [ -L "$XDG_CACHE_HOME/pim/isos/deb12.iso" ]
}
