#!/usr/bin/env bats
# pim-build end to end under TCG, with the test bed's installer ISOs
# (test/testbed/installer/): a Debian-layout one (install.amd/, preseed from
# url=) and an Ubuntu-layout one (casper/, autoinstall from ds=nocloud-net;s=),
# downloaded and verified through the catalog from a loopback HTTP server,
# installed, provisioned over SSH, stored; then booted with pim-run. Failures
# each end with their exit code, a clear message, nothing in the store, no VM.
load helper
load build

setup_file() {
  build_home
  need_installer
  build_www "$TESTBED/installer/di.iso" "$TESTBED/installer/ubuntu.iso" "$TESTBED/installer/di-real.iso"
  {
    www_entry tb-di di.iso 'distro: debian'
    www_entry tb-ubuntu ubuntu.iso 'distro: ubuntu'
    www_entry tb-real di-real.iso 'distro: debian'
  } >"$C/isos.d/tb.yml"
  # every test profile: small, one CPU, root over SSH with the test bed's key
  cat >"$C/profiles.d/tb.yml" <<EOF
$(tb_defaults 'disk_size: 256M' 'timeout: 300')
tb: {iso: tb-di, scripts: [provision.sh], password: tb-plain-secret}
tbu: {iso: tb-ubuntu, distro: ubuntu, scripts: [provision.sh]}
nofetch: {iso: tb-ubuntu, distro: debian, boot: {kernel: casper/vmlinuz, initrd: casper/initrd}}
hang: {iso: tb-di}
badscript: {iso: tb-di, scripts: [provision.sh, fails.sh, never.sh]}
full: {iso: tb-di}
slow: {iso: tb-di}
sleepy: {iso: tb-di, scripts: [sleepy.sh]}
real: {iso: tb-real, mem: 1G}
inj: {iso: tb-di, boot: {inject: true}}
blank: {builder: raw, disk_size: 64M, hostname: one}
torn: {builder: raw, disk_size: 16M}
blankuefi: {builder: raw, disk_size: 32M, disk_format: raw, firmware: uefi, iso: nosuch-iso}
EOF
  cat >"$C/scripts.d/provision.sh" <<'EOF'
#!/bin/sh
set -e
echo "provisioning $(hostname) as uid $(id -u)"
echo "a line on stderr" >&2
echo "provisioned by pim-build" >/root/provisioned
EOF
  printf '#!/bin/sh\necho about to fail\nexit 3\n' >"$C/scripts.d/fails.sh"
  printf '#!/bin/sh\ntouch /root/never\n' >"$C/scripts.d/never.sh"
  printf '#!/bin/sh\necho "sleepy script running"\nsleep 100000\n' >"$C/scripts.d/sleepy.sh"
  printf '#!/bin/sh\necho "late command ran" >/etc/pim-late-command\n' >"$C/installs.d/tb.sh"
  cp "$C/installs.d/tb.sh" "$C/installs.d/tbu.sh"
  cp "$C/installs.d/tb.sh" "$C/installs.d/inj.sh"
  printf '#!/bin/sh\nsleep 100000\n' >"$C/installs.d/hang.sh"
  printf '#!/bin/sh\nsleep 100000\n' >"$C/installs.d/slow.sh"
}

teardown_file() {
  mountpoint -q "$PIM_TMP/small" && umount "$PIM_TMP/small"
  build_teardown
}

