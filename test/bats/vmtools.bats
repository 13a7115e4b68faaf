#!/usr/bin/env bats
# pim-wait (and pim-run --wait), port forwards (pim-run --forward, pim-forward),
# pim-exec and pim-ctl against real guests from the test bed, under TCG.
# guest-full runs qemu-ga, dropbear and busybox; guest-bare has no agent.
# One guest-full VM ("vt") serves the tests in the middle; the tests that need
# a start of their own boot and stop their own. No fixed sleeps: every wait is
# on a signal (pim-wait, a console line, a process ending), and bounded.

load helper
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
  need_testbed
}

teardown_file() {
  pim_cleanup
}

# a free TCP port on 127.0.0.1 (the kernel picks it)
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# first_line_of_http PORT: GET / through a forward, bounded
http_get() {
  curl -s --max-time 10 "http://127.0.0.1:$1/"
}

# the guest's UDP "NoPorts" counter: datagrams that reached its UDP layer on a port nobody listens on
udp_noports() {
  pim-exec vt -- cat /proc/net/snmp | awk '/^Udp: [0-9]/ { print $3 }'
}

# QEMU's own list of vt's forwards (HMP info usernet): PROTO SRC PORT GUESTPORT
hostfwds() {
  pim-qmp vt human-monitor-command '{"command-line":"info usernet"}' | jq -r . | tr -d '\r' |
    awk '$1 ~ /HOST_FORWARD/ { sub(/\[.*/, "", $1); print $1, $3, $4, $6 }'
}

# ssh_banner PORT: the first line a server sends on PORT
ssh_banner() {
  python3 -c 'import socket, sys; s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5); print(s.recv(64).decode("latin1").splitlines()[0])' "$1"
}

@test "pim-run --wait agent --wait ssh --wait console: returns only once each answers, and says so" {
  run --separate-stderr pim-run "$TESTBED/guest-full.qcow2" --name w1 --snapshot --mem 256M --cpus 1 \
    --wait agent --wait ssh --wait 'console:pim-testbed ready' --wait-timeout 120
  [ "$status" -eq 0 ]
  [ "$output" = w1 ]
  [[ "$stderr" == *"w1: agent up after "*"(qemu-ga 7."* ]]
  [[ "$stderr" == *"w1: ssh up after "*"(SSH-2.0-dropbear"* ]]
  [[ "$stderr" == *"w1: console:pim-testbed ready up after "*"(pim-testbed ready)"* ]]
  # up means up: the agent answers a short query and sshd sends its banner at once
  run pim-ga w1 guest-ping --timeout 2
  [ "$status" -eq 0 ]
  run ssh_banner "$(jq -r .ssh_port "$XDG_RUNTIME_DIR/pim/w1.json")"
  [[ "$output" == SSH-2.0-dropbear* ]]
  grep -q 'pim-testbed ready' "$XDG_RUNTIME_DIR/pim/w1.log"
  # pim-wait on a VM that is up answers at once, one line per --for
  run --separate-stderr pim-wait w1 --for ssh --for agent --for 'console:^pim-testbed ready$' --timeout 10
  [ "$status" -eq 0 ]
  [ "${#lines[@]}" -eq 3 ]
  IFS=$'\t' read -r name what secs seen <<<"${lines[0]}"
  [ "$name" = w1 ] && [ "$what" = ssh ] && [[ "$seen" == SSH-2.0-* ]]
  [ "$(cut -f2 <<<"${lines[2]}")" = 'console:^pim-testbed ready$' ]
  run pim-wait w1 --json
  [ "$(jq -r .for <<<"$output")" = agent ]
  [[ "$(jq -r .seen <<<"$output")" == "qemu-ga 7."* ]]
  pim-stop w1 --timeout 20 >/dev/null
}

