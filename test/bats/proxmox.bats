#!/usr/bin/env bats
# pim-deploy to Proxmox VE, against a stand-in: Proxmox cannot run here, so the
# client talks to test/fixtures/pve/replay.mjs, a real HTTPS server (a certificate
# made here by openssl, pinned by its fingerprint) that replays a transcript of
# PVE API requests and answers (test/fixtures/pve/*.json, written by make.mjs there
# after PVE's own sources, each naming its PVE version and the files and commits it
# follows; not recorded from a real PVE) in order, and answers 599 to anything
# else. Each test checks the server's log: every request matched (method, path,
# the exact form or multipart fields, the token) and the transcript used up.
load helper
load deploy
load libvirt

setup_file() {
  pim_isolate
  command -v openssl >/dev/null || skip "openssl is not installed"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
    -keyout "$PIM_TMP/key.pem" -out "$PIM_TMP/cert.pem" 2>/dev/null
  qemu-img create -q -f qcow2 "$PIM_TMP/web.qcow2" 64M
  qemu-img create -q -f qcow2 "$PIM_TMP/two.qcow2" 32M
  B1=$(register web one "$PIM_TMP/web.qcow2")
  B2=$(register web two "$PIM_TMP/two.qcow2")
  printf 'B1=%s\nB2=%s\n' "$B1" "$B2" >"$PIM_TMP/builds"
  # a PVE node's SSH for PVE before 8.4: the test's sshd as host pve-node, and a stand-in qm
  # that logs its argv and answers qm disk import as PVE 8.3 does (qemu-server 8.2.7+,
  # PVE/CLI/qm.pm: "$drive_id: successfully imported disk '$vm_conf->{$drive_id}'")
  sshd_up "$PIM_TMP"
  cat >>"$PIM_TMP/ssh/config" <<END
Host pve-node
  HostName 127.0.0.1
  Port $SSHD_PORT
  UserKnownHostsFile $PIM_TMP/ssh/known_hosts
  StrictHostKeyChecking yes
  IdentityFile $PIM_TMP/ssh/id
  IdentitiesOnly yes
END
  cat >"$PIM_TMP/remote-bin/qm" <<END
#!/bin/sh
echo "\$*" >>"$PIM_TMP/qm.log"
[ "\$1 \$2" = "disk import" ] || exit 0
echo "importing disk '\$4' to VM \$3 ..."
echo "transferred 64.0 MiB of 64.0 MiB (100.00%)"
echo "unused0: successfully imported disk '\$5:vm-\$3-disk-0'"
END
  chmod +x "$PIM_TMP/remote-bin/qm"
}

teardown_file() {
  [ -n "${PIM_TMP:-}" ] || return 0
  sshd_down "$PIM_TMP"
  rm -rf "$PIM_TMP"
}

