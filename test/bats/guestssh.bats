#!/usr/bin/env bats
# pim-ssh and pim-cp against real guests from the test bed under TCG, with the
# system's OpenSSH client (ssh, scp) and the guest's dropbear (and OpenSSH's
# scp binary in the guest). One guest-full VM (its long name, $G, also tests the
# control socket's length limit) serves the tests in the middle; the test of a
# guest without an agent boots its own. No fixed sleeps: every wait is on a
# signal (pim-run --wait, a process ending), and bounded.

load helper
bats_require_minimum_version 1.5.0

# 48 characters: <runtime>/G.ssh/c-root fits the unix socket limit with the 17
# bytes ssh adds while it binds; a 16-character user does not
G=sshguest-0123456789-0123456789-0123456789-abcdef

setup_file() {
  pim_isolate
  need_testbed
  export PIM_SSH_KEY="$TESTBED/id_ed25519"
}

teardown_file() {
  pim_cleanup
}

sshdir() { echo "$XDG_RUNTIME_DIR/pim/$1.ssh"; }
port_of() { jq -r .ssh_port "$XDG_RUNTIME_DIR/pim/$1.json"; }
# the master's pid, from ssh -O check ("Master running (pid=N)"); empty when none
master_pid() { ssh -F "$(sshdir "$1")/config" -O check -- "$1" 2>&1 | sed -n 's/^Master running (pid=\([0-9]*\)).*/\1/p'; }

@test "the shared guest starts" {
  [ "${#G}" -eq 48 ]
  run pim-run "$TESTBED/guest-full.qcow2" --name "$G" --snapshot --mem 256M --cpus 1 --wait ssh --wait agent --wait-timeout 120
  [ "$status" -eq 0 ]
}

@test "pim-ssh: the host keys are pinned through the guest agent before the first connection" {
  run --separate-stderr pim-ssh "$G" -- true
  [ "$status" -eq 0 ]
  [ -z "$stderr" ]   # nothing said: no accept-new
  local d port
  d=$(sshdir "$G")
  port=$(port_of "$G")
  [ "$(stat -c %a "$d")" = 700 ]
  [ "$(stat -c %a "$d/config")" = 600 ]
  [ "$(stat -c %a "$d/known_hosts")" = 600 ]
  grep -qx '  StrictHostKeyChecking yes' "$d/config"
  grep -qx "  IdentityFile $TESTBED/id_ed25519" "$d/config"
  # dropbear's three host keys (read out of its key files through the agent), for [127.0.0.1]:PORT
  diff <(grep -v '^#' "$d/known_hosts" | sort) <(awk -v p="[127.0.0.1]:$port" '{ print p, $1, $2 }' "$TESTBED/ssh_host_keys.pub" | sort)
}

@test "pim-ssh: a command's exit status, stdout and stderr apart, stdin passed on" {
  run --separate-stderr pim-ssh "$G" -- 'echo out; echo err >&2; exit 3'
  [ "$status" -eq 3 ]
  [ "$output" = out ]
  [ "$stderr" = err ]
  run pim-ssh "$G" -- exit 255   # the command's own 255 passes through (the connection is up)
  [ "$status" -eq 255 ]
  run pim-ssh "$G" -- tr a-z A-Z <<<"hello"
  [ "$output" = HELLO ]
  # the words go as ssh passes them: joined by the remote shell
  run pim-ssh "$G" -- echo a '  b'
  [ "$output" = "a b" ]
}

@test "pim-ssh: tar streams both ways, byte for byte, and stdout carries only the data" {
  local src="$PIM_TMP/tree" back="$PIM_TMP/back"
  mkdir -p "$src/sub" "$back"
  head -c 1000000 /dev/urandom >"$src/sub/blob"
  echo hello >"$src/hello"
  chmod 0751 "$src/sub"
  tar c -C "$src" . | pim-ssh "$G" -- 'mkdir -p /tmp/tree && tar x -C /tmp/tree'
  pim-ssh "$G" -- tar c -C /tmp/tree . | tar x -C "$back"
  diff -r "$src" "$back"
  [ "$(stat -c %a "$back/sub")" = 751 ]
  [ "$(pim-ssh "$G" -- sha256sum /tmp/tree/sub/blob | cut -d' ' -f1)" = "$(sha256sum <"$src/sub/blob" | cut -d' ' -f1)" ]
}