@test "--wait and pim-wait time out with 75 and what was last seen; the VM stopping meanwhile is 69; reboot needs the agent" {
  local t0 t1
  t0=$(date +%s)
  run --separate-stderr pim-run "$TESTBED/guest-bare.qcow2" --name b1 --snapshot --mem 256M --cpus 1 --wait agent --wait-timeout 8
  t1=$(date +%s)
  [ "$status" -eq 75 ]
  [ "$output" = b1 ]   # the VM started: its name is printed first
  [[ "$stderr" == *"b1: agent not up within 8 s; last seen: no reply to guest-sync from the guest agent"* ]]
  [[ "$stderr" == *"the guest never opened the agent's virtio port"* ]]
  [[ "$stderr" == *"the VM keeps running: pim-stop b1"* ]]
  [ $((t1 - t0)) -lt "$(slow 30)" ]
  run pim-status b1
  [ "$status" -eq 0 ]
  # guest-bare runs dropbear: ssh comes, the agent never does
  run pim-wait b1 --for ssh --timeout 120
  [ "$status" -eq 0 ]
  run --separate-stderr pim-wait b1 --for 'console:no such line' --timeout 2
  [ "$status" -eq 75 ]
  [[ "$stderr" == *'last seen: console: "'* ]]
  # a gentle reboot needs the agent: 69 with the hard way named, and the VM untouched
  run --separate-stderr pim-ctl b1 reboot --timeout 10
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"pim-ctl b1 reset resets it hard"* ]]
  run --separate-stderr pim-ctl b1 reset --wait 'console:pim-testbed ready' --wait-timeout 120
  [ "$status" -eq 0 ]
  [ "$output" = $'b1\trunning' ]
  [ "$(grep -c 'pim-testbed ready' "$XDG_RUNTIME_DIR/pim/b1.log")" -ge 2 ]
  # the VM stops while pim-wait waits: 69 soon after, not at the timeout
  pim-wait b1 --for agent --timeout 120 2>"$PIM_TMP/wait.err" &
  local w=$! n=0
  # pim-wait is waiting once it holds the agent's socket (QEMU shows the client in query-chardev)
  until pim-qmp b1 query-chardev | jq -e '.[] | select(.label == "ga0") | .filename | startswith("disconnected") | not' >/dev/null; do
    n=$((n + 1)); [ "$n" -lt "$(slow 200)" ] || { echo "pim-wait never connected"; false; }
  done
  pim-stop b1 --force --timeout 10 >/dev/null
  t0=$(date +%s)
  local st=0
  wait "$w" || st=$?
  t1=$(date +%s)
  [ "$st" -eq 69 ]
  grep -q 'b1 stopped while waiting for agent' "$PIM_TMP/wait.err"
  [ $((t1 - t0)) -lt "$(slow 10)" ]
}

@test "the shared guest: pim-run --forward tcp and udp, waited for over SSH" {
  HTTP_PORT=$(free_port)
  UDP_PORT=$(free_port)
  echo "$HTTP_PORT $UDP_PORT" >"$PIM_TMP/ports"
  run --separate-stderr pim-run "$TESTBED/guest-full.qcow2" --name vt --snapshot --mem 256M --cpus 1 \
    --forward "$HTTP_PORT:8080" --forward "udp:$UDP_PORT:9999" --wait ssh --wait agent
  [ "$status" -eq 0 ]
  [ "$output" = vt ]
  run jq -c .forwards "$XDG_RUNTIME_DIR/pim/vt.json"
  [ "$output" = "[{\"proto\":\"tcp\",\"bind\":\"127.0.0.1\",\"host\":$HTTP_PORT,\"guest\":8080},{\"proto\":\"udp\",\"bind\":\"127.0.0.1\",\"host\":$UDP_PORT,\"guest\":9999}]" ]
  run pim-forward vt list
  [ "${lines[0]}" = "vt	tcp	127.0.0.1	$(jq -r .ssh_port "$XDG_RUNTIME_DIR/pim/vt.json")	22" ]
  [ "${lines[1]}" = "vt	tcp	127.0.0.1	$HTTP_PORT	8080" ]
  [ "${lines[2]}" = "vt	udp	127.0.0.1	$UDP_PORT	9999" ]
  [ "$(hostfwds | grep -c "^UDP 127.0.0.1 $UDP_PORT 9999$")" -eq 1 ]
  [ "$(hostfwds | grep -c "^TCP 127.0.0.1 $HTTP_PORT 8080$")" -eq 1 ]
}