setup() {
  # shellcheck disable=SC1091
  . "$PIM_TMP/builds"
  export PIM_PVE_TOKEN='root@pam!pim=6b0e4b57-3f5c-4a0e-9d3e-0c1e8e2c1f00'
  FP=$(openssl x509 -in "$PIM_TMP/cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)
  SHA=$(sha256sum "$PIM_TMP/web.qcow2" | cut -c1-64)
  VOLUME="web-${SHA:0:12}.qcow2"
  export PATH="$PIM_TMP/bin:$PATH" # ssh with the test's config
}

teardown() {
  pve_down
}

# vars N BUILD: the server's --var words for BUILD (names suffixed with N)
vars() {
  local b=$2 img sha
  img="$XDG_DATA_HOME/pim/builds/$b/web.qcow2"
  sha=$(sha256sum "$img" | cut -c1-64)
  printf -- '--var\n%s\n' "SHA256$1=$sha" "VOLUME$1=web-${sha:0:12}.qcow2" "SIZE$1=$(stat -c %s "$img")" "BUILD$1=$b" \
    "KEY$1=$(jq -r .key "$XDG_DATA_HOME/pim/builds/$b/build.json")"
}

# pve_up SCENARIO [FINGERPRINT]: the stand-in replaying test/fixtures/pve/SCENARIO.json,
# and target pve pointing at it (pinned to FINGERPRINT, default the right one; none: no fingerprint:)
pve_up() {
  local port
  local -a v
  LOG="$PIM_TMP/$1.log"
  : >"$LOG"
  mapfile -t v < <(vars "" "$B1"; vars _2 "$B2")
  node "$REPO/test/fixtures/pve/replay.mjs" --transcript "$REPO/test/fixtures/pve/$1.json" \
    --cert "$PIM_TMP/cert.pem" --key "$PIM_TMP/key.pem" --log "$LOG" --token "$PIM_PVE_TOKEN" "${v[@]}" \
    >"$PIM_TMP/port" 3>&- &
  REPLAY_PID=$!
  for _ in $(seq 100); do [ -s "$PIM_TMP/port" ] && break; sleep 0.05; done
  port=$(cat "$PIM_TMP/port")
  mkdir -p "$XDG_CONFIG_HOME/pim/targets.d"
  printf 'pve: {type: proxmox, api: "https://127.0.0.1:%s", node: pve1, token_env: PIM_PVE_TOKEN, storage: local-lvm, import_storage: local%s, health_timeout: 10}\npvessh: {type: proxmox, api: "https://127.0.0.1:%s", node: pve1, token_env: PIM_PVE_TOKEN, storage: local-lvm, ssh: root@pve-node, fingerprint: "%s", health_timeout: 10}\npvelvm: {type: proxmox, api: "https://127.0.0.1:%s", node: pve1, token_env: PIM_PVE_TOKEN, storage: local-lvm, fingerprint: "%s"}\n' \
    "$port" "$([ "${2:-}" = none ] || echo ", fingerprint: \"${2:-$FP}\"")" "$port" "$FP" "$port" "$FP" >"$XDG_CONFIG_HOME/pim/targets.d/pve.yml"
}

pve_down() {
  [ -n "${REPLAY_PID:-}" ] && kill "$REPLAY_PID" 2>/dev/null
  REPLAY_PID=
  rm -f "$PIM_TMP/port"
}

# every request matched, and the transcript was used up
all_matched() {
  ! grep '"matched":false' "$LOG"
  [ "$(tail -1 "$LOG" | jq .left)" = 0 ]
}

@test "proxmox: a dry run plans, then a fresh deploy uploads with its sha256, follows the tasks and creates the VM with import-from" {
  pve_up fresh
  run --separate-stderr pim-deploy "$B1" pve --dry-run
  [ "$status" -eq 0 ]
  [[ "$output" == *$'web\tupload\tupload\tlocal:import/'"$VOLUME"* ]]
  [[ "$output" == *$'web\tdomain\tdefine\tweb (vmid next free)'* ]]
  run --separate-stderr pim-deploy "$B1" pve
  [ "$status" -eq 0 ]
  [[ "$output" == "$(printf 'web\tpve\t%s\t%s\tuploaded\tdefined\t' "$B1" "$VOLUME")"* ]]
  all_matched
  [[ "$stderr" != *6b0e4b57* ]] # the token is never printed
  # what the client sent, as the server read it (the transcript holds the exact fields too)
  up=$(grep '/upload"' "$LOG" | jq -c .multipart)
  [ "$up" = "$(jq -nc --arg s "$SHA" --arg v "$VOLUME" --arg n "$(stat -c %s "$PIM_TMP/web.qcow2")" \
    '{content: "import", "checksum-algorithm": "sha256", checksum: $s, filename: "\($v) \($n) bytes sha256 \($s)"}')" ]
  [ "$(grep '"method":"POST","path":"/api2/json/nodes/pve1/qemu"' "$LOG" | jq -r .form.scsi0)" = "local-lvm:0,import-from=local:import/$VOLUME" ]
  [ "$(grep -c '/tasks/' "$LOG")" = 4 ] # the upload polled twice, create and start once
}

