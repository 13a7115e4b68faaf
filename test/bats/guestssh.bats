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

# craft_tar FILE JSON: a tar stream as a hostile guest sends it, made by Python's
# tarfile with no checks: [[name, file|dir|sym|hard, data or link target], ...]
craft_tar() {
  python3 -c '
import io, json, sys, tarfile
t = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.GNU_FORMAT)
for m in json.loads(sys.argv[1]):
    name, kind, data = (m + [""])[:3]
    i = tarfile.TarInfo(name)
    i.mode = 0o755 if kind == "dir" else 0o644
    if kind == "file":
        b = data.encode(); i.size = len(b); t.addfile(i, io.BytesIO(b)); continue
    i.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[kind]
    i.linkname = data
    t.addfile(i)
t.close()' "$2" >"$1"
}
# hostile_tar VM FILE: from now on the guest's user "evil" (root's uid, home and key, but
# a login shell of its own) answers pim-cp's `tar c` with FILE's bytes, whatever was asked
# for; every other command runs as usual. (busybox sh runs its own tar applet before any
# tar on PATH: the login shell is where a guest can answer as it likes.)
hostile_tar() {
  pim-ssh "$1" -- 'cat >/tmp/evil.tar && grep -q ^evil: /etc/passwd || {
    printf "%s\n" "#!/bin/sh" "case \"\$2\" in *\"exec tar c\"*) exec cat /tmp/evil.tar;; esac" "exec /bin/sh \"\$@\"" >/tmp/evilsh &&
    chmod 755 /tmp/evilsh && echo evil:x:0:0:evil:/root:/tmp/evilsh >>/etc/passwd &&
    { [ -f /etc/shells ] || echo /bin/sh >/etc/shells; } && echo /tmp/evilsh >>/etc/shells; }' <"$2"
}

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

@test "pim-cp through a tar stream on a terminal: the bytes and the rate live on stderr, then a line with the total; a pipe gets none" {
  local w="$PIM_TMP/cpm"
  mkdir -p "$w/tree/sub" "$w/back" "$w/back2"
  head -c 3000000 /dev/urandom >"$w/tree/sub/big"
  export PIM_CP_VIA=tar
  # up and down, each in a pseudo-terminal (stdin, stdout and stderr), as a person runs it
  python3 "$REPO/test/lifecycle/pty-capture.py" pim-cp -r "$w/tree" "$G:/tmp/cpm-tree" >"$PIM_TMP/cpm.up"
  python3 "$REPO/test/lifecycle/pty-capture.py" pim-cp -r "$G:/tmp/cpm-tree" "$w/back/" >"$PIM_TMP/cpm.down"
  diff -r "$w/tree" "$w/back/cpm-tree"
  local f
  for f in up down; do
    cat -v "$PIM_TMP/cpm.$f"
    grep -q 'copying ' "$PIM_TMP/cpm.$f"                                       # the live line
    grep -qE ': 2\.[89] MiB in [0-9]+s, [0-9.]+ (B|KiB|MiB)/s' "$PIM_TMP/cpm.$f" # the line that stays
  done
  grep -qF "pim-cp: $w/tree -> $G:/tmp/cpm-tree: " "$PIM_TMP/cpm.up"
  grep -qF "pim-cp: $G:/tmp/cpm-tree -> $w/back/: " "$PIM_TMP/cpm.down"
  # in a pipe: nothing on stderr, nothing on stdout
  run --separate-stderr pim-cp -r "$G:/tmp/cpm-tree" "$w/back2/"
  [ "$status" -eq 0 ] && [ -z "$output" ] && [ -z "$stderr" ]
  diff -r "$w/tree" "$w/back2/cpm-tree"
}