@test "a Debian-layout profile builds end to end: stdout is the image's path only, the image is read-only, the log names every phase" {
  run --separate-stderr pim-build run tb
  [ "$status" -eq 0 ]
  [ "${#lines[@]}" -eq 1 ]
  path="$output"
  [[ "$path" == "$(builds_dir)/tb-"*"/tb.qcow2" ]]
  [ "$(stat -c %a "$path")" = 444 ]
  [[ "$stderr" == *"the installer fetched preseed.cfg"* ]]
  [[ "$stderr" == *"the installer powered off"* ]]
  [[ "$stderr" == *"host key pinned"* ]]
  [[ "$stderr" == *"provision.sh| provisioning"* ]]
  [[ "$stderr" == *"a line on stderr"* ]]
  qemu-img info "$path" | grep -q 'virtual size: 256 MiB'
  run pim-build show tb --json
  [ "$status" -eq 0 ]
  [ "$(jq -r .settings.ssh_user <<<"$output")" = root ]
  [ "$(jq -r '.inputs.files["scripts.d/provision.sh"]' <<<"$output")" = "$(sha256sum "$XDG_CONFIG_HOME/pim/scripts.d/provision.sh" | cut -d' ' -f1)" ]
  log="$(dirname "$path")/build.log"
  grep -q 'GET "/preseed.cfg" 200' "$log"
  grep -q 'pim-installer' "$log"
  grep -q 'provision.sh| provisioning' "$log"
  # the profile's plain password: only its hash is in the record, the log and pim-build show
  run pim-build show tb --json
  [[ "$(jq -r .inputs.profile.password_hash <<<"$output")" == '$6$'* ]]
  [ "$(jq -r '.inputs.profile | has("password")' <<<"$output")" = false ]
  run grep -rl tb-plain-secret "$(dirname "$path")" "$XDG_STATE_HOME/pim"
  [ "$status" -eq 1 ]
  run pim-build show tb
  [ "$status" -eq 0 ]
  [[ "$output" != *tb-plain-secret* ]]
}

@test "pim-run PROFILE boots the build through an overlay: the late command and the script ran, pim's key is gone, the build's bytes never change" {
  path=$(pim-build path tb)
  sum=$(sha256sum "$path")
  boot_build tb
  run ssh_vm tb cat /etc/pim-late-command /root/provisioned
  [ "$status" -eq 0 ]
  [[ "$output" == *"late command ran"* ]]
  [[ "$output" == *"provisioned by pim-build"* ]]
  run ssh_vm tb cat /root/.ssh/authorized_keys
  [ "$status" -eq 0 ]
  [[ "$output" == *pim-testbed* ]]
  [[ "$output" != *pim-build-* ]]
  ssh_vm tb 'dd if=/dev/urandom of=/root/big bs=1M count=8 2>/dev/null; sync'
  pim-stop tb
  [ "$(sha256sum "$path")" = "$sum" ]
  # the VM's changes are in its overlay, which a second run keeps; pim-run records who logs
  # in over SSH: the profile's ssh_user, and the user's own key that is among its ssh_keys
  mkdir -p "$PIM_TMP/home/.ssh"
  cp "$TESTBED/id_ed25519" "$TESTBED/id_ed25519.pub" "$PIM_TMP/home/.ssh/"
  HOME="$PIM_TMP/home" boot_build tb
  run ssh_vm tb stat -c %s /root/big
  [ "$output" = 8388608 ]
  [ "$(jq -r '.ssh_user + " " + .ssh_key' "$XDG_RUNTIME_DIR/pim/tb.json")" = "root $PIM_TMP/home/.ssh/id_ed25519" ]
  run env -u PIM_SSH_KEY -u PIM_SSH_USER pim-ssh tb -- stat -c %s /root/big
  [ "$output" = 8388608 ]
  pim-stop tb
  [ "$(sha256sum "$path")" = "$sum" ]
  # the build a disk is backed by cannot be removed
  run pim-build rm tb
  [ "$status" -eq 75 ]
  [[ "$output" == *"images/tb.qcow2"* ]]
  [ -f "$path" ]
}

@test "a build whose VM name is taken by a running VM fails (75) and leaves that VM and its files alone" {
  key=$(pim-build show tb --json | jq -r .key)
  name="tb-build-${key:0:8}"
  # the store disk the tests above made is backed by the build: --force would be refused
  # for that first (75, tested in cloudbuild.bats); it is set aside for this test and put
  # back after it (the next test moves it to a newer build)
  images="$XDG_DATA_HOME/pim/images"
  mv "$images/tb.qcow2" "$PIM_TMP/tb.qcow2.aside"
  pim-run "$TESTBED/guest-full.qcow2" --name "$name" --snapshot --mem 256M --cpus 1
  run --separate-stderr pim-build run tb --force
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"$name is already running"* ]]
  [ "$(pim-ps -q | grep -cx "$name")" -eq 1 ]
  [ -S "$XDG_RUNTIME_DIR/pim/$name.qmp" ]
  pim-stop "$name" --force >/dev/null
  mv "$PIM_TMP/tb.qcow2.aside" "$images/tb.qcow2"
}