@test "pim-ssh: a second command goes over the cached master connection" {
  local d sock pid1 pid2
  d=$(sshdir "$G")
  sock="$d/c-root"
  [ -S "$sock" ]
  pid1=$(master_pid "$G")
  [ -n "$pid1" ]
  pim-ssh "$G" -- true
  pim-ssh "$G" -- true
  pid2=$(master_pid "$G")
  [ "$pid1" = "$pid2" ]
  # one TCP connection to the guest's port: the master's
  [ "$(ss -Htn state established "( dport = :$(port_of "$G") )" | wc -l)" -eq 1 ]
}

@test "pim-ssh --config: plain ssh -F and scp -O -F use it (and the same master)" {
  run pim-ssh --config "$G"
  [ "$status" -eq 0 ]
  [ "$output" = "$(sshdir "$G")/config" ]
  run ssh -F "$(pim-ssh --config "$G")" "$G" echo via plain ssh
  [ "$status" -eq 0 ]
  [ "$output" = "via plain ssh" ]
  echo scp-data >"$PIM_TMP/s1"
  scp -q -O -F "$(pim-ssh --config "$G")" "$PIM_TMP/s1" "$G:/tmp/s1"
  [ "$(pim-ssh "$G" -- cat /tmp/s1)" = scp-data ]
  run pim-ssh --config "$G" -- true
  [ "$status" -eq 64 ]
}

@test "pim-ssh: --user over the limit of the control socket's path is 73, before any connection" {
  run --separate-stderr pim-ssh "$G" --user abcdefghijklmnop -- true
  [ "$status" -eq 73 ]
  [[ "$stderr" == *"control socket path"*"limit"* ]]
  run --separate-stderr pim-ssh "$G" --user '../x' -- true
  [ "$status" -eq 64 ]
}

@test "pim-ssh: a key that SSH refuses is 77, one line; another user gets a master of its own" {
  ssh-keygen -q -t ed25519 -N '' -f "$PIM_TMP/other" </dev/null
  run --separate-stderr pim-ssh "$G" -i "$PIM_TMP/other" --user nobody -- true
  [ "$status" -eq 77 ]
  [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == *"refused nobody"* ]]
  [ ! -e "$(sshdir "$G")/c-nobody" ]
}

@test "pim-ssh: a guest whose host key changed is refused (65), and nothing is learnt from it" {
  local d kh
  d=$(sshdir "$G")
  kh="$d/known_hosts"
  cp "$kh" "$PIM_TMP/kh.good"
  ssh -F "$d/config" -O exit -- "$G" 2>/dev/null
  ssh-keygen -q -t ed25519 -N '' -f "$PIM_TMP/impostor" </dev/null
  # every pinned key becomes the impostor's: the guest's real key no longer matches
  { grep '^#' "$PIM_TMP/kh.good"; echo "[127.0.0.1]:$(port_of "$G") $(cut -d' ' -f1,2 "$PIM_TMP/impostor.pub")"; } >"$kh"
  cp "$kh" "$PIM_TMP/kh.bad"
  run --separate-stderr pim-ssh "$G" -- echo should-not-run
  [ "$status" -eq 65 ]
  [ -z "$output" ]
  [[ "$stderr" == *"host key that is not the one pinned"* ]]
  cmp "$kh" "$PIM_TMP/kh.bad"
  [ ! -S "$d/c-root" ]
  # plain ssh with the config is refused too
  run ssh -F "$d/config" "$G" echo should-not-run
  [ "$status" -eq 255 ]
  [ -z "$(grep -v 'HOST IDENTIFICATION\|@@@\|^$' <<<"$output" | grep should-not-run)" ]
  cp "$PIM_TMP/kh.good" "$kh"
  run pim-ssh "$G" -- echo back
  [ "$output" = back ]
}