@test "proxmox: the same build again is a no-op (no upload, no create), and list reads pim's record from the description" {
  pve_up noop
  run --separate-stderr pim-deploy "$B1" pve
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tskipped\tkept\t'* ]]
  run --separate-stderr pim-deploy list pve
  [ "$status" -eq 0 ]
  [ "$output" = "$(printf 'web\t%s\tweb\t%s\trunning' "$B1" "$VOLUME")" ]
  all_matched
  ! grep -q '"method":"POST"' "$LOG"
}

@test "proxmox: another build is an upgrade: shut down, the new disk by import-from (MAC and the user's description kept), started; the oldest import file goes" {
  pve_up upgrade
  run --separate-stderr pim-deploy "$B2" pve --json
  [ "$status" -eq 0 ]
  [ "$(jq -r '[.upload, .domain, (.removed | join(" "))] | join(" ")' <<<"$output")" = "uploaded upgraded local:import/web-000000000000.qcow2" ]
  all_matched
  [ "$(grep '"path":"/api2/json/nodes/pve1/qemu/101/config"' "$LOG" | grep POST | jq -r .form.net0)" = "virtio=BC:24:11:5E:3A:01,bridge=vmbr0" ]
}

@test "proxmox: an upgrade whose guest agent never answers is rolled back: the old disk back as scsi0, the VM started again, 79" {
  pve_up upgrade-rollback
  run --separate-stderr pim-deploy "$B2" pve --health-timeout 1
  [ "$status" -eq 79 ]
  [ "$output" = "" ]
  all_matched # shutdown, the new disk, start, two pings, stop, the old config back, the new disk deleted, start
  # one line: why, and that the old build runs again on its old disk
  [[ "$(tail -1 <<<"$stderr")" == *"web (vmid 101) on build $B2: its guest agent did not answer within 1 s; the previous config ($B1) is back and running, its old disk local-lvm:vm-101-disk-0 as scsi0, the new disk local-lvm:vm-101-disk-1 deleted" ]]
  restore=$(grep '"path":"/api2/json/nodes/pve1/qemu/101/config"' "$LOG" | grep POST | sed -n 2p)
  [ "$(jq -r .form.scsi0 <<<"$restore")" = "local-lvm:vm-101-disk-0,size=64M" ]
  [ "$(jq -r .form.description <<<"$restore")" = "the web server
pim-deploy: build=$B1 key=$(jq -r .key "$XDG_DATA_HOME/pim/builds/$B1/build.json") profile=web volume=$VOLUME sha256=$SHA" ]
  [ "$(grep '"path":"/api2/json/nodes/pve1/qemu/101/config"' "$LOG" | grep POST | sed -n 3p | jq -c .form)" = '{"delete":"unused1"}' ]
  [ "$(grep -c '/status/start"' "$LOG")" = 2 ]
  ! grep -q '"method":"DELETE"' "$LOG" # no import file goes
}

@test "proxmox: a fresh deploy whose guest agent never answers deletes the VM it created, 79" {
  pve_up fresh-rollback
  run --separate-stderr pim-deploy "$B1" pve --health-timeout 1
  [ "$status" -eq 79 ]
  all_matched # create, start, two pings, stop, DELETE of VM 101
  [[ "$(tail -1 <<<"$stderr")" == *"web (vmid 101) on build $B1: its guest agent did not answer within 1 s; the new VM was deleted again, with its disk" ]]
}

@test "proxmox: an upload task that fails PVE's checksum check is 65 and nothing is created" {
  pve_up failed-upload
  run --separate-stderr pim-deploy "$B1" pve
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"checksum mismatch"*"nothing was created"* ]]
  all_matched
  ! grep '"method":"POST","path":"/api2/json/nodes/pve1/qemu"' "$LOG"
}