@test "pim-cp from a hostile guest (tar stream): a link out, a member not asked for, .. and absolute names are refused (65); nothing lands outside DEST, nor in it" {
  export PIM_CP_VIA=tar
  local w="$PIM_TMP/hostile" out="$PIM_TMP/hostile-outside"
  mkdir -p "$w" "$out"
  pim-ssh "$G" -- 'mkdir -p /tmp/h/d && echo one >/tmp/h/one-file'
  # a link to a host directory, then a second copy that writes through it
  craft_tar "$PIM_TMP/e1.tar" '[["d","dir"],["d/EVIL","sym","'"$out"'"]]'
  hostile_tar "$G" "$PIM_TMP/e1.tar"
  run --separate-stderr pim-cp -r "evil@$G:/tmp/h/d" "$w/"
  [ "$status" -eq 65 ]
  [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == *'"d/EVIL" is a symbolic link'* ]]
  [ ! -e "$w/d" ] && [ ! -L "$w/d/EVIL" ]
  craft_tar "$PIM_TMP/e2.tar" '[["d","dir"],["d/EVIL","dir"],["d/EVIL/pwned","file","x"]]'
  hostile_tar "$G" "$PIM_TMP/e2.tar"
  run pim-cp -r "evil@$G:/tmp/h/d" "$w/"
  [ "$status" -eq 0 ]
  [ -f "$w/d/EVIL/pwned" ]   # inside DEST, where it belongs
  [ -z "$(ls -A "$out")" ]
  # a one-file copy whose stream also holds .ssh/authorized_keys
  rm -rf "${w:?}"/*
  craft_tar "$PIM_TMP/e3.tar" '[["one-file","file","one"],[".ssh","dir"],[".ssh/authorized_keys","file","ssh-ed25519 AAAA evil"]]'
  hostile_tar "$G" "$PIM_TMP/e3.tar"
  run --separate-stderr pim-cp "evil@$G:/tmp/h/one-file" "$w/"
  [ "$status" -eq 65 ]
  [[ "$stderr" == *'".ssh/": a name outside one-file'* ]]
  [ -z "$(ls -A "$w")" ]
  # .. and an absolute name
  craft_tar "$PIM_TMP/e4.tar" '[["d","dir"],["d/../../escaped","file","x"]]'
  hostile_tar "$G" "$PIM_TMP/e4.tar"
  run pim-cp -r "evil@$G:/tmp/h/d" "$w/"
  [ "$status" -eq 65 ]
  [ ! -e "$PIM_TMP/escaped" ] && [ -z "$(ls -A "$w")" ]
  craft_tar "$PIM_TMP/e5.tar" '[["d","dir"],["'"$out"'/abs","file","x"]]'
  hostile_tar "$G" "$PIM_TMP/e5.tar"
  run pim-cp -r "evil@$G:/tmp/h/d" "$w/"
  [ "$status" -eq 65 ]
  [ -z "$(ls -A "$out")" ] && [ -z "$(ls -A "$w")" ]
  # a hard link to a host file
  craft_tar "$PIM_TMP/e6.tar" '[["d","dir"],["d/h","hard","/etc/passwd"]]'
  hostile_tar "$G" "$PIM_TMP/e6.tar"
  run pim-cp -r "evil@$G:/tmp/h/d" "$w/"
  [ "$status" -eq 65 ]
  [ -z "$(ls -A "$w")" ]
}

@test "pim-cp through a tar stream takes a guest's symbolic links as scp -r does: the files they point to, never a link into the host" {
  export PIM_CP_VIA=tar
  local w="$PIM_TMP/links"
  mkdir -p "$w"
  pim-ssh "$G" -- 'mkdir -p /tmp/l/t && echo pointed-to >/tmp/l/target && ln -sf /tmp/l/target /tmp/l/t/to-file && ln -sf /etc /tmp/l/t/to-etc && ln -sf /tmp/l/target /tmp/l/alone'
  pim-cp -r "$G:/tmp/l/t" "$w/"
  [ -f "$w/t/to-file" ] && [ ! -L "$w/t/to-file" ]
  [ "$(cat "$w/t/to-file")" = pointed-to ]
  [ -d "$w/t/to-etc" ] && [ ! -L "$w/t/to-etc" ]
  [ -f "$w/t/to-etc/passwd" ]   # the guest's /etc/passwd, copied
  pim-cp "$G:/tmp/l/alone" "$w/alone"
  [ -f "$w/alone" ] && [ ! -L "$w/alone" ]
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
}

@test "pim-cp between two VMs from a hostile guest: a link, a member not asked for, .. are refused (65) and never reach the other guest" {
  pim-ssh "$G" -- 'mkdir -p /tmp/h/d && echo one >/tmp/h/one-file'
  pim-ssh peer -- 'rm -rf /tmp/in2 && mkdir -p /tmp/in2'
  craft_tar "$PIM_TMP/a1.tar" '[["d","dir"],["d/EVIL","sym","/root"]]'
  hostile_tar "$G" "$PIM_TMP/a1.tar"
  run --separate-stderr pim-cp -r "evil@$G:/tmp/h/d" peer:/tmp/in2/
  [ "$status" -eq 65 ]
  [[ "$stderr" == *'"d/EVIL" is a symbolic link'* ]]
  pim-ssh peer -- '[ ! -L /tmp/in2/d/EVIL ]'
  craft_tar "$PIM_TMP/a2.tar" '[["one-file","file","one"],[".ssh","dir"],[".ssh/authorized_keys","file","ssh-ed25519 AAAA evil"]]'
  hostile_tar "$G" "$PIM_TMP/a2.tar"
  run pim-cp "evil@$G:/tmp/h/one-file" peer:/tmp/in2/
  [ "$status" -eq 65 ]
  pim-ssh peer -- '[ ! -e /tmp/in2/.ssh ]'
  craft_tar "$PIM_TMP/a3.tar" '[["d","dir"],["d/../../escaped","file","x"]]'
  hostile_tar "$G" "$PIM_TMP/a3.tar"
  run pim-cp -r "evil@$G:/tmp/h/d" peer:/tmp/in2/
  [ "$status" -eq 65 ]
  pim-ssh peer -- '[ ! -e /escaped ] && [ ! -e /tmp/escaped ]'
  # an honest stream still goes across
  pim-cp "$G:/tmp/h/one-file" peer:/tmp/in2/
  [ "$(pim-ssh peer -- cat /tmp/in2/one-file)" = one ]
  pim-stop peer
}

@test "pim-ssh and pim-cp without ssh on PATH: the install hint (69), before any connection" {
  local bin="$PIM_TMP/nossh"
  mkdir -p "$bin"
  ln -sf "$(command -v node)" "$bin/node"
  # another user: no master is up for it, so the old order (master first) would have tried one
  run --separate-stderr env PATH="$REPO/dist/bin:$bin" pim-ssh "$G" --user nosshuser -- true
  [ "$status" -eq 69 ]
  [ "${#stderr_lines[@]}" -eq 1 ]
  [[ "$stderr" == *"ssh was not found on PATH"*"openssh-client"* ]]
  [ ! -e "$(sshdir "$G")/c-nosshuser" ]
  echo x >"$PIM_TMP/nossh.txt"
  run --separate-stderr env PATH="$REPO/dist/bin:$bin" pim-cp --user nosshuser "$PIM_TMP/nossh.txt" "$G:/tmp/"
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"ssh was not found on PATH"*"openssh-client"* ]]
  # scp missing, ssh there: pim-cp says so (unless it copies with tar)
  ln -sf "$(command -v ssh)" "$bin/ssh"
  run --separate-stderr env PATH="$REPO/dist/bin:$bin" pim-cp "$PIM_TMP/nossh.txt" "$G:/tmp/"
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"scp was not found on PATH"* ]]
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