@test "a second run is a cache hit with the same path; a changed script is a miss, and pim-run moves to the new build" {
  first=$(pim-build path tb)
  run --separate-stderr pim-build run tb
  [ "$status" -eq 0 ]
  [ "$output" = "$first" ]
  [[ "$stderr" == *"(cached)"* ]]
  [ "$(pim-build list -q | grep -c '^tb-')" -eq 1 ]
  echo 'echo changed' >>"$XDG_CONFIG_HOME/pim/scripts.d/provision.sh"
  run --separate-stderr pim-build run tb
  [ "$status" -eq 0 ]
  [ "$output" != "$first" ]
  [ "$(pim-build list -q | grep -c '^tb-')" -eq 2 ]
  [ "$(pim-build path tb)" = "$output" ]
  # show names the inputs, so a user can see why it missed
  [ "$(pim-build show "$(basename "$(dirname "$first")")" --json | jq -r '.inputs.files["scripts.d/provision.sh"]')" != \
    "$(pim-build show tb --json | jq -r '.inputs.files["scripts.d/provision.sh"]')" ]
  run --separate-stderr pim-run tb --mem 256M --cpus 1
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"newer build"* ]]
  pim-stop tb --force >/dev/null
  # gc keeps the newest; the old build still backs tb.prev, so it stays too
  run pim-build gc --keep 1
  [ "$status" -eq 0 ]
  [ "$(pim-build list -q | grep -c '^tb-')" -eq 2 ]
  rm "$XDG_DATA_HOME/pim/images/tb.prev.qcow2"
  run pim-build gc --keep 1
  [ "$status" -eq 0 ]
  [ "$output" = "$(basename "$(dirname "$first")")" ]
  [ ! -e "$first" ]
}

@test "an Ubuntu-layout profile (casper, autoinstall through ds=nocloud-net;s=) builds end to end and boots" {
  run --separate-stderr pim-build run tbu
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"the installer fetched user-data"* ]]
  grep -q 'GET "/meta-data" 200' "$(dirname "$output")/build.log"
  boot_build tbu
  run ssh_vm tbu cat /etc/pim-late-command /root/provisioned
  [ "$status" -eq 0 ]
  [[ "$output" == *"late command ran"* ]]
  [[ "$output" == *"provisioned by pim-build"* ]]
  pim-stop tbu
}

@test "boot.inject: the preseed rides in the installer's initrd (a gzip'd newc cpio appended), read before the network" {
  run --separate-stderr pim-build run inj
  [ "$status" -eq 0 ]
  log="$(dirname "$output")/build.log"
  grep -q '(preseed injected)' "$log"
  # the installer never asked the server for the preseed, but its late command still fetched from it
  ! grep -q 'GET "/preseed.cfg"' "$log"
  grep -q 'GET "/installs.d/inj.sh" 200' "$log"
}

@test "an answer file that is never fetched: 69 with the console's last lines, nothing left" {
  run --separate-stderr pim-build run nofetch --fetch-timeout 25
  [ "$status" -eq 69 ]
  [[ "$stderr" == *"did not fetch its answer file within 25 s"* ]]
  [[ "$stderr" == *"build log: $XDG_STATE_HOME/pim/build-logs/nofetch-"* ]]
  [[ "$stderr" == *"  | "* ]]
  no_build_leftovers nofetch
}

@test "an installer that never powers off: 75 after the timeout, nothing left" {
  run --separate-stderr pim-build run hang --timeout 25
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"did not power off within"* ]]
  no_build_leftovers hang
}

@test "a provisioning script that fails: 65 naming it, later scripts not run, nothing left" {
  run --separate-stderr pim-build run badscript
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"provisioning script scripts.d/fails.sh failed with status 3"* ]]
  [[ "$stderr" == *"fails.sh| about to fail"* ]]
  log=$(build_log_of "$stderr")
  [ -f "$log" ]
  ! grep -q 'never.sh' "$log"
  no_build_leftovers badscript
}

