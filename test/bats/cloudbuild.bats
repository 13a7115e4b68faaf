#!/usr/bin/env bats
# pim-build's builder: cloud-init end to end under TCG, with the test bed's
# cloud image (test/testbed/installer/build.sh: cloud.qcow2, whose stand-in
# cloud-init applies a NoCloud seed labelled cidata). The image is downloaded
# and verified through the catalog (kind: image) from a loopback HTTP server,
# copied and grown, booted with its seed until cloud-init powers it off,
# provisioned over SSH, stored; then booted with pim-run.
load helper

setup_file() {
  pim_isolate
  need_testbed
  need_installer
  export XDG_STATE_HOME="$PIM_TMP/state"
  W="$PIM_TMP/www"
  mkdir -p "$W"
  ln -s "$TESTBED/installer/cloud.qcow2" "$W/cloud.qcow2"
  ln -s "$TESTBED/installer/di.iso" "$W/di.iso"
  qemu-img create -q -f qcow2 -F qcow2 -b "$TESTBED/installer/cloud.qcow2" "$W/backed.qcow2"
  (cd "$W" && sha256sum -- *.qcow2 *.iso >SHA256SUMS)
  local port
  port=$(serve_www "$W")
  local c="$XDG_CONFIG_HOME/pim"
  mkdir -p "$c/isos.d" "$c/profiles.d" "$c/scripts.d" "$c/sources.d" "$c/preseeds.d"
  cat >"$c/isos.d/tb.yml" <<EOF
tb-cloud: {kind: image, url: "http://127.0.0.1:$port/cloud.qcow2", checksum_url: "http://127.0.0.1:$port/SHA256SUMS"}
tb-backed: {kind: image, url: "http://127.0.0.1:$port/backed.qcow2", checksum_url: "http://127.0.0.1:$port/SHA256SUMS"}
tb-di: {url: "http://127.0.0.1:$port/di.iso", checksum_url: "http://127.0.0.1:$port/SHA256SUMS", distro: debian}
EOF
  cat >"$c/profiles.d/tb.yml" <<EOF
default:
  builder: cloud-init
  image: tb-cloud
  hostname: cloudy
  ssh_user: root
  ssh_keys: ["$(cat "$TESTBED/id_ed25519.pub")"]
  disk_size: 128M
  mem: 256M
  cpus: 1
  timeout: 240
  scripts: [provision.sh]
cloud:
  sources: [extra.txt]
  cloud_config:
    write_files: [{path: /etc/pim-motd, content: "built from a cloud image\n", permissions: "0600"}]
    runcmd: ["hostname > /root/runcmd-hostname", [cp, /run/cidata/extra.txt, /root/extra from seed]]
cierror: {cloud_config: {runcmd: ["echo about to fail", "exit 3"]}}
nopower: {timeout: 20}
isoimage: {image: tb-di}
noimage: {image: ""}
backed: {image: tb-backed}
shrink: {disk_size: 32M}
installerimage: {builder: installer, iso: tb-cloud}
EOF
  printf 'a file from sources.d\n' >"$c/sources.d/extra.txt"
  # a user-data template of the profile's own, without power_state
  printf '#cloud-config\nhostname: "nopower"\n' >"$c/preseeds.d/nopower.user-data.eta"
  cat >"$c/scripts.d/provision.sh" <<'EOF'
#!/bin/sh
set -e
echo "provisioning $(hostname)"
echo "provisioned by pim-build" >/root/provisioned
EOF
}

teardown_file() {
  stop_www
  pim_cleanup
}



