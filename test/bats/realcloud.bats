#!/usr/bin/env bats
# pim-build's builder: cloud-init against the REAL cloud-init: a Debian 12 cloud
# image made from Debian's packages the way Debian's genericcloud image is made
# (test/testbed/debian-cloud.sh: linux-image-cloud-amd64, systemd, cloud-init
# 22.4, OpenSSH, qemu-guest-agent, sudo, GRUB; NoCloud first in
# datasource_list). One build (one boot: the seeded run waited for over SSH,
# a script, generalized, stored compressed), then two VMs from it at once: one
# as pim-run boots it, one with a NoCloud seed given at deploy time on a
# virtio disk after `--`, as a user would; then the build deployed by
# pim-deploy into a libvirtd of the test's own (test/bats/libvirt.bash), whose
# domain must be a machine of its own too. Each real boot takes 80-90 s under
# TCG here; the whole file about 8-10 minutes.
load helper
load build
load libvirt

setup_file() {
  build_home
  bash "$REPO/test/testbed/debian-cloud.sh" >&2
  DEBIAN_CLOUD="${PIM_DEBIAN_CLOUD_DIR:-$(dirname "$PIM_TESTBED_DIR")/debian-cloud}/debian-12-cloud.qcow2"
  [ -s "$DEBIAN_CLOUD" ]
  build_www "$DEBIAN_CLOUD"
  www_entry debian-12-cloud debian-12-cloud.qcow2 'kind: image' >"$C/isos.d/deb.yml"
  # the README's builder: cloud-init example, with a non-root ssh_user
  cat >"$C/profiles.d/real.yml" <<EOF
real:
  builder: cloud-init
  image: debian-12-cloud
  hostname: realweb
  ssh_user: admin
  ssh_keys: ["$(cat "$TESTBED/id_ed25519.pub")"]
  packages: []
  disk_size: 3G
  mem: 512M
  cpus: 2
  timeout: 1200
  compress: true
  scripts: [real.sh]
  cloud_config:
    write_files: [{path: /etc/pim-motd, content: "built by pim\n", permissions: "0640"}]
    runcmd: ["echo runcmd-ran > /var/lib/pim-runcmd-mark"]
EOF
  cat >"$C/scripts.d/real.sh" <<'EOF'
#!/bin/sh
set -e
# manage_etc_hosts: sudo resolves the host's own name (no "unable to resolve host")
getent hosts "$(hostname)"
echo "provisioned on $(hostname) as $(id -un)" >/var/lib/pim-provisioned
EOF
  # a NoCloud seed given at deploy time: a new instance, its own hostname and file
  mkdir -p "$PIM_TMP/seed"
  printf 'instance-id: deploy-%s\nlocal-hostname: deployed\n' "$$" >"$PIM_TMP/seed/meta-data"
  printf '#cloud-config\nhostname: deployed\nmanage_etc_hosts: true\nwrite_files: [{path: /etc/pim-deployed, content: "seeded at deploy time\\n"}]\n' >"$PIM_TMP/seed/user-data"
  xorriso -as mkisofs -quiet -output "$PIM_TMP/deploy-seed.iso" -volid cidata -joliet -rock "$PIM_TMP/seed"
}

teardown_file() {
  [ -n "${PIM_TMP:-}" ] && [ -f "$PIM_TMP/libvirtd.pid" ] && libvirt_down "$PIM_TMP"
  build_teardown
}

k() { pim-ssh "$1" -i "$TESTBED/id_ed25519" -- "${@:2}"; }