@test "proxmox: refused before any request: a wrong certificate fingerprint or an unpinned self-signed one (69), a missing token variable (77); PVE 8.3 without ssh: is 69 after /version" {
  pve_up fresh "$(printf '%064d' 0)"
  run --separate-stderr pim-deploy "$B1" pve
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"not the pinned"*"refusing to send the token"* ]]
  [ ! -s "$LOG" ] # no request reached the server
  pve_down
  pve_up fresh none # a self-signed certificate, not pinned
  run --separate-stderr pim-deploy "$B1" pve
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"is not trusted"*"pin it with fingerprint:"*"or set insecure: true"* ]]
  [ ! -s "$LOG" ]
  pve_down
  pve_up fresh
  unset PIM_PVE_TOKEN
  run --separate-stderr pim-deploy "$B1" pve
  [ "$status" -eq 77 ]
  [[ "$stderr" == *"PIM_PVE_TOKEN (token_env) is not set"* ]]
  [ ! -s "$LOG" ]
  pve_down
  export PIM_PVE_TOKEN='root@pam!pim=6b0e4b57-3f5c-4a0e-9d3e-0c1e8e2c1f00'
  pve_up old-version
  run --separate-stderr pim-deploy "$B1" pve
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"Proxmox VE 8.3.2, older than 8.4"*"set ssh: root@pve1"* ]]
  all_matched
}

