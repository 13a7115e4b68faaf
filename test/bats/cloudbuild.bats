#!/usr/bin/env bats
# pim-build's builder: cloud-init end to end under TCG, with the test bed's
# cloud image (test/testbed/installer/build.sh: cloud.qcow2, whose stand-in
# cloud-init applies a NoCloud seed labelled cidata in two stages, as the real
# one does: result.json removed as the guest boots, written again after SSH
# answers). The image is downloaded and verified through the catalog (kind:
# image) from a loopback HTTP server, copied and grown, booted once with its
# seed, cloud-init waited for over SSH, provisioned, generalized, stored; then
# booted with pim-run. These are the fast failure cases; realcloud.bats builds
# from a real Debian cloud image with the real cloud-init.
load helper
load build

setup_file() {
  build_home
  need_installer
  qemu-img create -q -f qcow2 -F qcow2 -b "$TESTBED/installer/cloud.qcow2" "$PIM_TMP/backed.qcow2"
  build_www "$TESTBED/installer/cloud.qcow2" "$PIM_TMP/backed.qcow2" "$TESTBED/installer/di.iso"
  {
    www_entry tb-cloud cloud.qcow2 'kind: image'
    www_entry tb-backed backed.qcow2 'kind: image'
    www_entry tb-di di.iso 'distro: debian'
  } >"$C/isos.d/tb.yml"
  cat >"$C/profiles.d/tb.yml" <<EOF
$(tb_defaults 'builder: cloud-init' 'image: tb-cloud' 'hostname: cloudy' 'disk_size: 128M' 'timeout: 240' 'scripts: [provision.sh]')
cloud:
  compress: true
  sources: [extra.txt]
  cloud_config:
    write_files: [{path: /etc/pim-motd, content: "built from a cloud image\n", permissions: "0600"}]
    runcmd: ["hostname > /root/runcmd-hostname", [cp, /run/cidata/extra.txt, /root/extra from seed]]
cierror: {cloud_config: {runcmd: ["echo about to fail", "exit 3"]}}
neverdone: {timeout: 150, cloud_config: {runcmd: ["sleep 600"]}}
badscript: {scripts: [fail.sh]}
rawforce: {builder: raw, disk_size: 16M}
isoimage: {image: tb-di}
noimage: {image: ""}
backed: {image: tb-backed}
shrink: {disk_size: 32M}
installerimage: {builder: installer, iso: tb-cloud}
EOF
  printf 'a file from sources.d\n' >"$C/sources.d/extra.txt"
  printf '#!/bin/sh\necho "this script fails"\nexit 3\n' >"$C/scripts.d/fail.sh"
  cat >"$C/scripts.d/provision.sh" <<'EOF'
#!/bin/sh
set -e
echo "provisioning $(hostname)"
echo "provisioned by pim-build" >/root/provisioned
EOF
}

teardown_file() { build_teardown; }

@test "a cloud-init profile builds end to end: the seed's user-data, write_files, runcmd and sources applied, provisioned, stored, boots with pim-run" {
  run --separate-stderr pim-build run cloud
  [ "$status" -eq 0 ] || { build_log_tail "$stderr"; false; }
  img="$output"
  [ "$(printf '%s\n' "$output" | wc -l)" -eq 1 ]
  [ -f "$img" ] && [ ! -w "$img" -o "$(id -u)" -eq 0 ]
  # one boot: the seed's run waited for over SSH, after the stand-in's late result.json
  [[ "$stderr" == *"cloud-init finished without errors (DataSourceNoCloud"* ]]
  [[ "$stderr" != *"powered"* ]]
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
  # a generalized build's boot makes one host key (its vendor-data); the clones make their own
  grep -q 'seed: vendor-data: one SSH host key (ed25519)' "$log"
  grep -q 'pim-testbed cloud-init: runcmd done' "$log"
  grep -q 'cloud-init status --wait --long: status 0:' "$log"
  grep -q '"status": "done"' "$log"
  # the install stage was taken live, in the same boot: one kernel started
  grep -q 'install stage taken live' "$log"
  [ "$(grep -c 'Linux version' "$log")" -eq 1 ]
  # generalized, then stored with qemu-img convert -c: smaller than the disk the build VM left
  grep -q '^pim: cloud-init clean --logs' "$log"
  grep -q '^pim: fstrim' "$log"
  read -r kept left < <(sed -n 's/.*stored: cloud.qcow2 \([0-9]*\) bytes (compressed); the build VM left \([0-9]*\) bytes$/\1 \2/p' "$log")
  [ "$kept" -lt "$left" ]
  [ "$(qemu-img check --output=json "$img" | jq '."compressed-clusters"')" -gt 0 ]

  boot_build cloud c1
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat /etc/pim-motd)" = "built from a cloud image" ]
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- stat -c %a /etc/pim-motd)" = 600 ]
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat /root/runcmd-hostname)" = cloudy ]
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat "'/root/extra from seed'")" = "a file from sources.d" ]
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat /root/provisioned)" = "provisioned by pim-build" ]
  # pim's per-build key is gone; the profile's key and the user's own pim key are the only ones
  [ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cat /root/.ssh/authorized_keys | sort)" = "$(printf '%s\n' "$(cat "$TESTBED/id_ed25519.pub")" "$(pim-ssh --pubkey)" | sort)" ]
  # cloud-init's instance state was cleaned: this boot (no seed) is a new instance of its own
  ! pim-ssh c1 -i "$TESTBED/id_ed25519" -- test -e /var/lib/cloud/data/instance-id
  [[ "$(pim-ssh c1 -i "$TESTBED/id_ed25519" -- cloud-init status --wait --long)" == *"DataSourceNone"* ]]

  # --force would replace the build under the overlay pim-run made: refused before building
  run --separate-stderr pim-build run cloud --force
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"backs "*"remove that disk first and build again with --force"* ]]
  pim-stop c1

  # the same inputs again: a cache hit, no VM
  run --separate-stderr pim-build run cloud
  [ "$status" -eq 0 ]
  [ "$output" = "$img" ]
  [[ "$stderr" == *"(cached)"* ]]

  # a changed script: the install stage (cloud-init's seeded run) is reused, only provisioning runs
  cp "$XDG_CONFIG_HOME/pim/scripts.d/provision.sh" "$PIM_TMP/provision.sh.orig"
  printf 'echo "script version two" >/root/v2\n' >>"$XDG_CONFIG_HOME/pim/scripts.d/provision.sh"
  run --separate-stderr pim-build run cloud
  cp "$PIM_TMP/provision.sh.orig" "$XDG_CONFIG_HOME/pim/scripts.d/provision.sh"
  [ "$status" -eq 0 ] || { build_log_tail "$stderr"; false; }
  [ "$output" != "$img" ]
  [[ "$stderr" == *"reusing install "* ]]
  log2="$(dirname "$output")/build.log"
  grep -q 'reusing install stage' "$log2"
  [ "$(pim-build show cloud --json | jq -r '.stages[] | select(.stage == "install") | .how')" = reused ]
  pim-run "$output" --name c2 --mem 256M --cpus 1 --snapshot --wait ssh
  [ "$(pim-ssh c2 -i "$TESTBED/id_ed25519" -- cat /root/v2)" = "script version two" ]
  [ "$(pim-ssh c2 -i "$TESTBED/id_ed25519" -- cat /etc/pim-motd)" = "built from a cloud image" ]
  pim-stop c2
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
  [[ "$stderr" == *"cloud-init reported 1 error: modules-final: runcmd: /run/cloud-init/runcmd.sh failed with status 3"* ]]
  # the guest's own words from the console come with it
  [[ "$stderr" == *"The guest's console said:"*"pim-testbed cloud-init: ERROR: runcmd"* ]]
  [[ "$stderr" == *"(build log: "* ]]
  no_build_leftovers cierror
}