@test "pim-exec: stdout and stderr apart, the exit status, 128+N for a signal, 127, no network needed" {
  run --separate-stderr pim-exec vt -- sh -c 'echo to-out; echo to-err >&2; exit 3'
  [ "$status" -eq 3 ]
  [ "$output" = to-out ]
  [ "$stderr" = to-err ]
  run pim-exec vt -- true
  [ "$status" -eq 0 ]
  run pim-exec vt -- sh -c 'kill -TERM $$'
  [ "$status" -eq 143 ]
  run pim-exec vt -- sh -c 'kill -KILL $$'
  [ "$status" -eq 137 ]
  run -127 --separate-stderr pim-exec vt -- /no/such/program
  [ "$status" -eq 127 ]
  [[ "$stderr" == *'cannot run "/no/such/program" in the guest: not found'* ]]
  # through the agent, not the network: it works with the guest's network down
  run pim-exec vt -- sh -c 'ip link set eth0 down && cat /sys/class/net/eth0/operstate; ip link set eth0 up; ip route add default via 10.0.2.2 2>/dev/null; true'
  [ "$status" -eq 0 ]
  [ "$output" = down ]
  # bytes come back as they were (base64 both ways)
  [ "$(pim-exec vt -- printf 'a\000b\377c' | od -An -tx1 | tr -d ' \n')" = 610062ff63 ]
  # usage
  run pim-exec vt
  [ "$status" -eq 64 ]
  run pim-exec vt uname
  [ "$status" -eq 64 ]
}

@test "pim-exec forwards stdin when it is not a terminal (text, and 1 MiB of binary); --no-stdin sends none" {
  run pim-exec vt -- tr a-z A-Z <<<"hello guest"
  [ "$status" -eq 0 ]
  [ "$output" = "HELLO GUEST" ]
  head -c 1048576 /dev/urandom >"$PIM_TMP/blob"
  local want got
  want=$(sha256sum <"$PIM_TMP/blob" | cut -d' ' -f1)
  got=$(pim-exec vt -- sha256sum <"$PIM_TMP/blob" | cut -d' ' -f1)
  [ "$got" = "$want" ]
  got=$(pim-exec vt -- cat <"$PIM_TMP/blob" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$want" ]
  run pim-exec vt --no-stdin -- wc -c <"$PIM_TMP/blob"
  [ "$(tr -d ' ' <<<"$output")" = 0 ]
  # over the limit: 65, and nothing ran
  head -c $((16 * 1024 * 1024 + 1)) /dev/zero >"$PIM_TMP/big"
  run --separate-stderr pim-exec vt -- wc -c <"$PIM_TMP/big"
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"stdin is over 16 MiB"* ]]
}

@test "pim-exec --timeout: 75, and the command is killed in the guest" {
  local t0 t1
  t0=$(date +%s)
  run --separate-stderr pim-exec vt --timeout 2 -- sleep 7777
  t1=$(date +%s)
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"did not end within 2 s; sent SIGKILL to it (pid "*"in the guest) with the guest's kill; it ended (status 137)"* ]]
  [ $((t1 - t0)) -lt "$(slow 10)" ]
  run pim-exec vt -- sh -c 'ps | grep -v grep | grep -c "sleep 7777"'
  [ "$output" = 0 ]
  # SIGTERM to pim-exec: the same signal to the command in the guest, and 143
  pim-exec vt -- sleep 6666 2>"$PIM_TMP/term.err" &
  local x=$! n=0
  until pim-exec vt -- sh -c 'ps | grep -v grep | grep -q "sleep 6666"'; do
    n=$((n + 1)); [ "$n" -lt "$(slow 100)" ] || { echo "the command never started"; false; }
  done
  kill -TERM "$x"
  local st=0
  wait "$x" || st=$?
  [ "$st" -eq 143 ]
  grep -q 'sent SIGTERM to it (pid .* in the guest) with the guest.s kill; it ended (status 143)' "$PIM_TMP/term.err"
  run pim-exec vt -- sh -c 'ps | grep -v grep | grep -c "sleep 6666"'
  [ "$output" = 0 ]
  # a long command does not keep the agent from others meanwhile (it holds the
  # socket only for its first quick polls)
  pim-exec vt -- sleep 8 &
  local e=$!
  run pim-ga vt guest-ping --timeout "$(slow 10)"
  [ "$status" -eq 0 ]
  wait "$e"
}