@test "a cloud-init profile builds end to end: the seed's user-data, write_files, runcmd and sources applied, provisioned, stored, boots with pim-run" {
  run --separate-stderr pim-build run cloud
  [ "$status" -eq 0 ] || { build_log_tail "$stderr"; false; }
  img="$output"
  [ "$(printf '%s\n' "$output" | wc -l)" -eq 1 ]
  [ -f "$img" ] && [ ! -w "$img" -o "$(id -u)" -eq 0 ]
  [[ "$stderr" == *"cloud-init powered the guest off"* ]]
  [[ "$stderr" == *"cloud-init finished without errors (DataSourceNoCloud"* ]]
  # a full copy (no backing file), grown to disk_size
  run qemu-img info --output=json "$img"
  [ "$(jq -r '."backing-filename" // "none"' <<<"$output")" = none ]
  [ "$(jq -r '."virtual-size"' <<<"$output")" -eq $((128 * 1024 * 1024)) ]
  run pim-build show cloud --json
  [ "$(jq -r .inputs.builder <<<"$output")" = cloud-init ]
  [ "$(jq -r .iso.name <<<"$output")" = tb-cloud ]
  [ "$(jq -r '.inputs.files["sources.d/extra.txt"]' <<<"$output")" = "$(sha256sum <"$XDG_CONFIG_HOME/pim/sources.d/extra.txt" | cut -d' ' -f1)" ]
  log="$(dirname "$img")/build.log"
  grep -q 'seed: extra.txt from sources.d/extra.txt' "$log"
  grep -q 'pim-testbed cloud-init: runcmd done' "$log"

  pim-run cloud --name c1 --mem 256M --cpus 1
  pim-console c1 --ro --replay --until 'pim-testbed ready' --timeout 120 >/dev/null
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat /etc/pim-motd)" = "built from a cloud image" ]
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- stat -c %a /etc/pim-motd)" = 600 ]
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat /root/runcmd-hostname)" = cloudy ]
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat "'/root/extra from seed'")" = "a file from sources.d" ]
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat /root/provisioned)" = "provisioned by pim-build" ]
  # pim's per-build key is gone; the profile's key is the only one
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat /root/.ssh/authorized_keys)" = "$(cat "$TESTBED/id_ed25519.pub")" ]
  # cloud-init ran once: the instance is recorded, so the stored image does not run it again
  pim-ssh c1 -i "$TESTBED/id_ed25519" -- test -s /var/lib/cloud/data/instance-id
  pim-stop c1

  # the same inputs again: a cache hit, no VM
  run --separate-stderr pim-build run cloud
  [ "$status" -eq 0 ]
  [ "$output" = "$img" ]
  [[ "$stderr" == *"(cached)"* ]]
}

@test "a source's content is in the cache key: a changed sources.d file is a miss" {
  run pim-build show cloud --json
  before=$(jq -r .key <<<"$output")
  printf 'changed\n' >"$XDG_CONFIG_HOME/pim/sources.d/extra.txt"
  run --separate-stderr pim-build run cloud --timeout 1
  # a miss starts a build (which the 1 s bound ends): not the cached path
  [ "$status" -eq 75 ]
  printf 'a file from sources.d\n' >"$XDG_CONFIG_HOME/pim/sources.d/extra.txt"
  run pim-build show cloud --json
  [ "$(jq -r .key <<<"$output")" = "$before" ]
  [ -z "$(find "$(builds_dir)" -maxdepth 1 -name '.tmp-*')" ]
}

@test "cloud-init's errors fail the build with its words (65), and nothing is left" {
  run --separate-stderr pim-build run cierror
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"cloud-init reported 1 error: runcmd: /tmp/runcmd.sh failed with status 3"* ]]
  [[ "$stderr" == *"(build log: "* ]]
  no_build_leftovers cierror
}

@test "user-data that never powers off ends at the build's timeout (75), naming power_state" {
  run --separate-stderr pim-build run nopower
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"cloud-init did not power off within the build's 20 s"* ]]
  [[ "$stderr" == *"power_state"* ]]
  no_build_leftovers nopower
}

@test "builder and catalog kind must agree; a profile without an image is 78" {
  run --separate-stderr pim-build run isoimage
  [ "$status" -eq 78 ]
  [[ "$stderr" == *'image: "tb-di" is an installer ISO'* ]]
  [[ "$stderr" == *"profiles.d/tb.yml:"* ]]
  run --separate-stderr pim-build run installerimage
  [ "$status" -eq 78 ]
  [[ "$stderr" == *'iso: "tb-cloud" is a disk image (kind: image)'* ]]
  run --separate-stderr pim-build run noimage
  [ "$status" -eq 78 ]
  [[ "$stderr" == *"names no image"* ]]
}

@test "a base image with a backing file is refused (65); a disk_size below the image's is 78; nothing is left" {
  run --separate-stderr pim-build run backed
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"has a backing file"* ]]
  no_build_leftovers backed
  run --separate-stderr pim-build run shrink
  [ "$status" -eq 78 ]
  [[ "$stderr" == *"disk_size 32M is smaller than tb-cloud's"* ]]
  no_build_leftovers shrink
}
