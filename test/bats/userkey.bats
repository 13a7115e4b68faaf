#!/usr/bin/env bats
# pim's own SSH key for the user (issue 19, defects 1 and 2): made on first
# use under pim's data dir (ed25519, 0600 in a 0700 dir), put into the demo
# guest (test/testbed/demo.sh) and into every build, and used by pim-ssh and
# pim-cp when nothing else is given; pim-ssh -i KEY --config writes
# IdentityFile. HOME is an empty directory: no ~/.ssh/id_* to fall back on,
# and no PIM_SSH_KEY. Every ssh runs without a terminal (setsid, stdin
# /dev/null), so a password prompt cannot be answered: it fails.

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

@test "a build of a profile with ssh_keys: [] and no ~/.ssh keys: pim-build run, pim-run --wait ssh, pim-ssh work with no set-up" {
  need_installer
  export XDG_STATE_HOME="$PIM_TMP/state"
  W="$PIM_TMP/www"
  mkdir -p "$W"
  ln -sf "$TESTBED/installer/di.iso" "$W/di.iso"
  (cd "$W" && sha256sum -- di.iso >SHA256SUMS)
  local port c="$XDG_CONFIG_HOME/pim"
  port=$(serve_www "$W")
  mkdir -p "$c/isos.d" "$c/profiles.d"
  echo "tb-di: {url: \"http://127.0.0.1:$port/di.iso\", checksum_url: \"http://127.0.0.1:$port/SHA256SUMS\", distro: debian}" >"$c/isos.d/tb.yml"
  cat >"$c/profiles.d/dev.yml" <<EOF
dev: {iso: tb-di, ssh_user: root, ssh_keys: [], disk_size: 256M, mem: 256M, cpus: 1, timeout: 300}
EOF
  run --separate-stderr pim-build run dev
  [ "$status" -eq 0 ] || { echo "$stderr"; build_log_tail "$stderr"; false; }
  run --separate-stderr pim-run dev --snapshot --wait ssh --wait-timeout 180
  [ "$status" -eq 0 ]
  [[ "$stderr" != *"no SSH key you hold"* ]]
  run --separate-stderr noterm pim-ssh dev -- echo 'built and reached'
  [ "$status" -eq 0 ]
  [ "$output" = "built and reached" ]
  # pim's per-build key is gone from the guest; pim's own key stays
  run noterm pim-ssh dev -- cat /root/.ssh/authorized_keys
  [ "$(grep -c . <<<"$output")" -eq 1 ]
  [ "$(cut -d' ' -f1,2 <<<"$output")" = "$(cut -d' ' -f1,2 "$(KEY).pub")" ]
  pim-stop dev
}