@test "pim-cp: up and down, several sources, -r, modes kept" {
  local w="$PIM_TMP/cp"
  mkdir -p "$w/dir/deep" "$w/back"
  printf 'one\n' >"$w/a"; chmod 0640 "$w/a"
  printf 'two\n' >"$w/b"; chmod 0755 "$w/b"
  head -c 300000 /dev/urandom >"$w/dir/deep/blob"; chmod 0600 "$w/dir/deep/blob"
  chmod 0750 "$w/dir"
  pim-ssh "$G" -- mkdir -p /tmp/cp
  run --separate-stderr pim-cp "$w/a" "$w/b" "$G:/tmp/cp/"
  [ "$status" -eq 0 ]
  [ -z "$output" ] && [ -z "$stderr" ]
  [ "$(pim-ssh "$G" -- stat -c %a /tmp/cp/a /tmp/cp/b | tr '\n' ' ')" = "640 755 " ]
  pim-cp -r "$w/dir" "$G:/tmp/cp/dir"
  [ "$(pim-ssh "$G" -- stat -c %a /tmp/cp/dir /tmp/cp/dir/deep/blob | tr '\n' ' ')" = "750 600 " ]
  # down: a file to a new name, a tree into a directory
  pim-cp "$G:/tmp/cp/a" "$w/back/a-copy"
  cmp "$w/a" "$w/back/a-copy"
  [ "$(stat -c %a "$w/back/a-copy")" = 640 ]
  pim-cp -r "$G:/tmp/cp/dir" "$w/back/"
  diff -r "$w/dir" "$w/back/dir"
  [ "$(stat -c %a "$w/back/dir")" = 750 ]
  [ "$(stat -c %a "$w/back/dir/deep/blob")" = 600 ]
  # ./x:y is a local path, as with scp
  (cd "$w" && echo colon >'x:y' && pim-cp ./x:y "$G:/tmp/cp/colon")
  [ "$(pim-ssh "$G" -- cat /tmp/cp/colon)" = colon ]
}

@test "pim-cp: a missing local source is 66 before anything runs, a missing remote source 66, a directory without -r 64" {
  run --separate-stderr pim-cp "$PIM_TMP/nope" "$G:/tmp/"
  [ "$status" -eq 66 ]
  [[ "$stderr" == *"no such file or directory: $PIM_TMP/nope"* ]]
  run --separate-stderr pim-cp "$G:/tmp/nope" "$PIM_TMP/"
  [ "$status" -eq 66 ]
  [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == *"no such file or directory in $G"*"/tmp/nope"* ]]
  [ ! -e "$PIM_TMP/nope" ]
  mkdir -p "$PIM_TMP/adir"
  run pim-cp "$PIM_TMP/adir" "$G:/tmp/"
  [ "$status" -eq 64 ]
  run pim-cp "$PIM_TMP/adir/../x:y" "$G:/tmp/"   # local (a '/' before the ':'), and missing
  [ "$status" -eq 66 ]
  run --separate-stderr pim-cp "$PIM_TMP/s1" "$G:/nope/dir/x"
  [ "$status" -eq 73 ]
}

@test "pim-cp through a tar stream (a guest without scp; PIM_CP_VIA=tar): the same copies, modes and errors" {
  local w="$PIM_TMP/cpt"
  mkdir -p "$w/dir/deep" "$w/back"
  printf 'one\n' >"$w/a"; chmod 0640 "$w/a"
  head -c 200000 /dev/urandom >"$w/dir/deep/blob"; chmod 0604 "$w/dir/deep/blob"; chmod 0710 "$w/dir"
  export PIM_CP_VIA=tar
  pim-ssh "$G" -- mkdir -p /tmp/cpt
  pim-cp "$w/a" "$G:/tmp/cpt/"
  pim-cp "$w/a" "$G:/tmp/cpt/renamed"
  pim-cp -r "$w/dir" "$G:/tmp/cpt/dir"
  [ "$(pim-ssh "$G" -- stat -c %a /tmp/cpt/a /tmp/cpt/renamed /tmp/cpt/dir /tmp/cpt/dir/deep/blob | tr '\n' ' ')" = "640 640 710 604 " ]
  pim-cp "$G:/tmp/cpt/renamed" "$w/back/a2"
  cmp "$w/a" "$w/back/a2"
  [ "$(stat -c %a "$w/back/a2")" = 640 ]
  pim-cp -r "$G:/tmp/cpt/dir" "$w/back/"
  diff -r "$w/dir" "$w/back/dir"
  [ "$(stat -c %a "$w/back/dir/deep/blob")" = 604 ]
  run --separate-stderr pim-cp "$G:/tmp/nope" "$w/back/"
  [ "$status" -eq 66 ]
  [[ "$stderr" == *"/tmp/nope"* ]]
  run pim-cp "$w/a" "$G:/nope/dir/x"
  [ "$status" -eq 73 ]
}