@test "--keep-failed keeps the disk and says where" {
  run --separate-stderr pim-build run badscript --keep-failed
  [ "$status" -eq 65 ]
  kept=$(sed -n 's/.*kept the failed build.s disk in \([^ ]*\) .*/\1/p' <<<"$stderr")
  [ -f "$kept/badscript.qcow2" ]
  rm -rf "$kept"
}

@test "SIGINT in the middle of the install: 130, the VM and the server gone, nothing left" {
  pim-build run slow 2>"$PIM_TMP/slow.err" &
  pid=$!
  wait_until 60 said_or_ended "$PIM_TMP/slow.err" 'fetched preseed.cfg' "$pid"
  grep -q 'fetched preseed.cfg' "$PIM_TMP/slow.err"
  port=$(sed -n 's/.*url=http:\/\/10.0.2.2:\([0-9]*\).*/\1/p' "$(ls "$XDG_STATE_HOME"/pim/build-logs/slow-*.log)" | head -1)
  kill -INT "$pid"
  st=0
  wait "$pid" || st=$?
  [ "$st" -eq 130 ]
  grep -q 'interrupted by SIGINT' "$PIM_TMP/slow.err"
  no_build_leftovers slow
  ! curl -s -m 2 "http://127.0.0.1:$port/preseed.cfg"
}

@test "SIGTERM, then SIGINT, while a provisioning script runs: 143 and 130, nothing registered, no VM, no temporary or runtime files" {
  local sig want
  for sig in TERM INT; do
    want=143; [ "$sig" = INT ] && want=130
    pim-build run sleepy 2>"$PIM_TMP/sleepy.err" &
    pid=$!
    wait_until 600 said_or_ended "$PIM_TMP/sleepy.err" 'sleepy.sh| sleepy script running' "$pid"
    grep -q 'sleepy.sh| sleepy script running' "$PIM_TMP/sleepy.err" || { cat "$PIM_TMP/sleepy.err"; false; }
    kill -"$sig" "$pid"
    st=0
    wait "$pid" || st=$?
    [ "$st" -eq "$want" ] || { cat "$PIM_TMP/sleepy.err"; false; }
    grep -q "interrupted by SIG$sig" "$PIM_TMP/sleepy.err"
    no_build_leftovers sleepy
    [ -z "$(find "$(builds_dir)" -mindepth 1 -maxdepth 1 -name '*sleepy*' 2>/dev/null)" ]
    # the build VM's runtime files are gone (its console log stays, as for every VM that stopped: pim-log reads it)
    left=$(find "$XDG_RUNTIME_DIR/pim" -name 'sleepy-build-*' ! -name '*.log' 2>/dev/null)
    [ -z "$left" ] || { echo "left: $left"; false; }
  done
}

@test "a full disk: 73 naming the directory, nothing left" {
  mkdir -p "$PIM_TMP/small"
  mount -t tmpfs -o size=24m tmpfs "$PIM_TMP/small"
  run --separate-stderr env XDG_DATA_HOME="$PIM_TMP/small" pim-build run full
  umount "$PIM_TMP/small"
  [ "$status" -eq 73 ]
  [[ "$stderr" == *"no space left"* ]]
  [[ "$stderr" == *"$PIM_TMP/small/pim/builds"* ]]
  [ -z "$(pim-ps -q | grep -- '-build-' || true)" ]
}

@test "the real Debian installer, booted through pim-build's boot path, fetches the preseed" {
  [ -f "$TESTBED/installer/di-real.iso" ] || skip "no di-real.iso in the test bed"
  run --separate-stderr pim-build run real --fetch-timeout 120 --timeout 120
  # it cannot finish here (the package mirror lacks its udebs): a timeout after the fetch
  [[ "$stderr" == *"the installer fetched preseed.cfg"* ]]
  [ "$status" -eq 75 ]
  log=$(ls "$XDG_STATE_HOME"/pim/build-logs/real-*.log)
  grep -q 'GET "/preseed.cfg" 200' "$log"
  no_build_leftovers real
}