@test "the real Debian cloud image builds in one boot: cloud-init's seeded run, a script, generalized, stored smaller" {
  run --separate-stderr pim-build run real
  [ "$status" -eq 0 ] || { build_log_tail "$stderr"; false; }
  img="$output"
  [[ "$stderr" == *"connected over SSH as admin (host key pinned)"* ]]
  [[ "$stderr" == *"cloud-init finished without errors (DataSourceNoCloud"* ]]
  log="$(dirname "$img")/build.log"
  grep -q 'cloud-init status --wait --long: status 0:' "$log"
  grep -q 'script scripts.d/real.sh: status 0' "$log"
  # booted GRUB's default entry directly: the kernel, initrd and command line read out of the image
  grep -q "boot: GRUB's default entry read from the disk, booted directly: /boot/vmlinuz-[^ ]* with /boot/initrd.img-[^ ]*; BOOT_IMAGE=/boot/vmlinuz-[^ ]* root=UUID=" "$log"
  grep -aq 'Command line: BOOT_IMAGE=/boot/vmlinuz-.* root=UUID=.* console=ttyS0' "$log"
  # the build boot made one host key (pim's vendor-data: ssh_genkeytypes [ed25519]), no RSA
  keys=$(awk '/host keys from the guest agent:/ { on = 1; next } on && /^\[/ { exit } on' "$log")
  echo "the build's host keys: $(cut -d' ' -f1 <<<"$keys" | tr '\n' ' ')" >&3
  [ "$(cut -d' ' -f1 <<<"$keys")" = ssh-ed25519 ]
  # generalized: cloud-init's state, machine-id, host keys, logs; free space trimmed
  grep -q '^pim: cloud-init clean --logs' "$log"
  grep -q '^pim: /etc/machine-id emptied' "$log"
  grep -q '^pim: SSH host keys removed' "$log"
  grep -q '^pim: fstrim: /: ' "$log"
  # then it powered off at once (systemctl poweroff --force), not through pim-stop's chain
  grep -q 'stopped by guest in ' "$log"
  # stored with qemu-img convert -c: smaller than the disk the build VM left (both sizes in the log)
  read -r kept left < <(sed -n 's/.*stored: real.qcow2 \([0-9]*\) bytes (compressed); the build VM left \([0-9]*\) bytes$/\1 \2/p' "$log")
  echo "stored $kept bytes, the build VM left $left bytes" >&3
  [ "$kept" -lt "$left" ]
}

@test "two VMs from the build: cloud-init done without errors, grown, pim's key gone, marks present, own machine-ids and host keys; a deploy-time seed is applied" {
  pim-run real --name v1 --snapshot --mem 512M --cpus 1
  pim-run real --name v2 --snapshot --mem 512M --cpus 1 -- -drive "file=$PIM_TMP/deploy-seed.iso,if=virtio,format=raw,readonly=on"
  pim-wait v1 --for ssh --timeout 600
  pim-wait v2 --for ssh --timeout 600
  for v in v1 v2; do
    run k "$v" cloud-init status --wait --long
    echo "$v: $output" >&3
    [ "$status" -eq 0 ]
    [[ "$output" == *"status: done"* ]]
    # the root file system was grown to the 3G disk (the base image is 2 GiB)
    [ "$(k "$v" df -B1 --output=size / | tail -n 1)" -gt $((2500 * 1024 * 1024)) ]
    # pim's per-build key is gone: the profile's key and the user's own pim key remain
    [ "$(k "$v" cat .ssh/authorized_keys | sort)" = "$(printf '%s\n' "$(cat "$TESTBED/id_ed25519.pub")" "$(pim-ssh --pubkey)" | sort)" ]
    [ "$(k "$v" sudo -n cat /etc/pim-motd)" = "built by pim" ]
    [ "$(k "$v" cat /var/lib/pim-runcmd-mark)" = "runcmd-ran" ]
    [ "$(k "$v" cat /var/lib/pim-provisioned)" = "provisioned on realweb as root" ]
    # sudo resolves the host's name
    [ -z "$(k "$v" sudo -n true 2>&1)" ]
    # key login only
    [[ "$(k "$v" sudo -n sshd -T)" == *"passwordauthentication no"* ]]
    # the clone's first boot made the image's own full set of host keys (the build's vendor-data is not in the image)
    k "$v" ls /etc/ssh/ssh_host_rsa_key.pub /etc/ssh/ssh_host_ecdsa_key.pub /etc/ssh/ssh_host_ed25519_key.pub
  done
  # each VM is a machine of its own: machine-id and host keys made on its first boot
  m1=$(pim-exec v1 -- cat /etc/machine-id)
  m2=$(pim-exec v2 -- cat /etc/machine-id)
  [[ "$m1" =~ ^[0-9a-f]{32}$ ]] && [[ "$m2" =~ ^[0-9a-f]{32}$ ]]
  [ "$m1" != "$m2" ]
  h1=$(pim-exec v1 -- cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)
  h2=$(pim-exec v2 -- cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)
  [ -n "$h1" ] && [ -n "$h2" ] && [ "$h1" != "$h2" ]
  printf '%s\n' "$m1" "$m2" "$h1" "$h2" >"$PIM_TMP/run-ids" # for the libvirt domain's test
  # and neither has the build's host key (pinned in the build log)
  log="$(dirname "$(pim-build path real)")/build.log"
  ! grep -qF "$h1" "$log"
  ! grep -qF "$h2" "$log"
  # the deploy-time seed ran as a first boot: its hostname and file
  [ "$(k v2 hostname)" = deployed ]
  [ "$(k v2 cat /etc/pim-deployed)" = "seeded at deploy time" ]
  [[ "$(k v2 cloud-init status --long)" == *"NoCloud"* ]]
  # v1 had no seed: it keeps the build's hostname
  [ "$(k v1 hostname)" = realweb ]
  pim-stop v1 v2
}