@test "pim-cp between two VMs: a tar stream through pim, modes kept; a missing source 66, a directory without -r 64, an unwritable destination 73" {
  run pim-run "$TESTBED/guest-full.qcow2" --name peer --snapshot --mem 256M --cpus 1 --wait ssh --wait agent --wait-timeout 120
  [ "$status" -eq 0 ]
  pim-ssh "$G" -- 'mkdir -p /tmp/x/d && echo across >/tmp/x/f && chmod 0604 /tmp/x/f && echo deep >/tmp/x/d/g'
  pim-ssh peer -- mkdir -p /tmp/in
  pim-cp "$G:/tmp/x/f" peer:/tmp/in/
  pim-cp "$G:/tmp/x/f" peer:/tmp/in/renamed
  pim-cp -r "$G:/tmp/x/d" peer:/tmp/in/
  [ "$(pim-ssh peer -- cat /tmp/in/f /tmp/in/renamed /tmp/in/d/g | tr '\n' ' ')" = "across across deep " ]
  [ "$(pim-ssh peer -- stat -c %a /tmp/in/f /tmp/in/renamed | tr '\n' ' ')" = "604 604 " ]
  run --separate-stderr pim-cp "$G:/tmp/x/nope" peer:/tmp/in/
  [ "$status" -eq 66 ]
  [[ "$stderr" == *"/tmp/x/nope"* ]]
  run --separate-stderr pim-cp "$G:/tmp/x/d" peer:/tmp/in/
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"/tmp/x/d is a directory: give -r"* ]]
  run pim-cp "$G:/tmp/x/f" peer:/nope/dir/x
  [ "$status" -eq 73 ]
  pim-stop peer
}

@test "pim-stop closes the master; then pim-ssh and pim-cp are 69, and the VM's ssh files are gone" {
  local d pid
  d=$(sshdir "$G")
  pim-ssh "$G" -- true
  pid=$(master_pid "$G")
  [ -n "$pid" ]
  run pim-stop "$G" --timeout 20
  [ "$status" -eq 0 ]
  for _ in $(seq 50); do pid_gone "$pid" && break; sleep 0.1; done
  pid_gone "$pid"
  [ ! -e "$d" ]
  run --separate-stderr pim-ssh "$G" -- true
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"is not running"* ]]
  run pim-cp "$PIM_TMP/s1" "$G:/tmp/"
  [ "$status" -eq 69 ]
  run pim-ssh --config "$G"
  [ "$status" -eq 69 ]
}

@test "a guest without a guest agent: accept-new, said once; the key ssh took is kept" {
  boot_guest noagent na
  run --separate-stderr pim-ssh na -- echo first
  [ "$status" -eq 0 ]
  [ "$output" = first ]
  [[ "$stderr" == *"accept-new"* ]]
  grep -qx '  StrictHostKeyChecking accept-new' "$(sshdir na)/config"
  grep -q "^\[127.0.0.1\]:$(port_of na) ssh-" "$(sshdir na)/known_hosts"
  run --separate-stderr pim-ssh na -- echo second
  [ "$output" = second ]
  [ -z "$stderr" ]
  pim-stop na --force >/dev/null
}