@test "proxmox 8.3 with ssh: the image copied to the node and verified, qm disk import (8.3's output) and qm set, the VM made through the API, pim's record last" {
  pve_up old-version-ssh
  : >"$PIM_TMP/qm.log"
  run --separate-stderr pim-deploy "$B1" pvessh
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tuploaded\tdefined\t'* ]]
  all_matched
  [ "$(sha256sum "$PIM_TMP/remote-tmp/pim/$VOLUME" | cut -c1-64)" = "$SHA" ]
  [ "$(cat "$PIM_TMP/qm.log")" = "disk import 101 $PIM_TMP/remote-tmp/pim/$VOLUME local-lvm
set 101 --scsi0 local-lvm:vm-101-disk-0 --boot order=scsi0" ]
  ! ls -A "$PIM_TMP/remote-tmp/pim" | grep -q part
}

@test "proxmox 9.x: a fresh deploy checks the token for VM.GuestAgent.Audit (not 8.x's VM.Monitor) before the upload" {
  pve_up fresh-9
  run --separate-stderr pim-deploy "$B1" pve
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tuploaded\tdefined\t'* ]]
  all_matched
}

@test "proxmox: a task that ends with WARNINGS: N worked (as PVE counts it): the upgrade goes on, the warning is logged" {
  pve_up upgrade-warnings
  run --separate-stderr pim-deploy "$B2" pve
  [ "$status" -eq 0 ]
  [[ "$output" == *$'\tuploaded\tupgraded\t'* ]]
  all_matched
  [[ "$stderr" == *"the start: the task ended with WARNINGS: 1: could not set polling interval for ballooning"* ]]
}

@test "proxmox: a VM name PVE refuses (not a DNS name) is refused before any request: --name is 64, a profile's name 78" {
  pve_up fresh
  for n in web_1 web- web.; do
    run --separate-stderr pim-deploy "$B1" pve --name "$n"
    [ "$status" -eq 64 ]
    [[ "$stderr" == *"Proxmox VE takes no VM named"*"pick another --name"* ]]
  done
  qemu-img create -q -f qcow2 "$PIM_TMP/u.qcow2" 1M
  b=$(register my_web u "$PIM_TMP/u.qcow2")
  run --separate-stderr pim-deploy "$b" pve
  [ "$status" -eq 78 ]
  [[ "$stderr" == *'"my_web" (it has "_")'*"deploy it with --name NAME"* ]]
  [ ! -s "$LOG" ] # nothing was sent
}

@test "proxmox: an import storage without content import (the default, storage: local-lvm) is 78 before the upload, in one line" {
  pve_up no-import
  run --separate-stderr pim-deploy "$B1" pvelvm
  [ "$status" -eq 78 ]
  all_matched
  [ "$(wc -l <<<"$stderr")" = 1 ]
  [[ "$stderr" == *'storage local-lvm on pve1 is missing, disabled or has no content "import" (PVE: Parameter verification failed. storage: No such storage.): enable the content "Import" of local-lvm'*"or set import_storage:"*"nothing was sent"* ]]
  ! grep -q /upload "$LOG"
}

@test "proxmox: a token without the privileges a step needs is 77 before the upload, one line naming each privilege, path and step" {
  pve_up no-perms
  t0=$(date +%s%N)
  run --separate-stderr pim-deploy "$B1" pve
  t1=$(date +%s%N)
  [ "$status" -eq 77 ]
  all_matched
  ! grep -q /upload "$LOG"
  [ "$(wc -l <<<"$stderr")" = 1 ]
  [[ "$stderr" == *"the token root@pam!pim lacks Datastore.AllocateTemplate on /storage/local (the upload); VM.Config.Network, VM.Monitor on /vms (creating the VM, the agent ping): grant them"*"nothing was sent" ]]
  # measured, not asserted (a loaded machine): the whole run, and the checks from /version on
  echo "# refused after $(( (t1 - t0) / 1000000 )) ms, the requests spanning $(( $(tail -1 "$LOG" | jq .ms) - $(head -1 "$LOG" | jq .ms) )) ms" >&3
}

@test "proxmox: a config edited during the upload stops the upgrade before the shutdown (75), nothing changed" {
  pve_up digest-changed
  run --separate-stderr pim-deploy "$B2" pve
  [ "$status" -eq 75 ]
  all_matched
  [[ "$stderr" == *"web (vmid 101)'s config changed since pim read it before the upload"*"pim changed nothing; look at the change (qm config 101)"* ]]
  ! grep -q '/status/shutdown' "$LOG"
  ! grep '"method":"POST"' "$LOG" | grep -q /config
}

@test "proxmox: the upgrade's config change carries the digest read before the upload; PVE's checksum mismatch is 75 and the VM is started again" {
  pve_up digest-race
  run --separate-stderr pim-deploy "$B2" pve
  [ "$status" -eq 75 ]
  all_matched
  [ "$(grep '"method":"POST","path":"/api2/json/nodes/pve1/qemu/101/config"' "$LOG" | jq -r .form.digest)" = 6f1ed002ab5595859014ebf0951522d9e4a5f2c1 ]
  [[ "$stderr" == *"(PVE: checksum mismatch (file change by other user?)): pim changed nothing and started it again"* ]]
}

@test "proxmox: a description over PVE's 8192 characters with pim's record is 65 before the upload" {
  pve_up long-description
  run --separate-stderr pim-deploy "$B2" pve
  [ "$status" -eq 65 ]
  all_matched
  [[ "$stderr" == *"description with pim's record would be 8208 characters, over PVE's 8192: shorten its description (its Notes) by 16"* ]]
}

@test "proxmox: a 403 on the agent ping (PVE 9: VM.GuestAgent.Audit) rolls the upgrade back (79), the hint naming the privilege" {
  pve_up agent-403
  run --separate-stderr pim-deploy "$B2" pve
  [ "$status" -eq 79 ]
  all_matched
  [[ "$(tail -1 <<<"$stderr")" == *"the health check was refused:"*"Permission check failed (/vms/101, VM.GuestAgent.Audit)): grant the token root@pam!pim VM.GuestAgent.Audit or VM.GuestAgent.Unrestricted on /vms/101"*"the previous config ($B1) is back and running"* ]]
}