# ga DOM JSON: the reply of the domain's guest agent
ga() { virsh -q -c "$(lv_uri "$PIM_TMP")" qemu-agent-command "$1" "$2" --timeout 30; }
# ga_run DOM PROG ARGS...: PROG run in the domain by its guest agent (guest-exec), waited for
# (bounded); prints its stdout, returns its status
ga_run() {
  local dom=$1 prog=$2 pid r
  shift 2
  # (the arguments through stdin: jq takes an argument such as --wait after --args for an option)
  pid=$(ga "$dom" "$(printf '%s\n' "$@" | jq -cRn --arg p "$prog" '{execute: "guest-exec", arguments: {path: $p, arg: [inputs], "capture-output": true}}')" | jq -r .return.pid)
  [[ "$pid" =~ ^[0-9]+$ ]] || { echo "guest-exec of $prog gave no pid" >&2; return 70; }
  for _ in $(seq "$(slow 1200)"); do
    r=$(ga "$dom" "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}")
    [ "$(jq -r .return.exited <<<"$r")" = true ] && break
    sleep 0.5
  done
  jq -r '.return["out-data"] // "" | @base64d' <<<"$r"
  return "$(jq -r '.return.exitcode // 70' <<<"$r")"
}

@test "pim-deploy into libvirt: the domain made from the build is a machine of its own (its machine-id and host keys are not the pim-run VMs' nor the build's)" {
  command -v libvirtd >/dev/null || skip "libvirtd is not installed (libvirt-daemon-system)"
  [ -s "$PIM_TMP/run-ids" ] # the pim-run VMs' (the test before)
  libvirt_up "$PIM_TMP"
  mkdir -p "$XDG_CONFIG_HOME/pim/targets.d"
  cat >"$XDG_CONFIG_HOME/pim/targets.d/lv.yml" <<EOT
lv: {type: libvirt, uri: "$(lv_uri "$PIM_TMP")", virt_type: qemu, network: user, pool: pimt, pool_path: "$PIM_TMP/pool", health_timeout: $(slow 600), shutdown_timeout: 20}
EOT
  run --separate-stderr pim-deploy real lv --name d1
  [ "$status" -eq 0 ] || { echo "$stderr"; false; }
  [[ "$output" == *$'\tuploaded\tdefined\t'* ]]
  # its first boot: cloud-init (no seed) done without errors
  run ga_run d1 /usr/bin/cloud-init status --wait --long
  echo "d1: $output" >&3
  [ "$status" -eq 0 ]
  [[ "$output" == *"status: done"* ]]
  m=$(ga_run d1 /bin/cat /etc/machine-id)
  h=$(ga_run d1 /bin/cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)
  [[ "$m" =~ ^[0-9a-f]{32}$ ]]
  [ -n "$h" ]
  ! grep -qxF "$m" "$PIM_TMP/run-ids"
  ! grep -qxF "$h" "$PIM_TMP/run-ids"
  ! grep -qF "$h" "$(dirname "$(pim-build path real)")/build.log"
}
