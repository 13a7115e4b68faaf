#!/usr/bin/env bats
# pim-deploy to an SSH host (type: ssh) through a real sshd on loopback
# (test/bats/libvirt.bash sshd_up: its own host key and authorized key; its
# sessions' XDG_DATA_HOME is $PIM_TMP/remote): what lands there is private
# to the remote user, and a failed or killed copy leaves nothing behind.
# The build is a small qcow2 registered as a pim build (deploy.bash).
load helper
load libvirt
load deploy
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
  export XDG_STATE_HOME="$PIM_TMP/state"
  sshd_up "$PIM_TMP"
  mkdir -p "$XDG_CONFIG_HOME/pim/targets.d"
  echo "box: {type: ssh, host: root@127.0.0.1, port: $SSHD_PORT}" >"$XDG_CONFIG_HOME/pim/targets.d/t.yml"
  qemu-img create -q -f qcow2 "$PIM_TMP/one.qcow2" 16M
  qemu-io -c 'write -P 0x5a 0 1M' "$PIM_TMP/one.qcow2" >/dev/null
  B1=$(register web one "$PIM_TMP/one.qcow2")
  echo "B1=$B1" >"$PIM_TMP/builds"
}

teardown_file() {
  [ -n "${PIM_TMP:-}" ] || return 0
  sshd_down "$PIM_TMP"
  pim_cleanup
}

setup() {
  # shellcheck disable=SC1091
  . "$PIM_TMP/builds"
  export PATH="$PIM_TMP/bin:$PATH"
  R="$PIM_TMP/remote/pim/builds"
}

# leftovers: every .tmp-* (a copy under way) in the remote store
leftovers() { find "$R" -maxdepth 1 -name '.tmp-*' 2>/dev/null; }

@test "a failed copy (scp fails part-way) leaves no .tmp-dep-* on the remote host, and nothing registered" {
  # an scp that copies the first file, then fails, as a dropped connection would
  mkdir -p "$PIM_TMP/failbin"
  cat >"$PIM_TMP/failbin/scp" <<'EOF'
#!/bin/sh
# scp OPTS -- FILE... DEST: the first file only, then a failure, as a dropped connection
opts=
while [ "$1" != -- ]; do opts="$opts $1"; shift; done
shift
first=$1
for dest; do :; done
/usr/bin/scp $opts -- "$first" "$dest"
echo "scp: connection lost" >&2
exit 1
EOF
  chmod +x "$PIM_TMP/failbin/scp"
  PATH="$PIM_TMP/failbin:$PATH" run --separate-stderr pim-deploy "$B1" box
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"cannot copy $B1"* ]]
  [ -d "$R" ]
  [ -z "$(leftovers)" ]
  [ ! -e "$R/$B1" ]
}

@test "copies left by killed earlier runs are removed by the next deploy (this build's, and this machine's whose process is gone), which registers the build" {
  local me other="other-0123456789ab"
  me="h$(hostname | tr -d '\n' | sha256sum | cut -c1-8)"
  mkdir -p "$R/.tmp-dep-$B1-$me-999999" "$R/.tmp-dep-$other-$me-999999" "$R/.tmp-dep-$other-$me-$$" "$R/.tmp-dep-$other-h00000000-999999"
  head -c 1000 /dev/zero >"$R/.tmp-dep-$B1-$me-999999/web.qcow2"
  run --separate-stderr pim-deploy "$B1" box
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tuploaded\t'* ]]
  [ -f "$R/$B1/web.qcow2" ]
  # kept: a copy by a process of this machine that still runs, and one from another machine
  [ "$(leftovers | sort | tr '\n' ' ')" = "$R/.tmp-dep-$other-h00000000-999999 $R/.tmp-dep-$other-$me-$$ " ]
  rm -rf "$R"/.tmp-dep-*
}

@test "the remote store is private: pim's directories 0700, the build's files 0400, nothing for group or others" {
  [ -f "$R/$B1/web.qcow2" ]   # deployed by the test before
  [ "$(stat -c %a "$PIM_TMP/remote/pim" "$R" "$R/$B1" | tr '\n' ' ')" = "700 700 700 " ]
  [ "$(stat -c %a "$R/$B1/web.qcow2" "$R/$B1/build.json" "$R/$B1/build.log" | tr '\n' ' ')" = "400 400 400 " ]
  [ -z "$(find "$PIM_TMP/remote/pim" -perm /077)" ]
  # a store an older pim made world-readable is made private again by the next deploy
  rm -rf "$R/$B1"
  chmod 755 "$PIM_TMP/remote/pim" "$R"
  run pim-deploy "$B1" box
  [ "$status" -eq 0 ]
  [ -z "$(find "$PIM_TMP/remote/pim" -perm /077)" ]
  # and the remote pim sees it as a build
  XDG_DATA_HOME="$PIM_TMP/remote" run pim-build list -q
  [ "$output" = "$B1" ]
}