@test "usage and config errors: a missing profile 66, a bad value 78, bad subcommands and flags 64" {
  run pim-build run nosuch
  [ "$status" -eq 66 ]
  printf 'broken:\n  iso: tb-di\n  firmware: efi\n' >"$XDG_CONFIG_HOME/pim/profiles.d/zz.yml"
  run pim-build run broken
  [ "$status" -eq 78 ]
  [[ "$output" == *"zz.yml:3"* ]]
  rm "$XDG_CONFIG_HOME/pim/profiles.d/zz.yml"
  run pim-build frob
  [ "$status" -eq 64 ]
  run pim-build run tb --timeout x
  [ "$status" -eq 64 ]
  run pim-build show nosuch
  [ "$status" -eq 66 ]
}

@test "builder: raw: an empty disk of disk_size, cached by size, format and firmware only, and pim-run boots it" {
  run --separate-stderr pim-build run blank --json
  [ "$status" -eq 0 ]
  [ "$(jq -r .hit <<<"$output")" = false ]
  path=$(jq -r .path <<<"$output")
  [ "$(qemu-img info --output=json "$path" | jq -r '.format + " " + (."virtual-size" | tostring)')" = "qcow2 67108864" ]
  [ "$(stat -c %a "$path")" = 444 ]
  # a change that does not shape the disk (hostname) is still a hit; a new size is a miss
  c="$XDG_CONFIG_HOME/pim/profiles.d/tb.yml"
  sed -i 's/^blank: {builder: raw, disk_size: 64M, hostname: one}/blank: {builder: raw, disk_size: 64M, hostname: two}/' "$c"
  run --separate-stderr pim-build run blank
  [ "$status" -eq 0 ]
  [ "$output" = "$path" ]
  [[ "$stderr" == *cached* ]]
  sed -i 's/^blank: {builder: raw, disk_size: 64M, hostname: two}/blank: {builder: raw, disk_size: 96M, hostname: two}/' "$c"
  run --separate-stderr pim-build run blank
  [ "$status" -eq 0 ]
  [ "$output" != "$path" ]
  [ "$(qemu-img info --output=json "$output" | jq -r '."virtual-size"')" = 100663296 ]
  # raw format, UEFI: the vars beside it; the profile's iso is never fetched (it does not exist)
  run --separate-stderr pim-build run blankuefi
  [ "$status" -eq 0 ]
  [[ "$output" == */blankuefi.raw ]]
  [ "$(stat -c %s "$output")" = 33554432 ]
  [ -f "$(dirname "$output")/blankuefi.efivars.fd" ]
  # pim-run boots the newest build through an overlay; the empty disk boots no OS, but QEMU runs
  run --separate-stderr pim-run blank --mem 128M --cpus 1
  [ "$status" -eq 0 ]
  run pim-status blank
  [ "$status" -eq 0 ]
  pim-stop blank --force >/dev/null
}

@test "a truncated build.json: pim-build list shows the build as damaged, naming the file (stderr and a state field); pim-build rm removes it" {
  run --separate-stderr pim-build run torn
  [ "$status" -eq 0 ]
  dir=$(dirname "$output")
  id=$(basename "$dir")
  chmod 755 "$dir"
  chmod 644 "$dir/build.json"
  truncate -s 40 "$dir/build.json"
  chmod 444 "$dir/build.json"
  chmod 555 "$dir"
  run --separate-stderr pim-build list
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"build $id is damaged: $dir/build.json is not valid JSON"*"pim-build rm $id"* ]]
  grep -q "^$id"$'\t'"torn"$'\t.*\t'"$dir"$'\tdamaged$' <<<"$output" || { echo "$output"; false; }
  run --separate-stderr pim-build list --json
  [ "$(jq -r --arg id "$id" 'select(.name==$id).state' <<<"$output")" = damaged ]
  [[ "$(jq -r --arg id "$id" 'select(.name==$id).problem' <<<"$output")" == "$dir/build.json is not valid JSON"* ]]
  # the good builds are still ok
  [ -z "$(jq -r --arg id "$id" 'select(.name!=$id and .state!="ok").name' <<<"$output")" ]
  run --separate-stderr pim-build rm "$id"
  [ "$status" -eq 0 ]
  [ "$output" = "$id" ]
  [ ! -e "$dir" ]
  run --separate-stderr pim-build list
  [[ "$output" != *"$id"* ]]
  [ -z "$stderr" ]
}