@test "cloud-init that never finishes ends at the build's timeout (75), naming cloud-init" {
  run --separate-stderr pim-build run neverdone
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"cloud-init did not finish within the build's 150 s"* ]]
  no_build_leftovers neverdone
}

@test "a failed script keeps the install stage: its log holds the provisioning boot's console, and the fixed script's rebuild reuses the stage" {
  stages() { find "$XDG_DATA_HOME/pim/stages" -mindepth 1 -maxdepth 1 -name 'install-*' -printf '%f\n' 2>/dev/null | sort; }
  before=$(stages)
  run --separate-stderr pim-build run badscript
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"provisioning script scripts.d/fail.sh failed with status 3"* ]]
  log=$(build_log_of "$stderr")
  [ -f "$log" ]
  grep -q '^===== provisioning console (at the failure) =====$' "$log"
  sed -n '/^===== provisioning console/,$p' "$log" | grep -q 'pim-testbed ready'
  no_build_leftovers badscript
  # cloud-init's run (the install stage, taken live) was stored before the script ran
  made=$(comm -13 <(echo "$before") <(stages))
  [ "$(wc -w <<<"$made")" -eq 1 ]
  [ "$(stat -c %a "$XDG_DATA_HOME/pim/stages/$made")" = 500 ]
  [ -z "$(find "$XDG_DATA_HOME/pim/stages" -maxdepth 1 -name '.*' ! -name '*.lock')" ]
  # the script fixed: only provisioning runs again, on that stage
  printf '#!/bin/sh\necho fixed-mark >/root/badscript-mark\n' >"$XDG_CONFIG_HOME/pim/scripts.d/fail.sh"
  run --separate-stderr pim-build run badscript
  [ "$status" -eq 0 ] || { build_log_tail "$stderr"; false; }
  [[ "$stderr" == *"reusing install ${made:8:8} (built "* ]]
  ! grep -q 'install stage taken live' "$(dirname "$output")/build.log"
  [ "$(stages)" = "$(printf '%s\n' $before $made | sort)" ]
  # the new script's mark is in the stored image (its root is p2, an ext4 at sector 67584)
  qemu-img convert -O raw "$output" "$PIM_TMP/badscript.raw"
  [ "$(debugfs -R 'cat /root/badscript-mark' "$PIM_TMP/badscript.raw?offset=$((67584 * 512))" 2>/dev/null)" = fixed-mark ]
  rm -f "$PIM_TMP/badscript.raw"
}

@test "--force replaces the registered build with the new one and reports the new build's time" {
  run --separate-stderr pim-build run rawforce
  [ "$status" -eq 0 ]
  img="$output"
  first=$(pim-build show rawforce --json | jq -r .created)
  run --separate-stderr pim-build run rawforce
  [[ "$stderr" == *"(cached)"* ]]
  run --separate-stderr pim-build run rawforce --force
  [ "$status" -eq 0 ]
  [ "$output" = "$img" ]
  [[ "$stderr" == *"built in"* ]]
  second=$(pim-build show rawforce --json | jq -r .created)
  [ "$second" != "$first" ]
  [[ "$second" > "$first" ]]
  [ "$(pim-build list --json | jq -s '[.[] | select(.profile == "rawforce")] | length')" -eq 1 ]
  [ -z "$(find "$(builds_dir)" -maxdepth 1 -name '.rm-*')" ]
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