@test "port forwards reach a listener started through pim-exec; pim-forward add, list, rm on the running VM" {
  read -r HTTP_PORT UDP_PORT <"$PIM_TMP/ports"
  run pim-exec vt -- sh -c 'mkdir -p /tmp/www && echo hello-from-guest >/tmp/www/index.html && httpd -p 8080 -h /tmp/www'
  [ "$status" -eq 0 ]
  run http_get "$HTTP_PORT"
  [ "$output" = hello-from-guest ]
  # add: two at once, one on every address
  local p2 p3
  p2=$(free_port)
  p3=$(free_port)
  run --separate-stderr pim-forward vt add "$p2:8080" "0.0.0.0:$p3:8080"
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  run http_get "$p2"
  [ "$output" = hello-from-guest ]
  run http_get "$p3"
  [ "$output" = hello-from-guest ]
  [ "$(jq '.forwards | length' "$XDG_RUNTIME_DIR/pim/vt.json")" -eq 4 ]
  run pim-forward vt list --json
  [ "$(jq -s -c "map(select(.host == $p3))[0] | [.proto, .bind, .guest, .ssh]" <<<"$output")" = '["tcp","0.0.0.0",8080,false]' ]
  # QEMU has the rules (its own view, not pim's record)
  [ "$(hostfwds | grep -c "^TCP 127.0.0.1 $p2 8080$")" -eq 1 ]
  [ "$(hostfwds | grep -c "^TCP \* $p3 8080$")" -eq 1 ]
  # rm by host port
  run pim-forward vt rm "$p2"
  [ "$status" -eq 0 ]
  run curl -s --max-time 5 "http://127.0.0.1:$p2/"
  [ "$status" -ne 0 ]
  [ "$(hostfwds | grep -c " $p2 ")" -eq 0 ]
  [ "$(jq '[.forwards[].host] | index('"$p2"')' "$XDG_RUNTIME_DIR/pim/vt.json")" = null ]
  run pim-forward vt rm "$p3:8080"
  [ "$status" -eq 0 ]
  [ "$(jq '.forwards | length' "$XDG_RUNTIME_DIR/pim/vt.json")" -eq 2 ]
  # not there: 66; the SSH forward stays: 64; a clash: 64
  run --separate-stderr pim-forward vt rm "$p2"
  [ "$status" -eq 66 ]
  run --separate-stderr pim-forward vt rm "$(jq -r .ssh_port "$XDG_RUNTIME_DIR/pim/vt.json")"
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"SSH forward"* ]]
  run --separate-stderr pim-forward vt add "0.0.0.0:$HTTP_PORT:80"
  [ "$status" -eq 64 ]
  [[ "$stderr" == *clashes* ]]
  run pim-forward vt add 8080
  [ "$status" -eq 64 ]
  run pim-forward vt frob 1:2
  [ "$status" -eq 64 ]
}

@test "a host port held by another program: pim-forward add is 75, pim-run --forward is 75 before QEMU starts" {
  local port
  port=$(free_port)
  mkfifo "$PIM_TMP/held"
  python3 -c 'import socket, sys, time; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); print("listening", flush=True); time.sleep(120)' "$port" >"$PIM_TMP/held" &
  local holder=$!
  read -r -t 20 _ <"$PIM_TMP/held"   # it says when it listens
  run --separate-stderr pim-forward vt add "$port:80"
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"tcp port $port on 127.0.0.1 is in use"* ]]
  [ "$(jq '.forwards | length' "$XDG_RUNTIME_DIR/pim/vt.json")" -eq 2 ]
  run --separate-stderr pim-run "$TESTBED/guest-full.qcow2" --name busy --snapshot --mem 256M --cpus 1 --forward "$port:80"
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"is in use"* ]]
  [ ! -e "$XDG_RUNTIME_DIR/pim/busy.pid" ]
  kill "$holder"
  wait "$holder" 2>/dev/null || true
  # bridged VMs have no forwards: refused before anything starts, with why
  run --separate-stderr pim-run "$TESTBED/guest-full.qcow2" --name br --bridged --forward 8080:80
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"--forward is for user networking"* ]]
  run --separate-stderr pim-run "$TESTBED/guest-full.qcow2" --name br --forward 8080
  [ "$status" -eq 64 ]
  run --separate-stderr pim-run "$TESTBED/guest-full.qcow2" --name br --wait http
  [ "$status" -eq 64 ]
  run --separate-stderr pim-run "$TESTBED/guest-full.qcow2" --name br --bridged --wait ssh
  [ "$status" -eq 64 ]
  [ ! -e "$XDG_RUNTIME_DIR/pim/br.pid" ]
}

@test "a udp forward delivers datagrams to the guest" {
  read -r HTTP_PORT UDP_PORT <"$PIM_TMP/ports"
  local before after n=0
  before=$(udp_noports)
  # nothing listens on the guest's port 9999: each datagram that arrives is counted as NoPorts
  while :; do
    python3 -c 'import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", int(sys.argv[1])))' "$UDP_PORT"
    after=$(udp_noports)
    [ "$after" -gt "$before" ] && break
    n=$((n + 1))
    [ "$n" -lt 20 ] || { echo "no datagram arrived: $before -> $after"; false; }
  done
}

@test "pim-ctl: pause (pim-status says paused), again is 0 with a note, resume, and the agent explains a paused VM" {
  run --separate-stderr pim-ctl vt pause
  [ "$status" -eq 0 ]
  [ "$output" = $'vt\tpaused' ]
  run pim-status vt
  [ "$status" -eq 1 ]
  [[ "$output" == vt$'\t'paused$'\t'* ]]
  run --separate-stderr pim-ctl vt pause
  [ "$status" -eq 0 ]
  [ "$output" = $'vt\tpaused' ]
  [ "$stderr" = "pim-ctl: vt is already paused" ]
  # the agent cannot answer a paused VM: pim-exec says so at once, not after its
  # own 10 s wait for the agent (and --timeout, the command's bound, is not it)
  SECONDS=0
  run --separate-stderr pim-exec vt --timeout 5 -- true
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"status paused"* ]]
  [ "$SECONDS" -lt "$(slow 9)" ] || { echo "pim-exec on a paused VM took ${SECONDS} s"; false; }
  run --separate-stderr pim-wait vt --for agent --timeout 2
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"status paused: pim-ctl vt resume"* ]]
  run pim-ctl vt pause --wait agent
  [ "$status" -eq 64 ]
  run pim-ctl vt resume --json
  [ "$status" -eq 0 ]
  [ "$(jq -r .state <<<"$output")" = running ]
  run --separate-stderr pim-ctl vt resume
  [ "$output" = $'vt\trunning' ]
  [ "$stderr" = "pim-ctl: vt is already running" ]
  run pim-exec vt -- true
  [ "$status" -eq 0 ]
  run pim-ctl vt frob
  [ "$status" -eq 64 ]
  run pim-ctl nosuch pause
  [ "$status" -eq 69 ]
}

@test "pim-ctl reboot asks the guest (it runs its shutdown), reset does not; both wait for the new boot" {
  local log="$XDG_RUNTIME_DIR/pim/vt.log" n0
  n0=$(grep -c 'pim-testbed ready' "$log")
  run --separate-stderr pim-ctl vt reboot --wait 'console:pim-testbed ready' --wait agent --wait-timeout 120
  [ "$status" -eq 0 ]
  [ "$output" = $'vt\trunning' ]
  # the guest's own shutdown ran (the test bed's /sbin/shutdown prints its arguments), then a new boot
  grep -q 'pim-testbed: shutdown .*-r' "$log"
  [ "$(grep -c 'pim-testbed ready' "$log")" -eq $((n0 + 1)) ]
  [[ "$stderr" == *"vt: agent up after"* ]]
  run pim-ga vt guest-ping --timeout 2
  [ "$status" -eq 0 ]
  local shut
  shut=$(grep -c 'pim-testbed: shutdown' "$log")
  run --separate-stderr pim-ctl vt reset --wait ssh --wait-timeout 120
  [ "$status" -eq 0 ]
  [ "$output" = $'vt\trunning' ]
  [ "$(grep -c 'pim-testbed: shutdown' "$log")" -eq "$shut" ]   # no shutdown in the guest
  [[ "$stderr" == *"vt: ssh up after"* ]]
  # a reset while paused stays paused (prelaunch), and resume starts it
  pim-ctl vt pause >/dev/null
  run --separate-stderr pim-ctl vt reset
  [ "$status" -eq 0 ]
  [ "$output" = $'vt\tprelaunch' ]
  [[ "$stderr" == *"stays paused after the reset"* ]]
  run --separate-stderr pim-ctl vt resume --wait agent
  [ "$status" -eq 0 ]
  [ "$output" = $'vt\trunning' ]
}

@test "completions: VM names, the actions, what --wait and --for take" {
  run pim-ctl complete -- vt ''
  [[ "$output" == *$'pause\t'*$'resume\t'*$'reboot\t'*$'reset\t'* ]]
  run pim-forward complete -- vt ''
  [[ "$output" == *$'add\t'*$'rm\t'*$'list\t'* ]]
  run pim-wait complete -- vt --for ''
  [[ "$output" == *$'agent\t'*$'ssh\t'*$'console:\t'* ]]
  run pim-run complete -- dev --wait ''
  [[ "$output" == *$'ssh\t'* ]]
  local c
  for c in pim-wait pim-exec pim-ctl pim-forward; do
    run "$c" complete -- ''
    [[ "$output" == *$'vt\tVM'* ]] || { echo "$c: $output"; false; }
  done
}

@test "the shared guest stops" {
  run pim-stop vt --timeout 20
  [ "$status" -eq 0 ]
}
