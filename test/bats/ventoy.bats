#!/usr/bin/env bats
# pim-ventoy on stand-in sticks (test/testbed/ventoy-stick.sh: Ventoy's layout, exFAT
# and a FAT16 VTOYEFI with a grub.cfg, no Ventoy), as root: loop devices, exfat-fuse
# (this kernel has neither vfat nor exfat), a catalog served from loopback.
# Loop devices are shared with whatever else runs here: the tests detach only the
# ones they attached, by name.
load helper

setup_file() {
  pim_isolate
  [ "$(id -u)" -eq 0 ] || skip "needs root: loop devices and mounts"
  export W="$PIM_TMP/www"
  mkdir -p "$W" "$XDG_CONFIG_HOME/pim/isos.d" "$XDG_CONFIG_HOME/pim/profiles.d"
  head -c 3000000 /dev/urandom >"$W/small.iso"
  head -c 9000000 /dev/urandom >"$W/big.iso"
  python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$W" >"$PIM_TMP/http.log" 2>&1 3>&- </dev/null &
  echo $! >"$PIM_TMP/http.pid"
  for _ in $(seq 50); do grep -q 'port [0-9]' "$PIM_TMP/http.log" && break; sleep 0.1; done
  local port sum
  port=$(sed -nE 's/.* port ([0-9]+).*/\1/p' "$PIM_TMP/http.log" | head -1)
  {
    for n in small big; do
      sum=$(sha256sum "$W/$n.iso" | cut -d' ' -f1)
      printf '%s:\n  url: http://127.0.0.1:%s/%s.iso\n  checksum: sha256:%s\n' "$n" "$port" "$n" "$sum"
    done
    printf 'wrong:\n  url: http://127.0.0.1:%s/small.iso\n  checksum: sha256:%064d\n' "$port" 0
  } >"$XDG_CONFIG_HOME/pim/isos.d/test.yml"
  ssh-keygen -q -t ed25519 -N '' -C ventoy-test -f "$PIM_TMP/key"
  printf 'dev:\n  hostname: devbox\n  iso: small\n  packages: [htop]\nub:\n  distro: ubuntu\n  hostname: ubox\n  iso: small\n  ssh_keys: ["%s"]\n' "$(cat "$PIM_TMP/key.pub")" >"$XDG_CONFIG_HOME/pim/profiles.d/test.yml"
  bash "$REPO/test/testbed/ventoy-stick.sh" "$PIM_TMP/master-mbr.img" 96
  bash "$REPO/test/testbed/ventoy-stick.sh" "$PIM_TMP/master-gpt.img" 96 gpt
  bash "$REPO/test/testbed/ventoy-stick.sh" "$PIM_TMP/master-tiny.img" 40
}

teardown_file() {
  [ -n "${PIM_TMP:-}" ] || return 0
  [ -f "$PIM_TMP/http.pid" ] && kill "$(cat "$PIM_TMP/http.pid")" 2>/dev/null
  pim_cleanup
}

setup() {
  STICK="$PIM_TMP/stick-$BATS_TEST_NUMBER.img"
  cp --sparse=always "$PIM_TMP/master-mbr.img" "$STICK"
  MNT="$PIM_TMP/mnt"
  mkdir -p "$MNT"
}

teardown() {
  mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"
  # a swap area or a device-mapper device this test made on its own loop device
  [ -f "$PIM_TMP/swapon" ] && { swapoff "$(cat "$PIM_TMP/swapon")" 2>/dev/null; rm -f "$PIM_TMP/swapon"; }
  [ -f "$PIM_TMP/dm" ] && { dmsetup remove "$(cat "$PIM_TMP/dm")" 2>/dev/null; rm -f "$PIM_TMP/dm"; }
  local l
  for l in $(cat "$PIM_TMP/loops" 2>/dev/null); do detach "$l"; done
  rm -f "$PIM_TMP"/stick-*.img
}

# attach IMG: a loop device of the test's own, in $LOOP (partitions read with partx -u)
attach() {
  LOOP=$(losetup -f --show -P "$1")
  echo "$LOOP" >>"$PIM_TMP/loops"
  partx -u "$LOOP" 2>/dev/null || true # a blank image has no table to read
}
# detach LOOP: only a loop device this test attached, and only once
detach() {
  grep -qx "$1" "$PIM_TMP/loops" 2>/dev/null || return 0
  losetup -d "$1" 2>/dev/null || true
  # a FUSE daemon may hold it a moment after umount (the detach waits for it, with its last writes)
  for _ in $(seq 200); do [ -e "/sys/block/${1#/dev/}/loop/backing_file" ] || break; sleep 0.05; done
  grep -vx "$1" "$PIM_TMP/loops" >"$PIM_TMP/loops.new" || true
  mv "$PIM_TMP/loops.new" "$PIM_TMP/loops"
}
# on IMG CMD...: run CMD with the image's partition 1 mounted at $MNT (exfat-fuse), then clean up
on() {
  local img=$1; shift
  attach "$img"
  mount.exfat-fuse "${LOOP}p1" "$MNT" >/dev/null 2>&1
  local rc=0
  "$@" || rc=$?
  umount "$MNT"
  detach "$LOOP"
  return $rc
}
# nothing of pim's is left: no loop device on the image, no mount dir in the runtime dir
clean_after() {
  [ -z "$(losetup -j "$1")" ] || { echo "loop left: $(losetup -j "$1")"; return 1; }
  ! ls -d "$XDG_RUNTIME_DIR"/pim/ventoy.* 2>/dev/null || { echo "mount dir left"; return 1; }
}

@test "list reads MBR and GPT sticks without mounting: lines, --json, and a stick found without --stick" {
  cp --sparse=always "$PIM_TMP/master-gpt.img" "$PIM_TMP/stick-gpt.img"
  run --separate-stderr pim-ventoy list --stick "$STICK"
  [ "$status" -eq 0 ]
  [[ "$output" =~ ^"$STICK"$'\t'100663296$'\t'1.1.17$'\t'mbr$'\t'[0-9]+$'\t'-$ ]]
  run --separate-stderr pim-ventoy list --stick "$PIM_TMP/stick-gpt.img" --json
  [ "$status" -eq 0 ]
  [ "$(jq -r '[.version, .style, .size, (.free > 50000000), (.isos | length)] | @tsv' <<<"$output")" = $'1.1.17\tgpt\t100663296\ttrue\t0' ]
  # a loop device of a stick is a disk like any other: list finds it among this machine's
  attach "$PIM_TMP/stick-gpt.img"
  run --separate-stderr pim-ventoy list
  [ "$status" -eq 0 ]
  [[ "$output" == *"$LOOP	100663296	1.1.17	gpt	"* ]]
  [ -z "$(grep -F "$LOOP" /proc/self/mountinfo)" ]
  run pim-ventoy list --stick "$PIM_TMP/nothing.img"
  [ "$status" -eq 66 ]
}

@test "a plain disk image and a mounted stick are refused" {
  truncate -s 64M "$PIM_TMP/stick-plain.img"
  printf 'label: dos\nstart=2048, type=83\n' | sfdisk -q "$PIM_TMP/stick-plain.img"
  run --separate-stderr pim-ventoy list --stick "$PIM_TMP/stick-plain.img"
  [ "$status" -eq 65 ]
  [[ "$stderr" == *"is not a Ventoy disk: it does not have two partitions"* ]]
  run --separate-stderr pim-ventoy add small --stick "$PIM_TMP/stick-plain.img"
  [ "$status" -eq 65 ]
  attach "$STICK"
  mount.exfat-fuse "${LOOP}p1" "$MNT" >/dev/null 2>&1
  run --separate-stderr pim-ventoy add small --stick "$STICK"
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"${LOOP}p1 is mounted at $MNT"* ]]
  run --separate-stderr pim-ventoy verify --stick "$LOOP"
  [ "$status" -eq 75 ]
  [ ! -e "$MNT/small.iso" ]
  umount "$MNT"
  detach "$LOOP"
  clean_after "$STICK"
}

@test "add downloads and verifies the ISO, copies it with a sidecar, reads it back; a second add skips it" {
  run --separate-stderr pim-ventoy add small --stick "$STICK" --dir /iso
  [ "$status" -eq 0 ]
  [[ "$output" =~ ^small$'\t'added$'\t'/iso/small.iso$'\t'[0-9a-f]{64}$'\t' ]]
  [[ "$stderr" == *"reading the copy back"* ]]
  clean_after "$STICK"
  check() {
    cmp "$MNT/iso/small.iso" "$W/small.iso"
    (cd "$MNT/iso" && sha256sum -c --quiet small.iso.sha256)
    [ ! -e "$MNT/iso/small.iso.part" ]
  }
  on "$STICK" check
  run --separate-stderr pim-ventoy list --stick "$STICK" --json
  [ "$(jq -c .isos <<<"$output")" = '["/iso/small.iso"]' ]
  run --separate-stderr pim-ventoy add small --stick "$STICK" --dir /iso
  [ "$status" -eq 0 ]
  [[ "$output" == "small	skipped	/iso/small.iso	"* ]]
  # an ISO that does not match the catalog never reaches the stick
  run --separate-stderr pim-ventoy add wrong --stick "$STICK"
  [ "$status" -eq 65 ]
  run --separate-stderr pim-ventoy list --stick "$STICK" --json
  [ "$(jq -c .isos <<<"$output")" = '["/iso/small.iso"]' ]
  run pim-ventoy add small --stick "$STICK" --dir 'a:b'
  [ "$status" -eq 64 ]
}

@test "add refuses a stick that is too small before copying anything" {
  cp --sparse=always "$PIM_TMP/master-tiny.img" "$STICK"
  before=$(pim-ventoy list --stick "$STICK" --json | jq .free)
  run --separate-stderr pim-ventoy add small big --stick "$STICK"
  [ "$status" -eq 73 ]
  [[ "$stderr" == *"not enough space on $STICK: small, big need"* ]]
  run --separate-stderr pim-ventoy list --stick "$STICK" --json
  [ "$(jq -c '[.free, .isos]' <<<"$output")" = "[$before,[]]" ]
  clean_after "$STICK"
}

@test "configure renders the profiles onto the stick and merges only pim's entries into ventoy.json" {
  pim-ventoy add small --stick "$STICK" >/dev/null 2>&1
  user_json() {
    mkdir -p "$MNT/ventoy"
    printf '{\n  "theme": {"file": "/ventoy/theme/blur/theme.txt", "gfxmode": "1920x1080"},\n  "auto_install": [\n    {"image": "/mine.iso", "template": "/ventoy/script/mine.cfg"}\n  ]\n}\n' >"$MNT/ventoy/ventoy.json"
    cp "$MNT/ventoy/ventoy.json" "$PIM_TMP/user.json"
  }
  on "$STICK" user_json
  run --separate-stderr pim-ventoy configure dev ub --stick "$STICK"
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "dev	small	/small.iso	/ventoy/pim/dev.preseed.cfg" ]
  [ "${lines[1]}" = "ub	small	/small.iso	/ventoy/pim/ub.autoinstall.yaml" ]
  # dev has no key and no password: one line says its system has no way in; ub has a key
  [ "$(grep -c 'has no ssh_keys and no password' <<<"$stderr")" -eq 1 ]
  [[ "$stderr" == *'pim-ventoy: warning: profile "dev" has no ssh_keys and no password: the system it installs has no way in'* ]]
  clean_after "$STICK"
  check() {
    local j=$MNT/ventoy/ventoy.json
    jq -e . "$j" >/dev/null
    [ "$(jq -c .theme "$j")" = "$(jq -c .theme "$PIM_TMP/user.json")" ]
    [ "$(jq -c '.auto_install[0]' "$j")" = '{"image":"/mine.iso","template":"/ventoy/script/mine.cfg"}' ]
    [ "$(jq -c '.auto_install[1]' "$j")" = '{"image":"/small.iso","template":["/ventoy/pim/dev.preseed.cfg","/ventoy/pim/ub.autoinstall.yaml"],"autosel":2,"timeout":10}' ]
    [ "$(jq 'keys | length' "$j")" = 2 ]
    cmp "$MNT/ventoy/ventoy.json.bak" "$PIM_TMP/user.json"
    # the preseed: the profile's settings, the install aimed at the first disk that is not the stick
    grep -qx 'd-i netcfg/get_hostname string devbox' "$MNT/ventoy/pim/dev.preseed.cfg"
    grep -qx 'd-i pkgsel/include string openssh-server qemu-guest-agent sudo cloud-init htop' "$MNT/ventoy/pim/dev.preseed.cfg"
    grep -qxF 'd-i partman-auto/disk string /dev/$$VT_LINUX_DISK_SDX_1ST_NONVTOY$$' "$MNT/ventoy/pim/dev.preseed.cfg"
    grep -qxF 'd-i grub-installer/bootdev string /dev/$$VT_LINUX_DISK_SDX_1ST_NONVTOY$$' "$MNT/ventoy/pim/dev.preseed.cfg"
    # Ubuntu's autoinstall starts with autoinstall:, as Ventoy expects
    [ "$(head -1 "$MNT/ventoy/pim/ub.autoinstall.yaml")" = "autoinstall:" ]
    grep -qF 'path: /dev/$$VT_LINUX_DISK_SDX_1ST_NONVTOY$$' "$MNT/ventoy/pim/ub.autoinstall.yaml"
    grep -q 'hostname: ubox' "$MNT/ventoy/pim/ub.autoinstall.yaml"
  }
  on "$STICK" check
  # again: the same entry, not a second one; this time dev is the one picked
  run --separate-stderr pim-ventoy configure dev --stick "$STICK"
  [ "$status" -eq 0 ]
  again() { [ "$(jq -c '[(.auto_install | length), .auto_install[1].autosel]' "$MNT/ventoy/ventoy.json")" = '[2,1]' ]; }
  on "$STICK" again
  # a profile's ISO that is not on the stick
  run --separate-stderr pim-ventoy configure dev --iso big --stick "$STICK"
  [ "$status" -eq 66 ]
  [[ "$stderr" == *"run pim-ventoy add big"* ]]
}

@test "a broken ventoy.json is exit 78 with FILE:LINE, and nothing is written" {
  pim-ventoy add small --stick "$STICK" >/dev/null 2>&1
  broken() {
    mkdir -p "$MNT/ventoy"
    printf '{\n  "theme": {"file": "/x"},\n  // a comment\n  "auto_install": []\n}\n' >"$MNT/ventoy/ventoy.json"
  }
  on "$STICK" broken
  run --separate-stderr pim-ventoy configure dev --stick "$STICK"
  [ "$status" -eq 78 ]
  [[ "$stderr" == "pim-ventoy: $STICK:/ventoy/ventoy.json:3: JSON syntax error: "*"(JSON has no comments)"*"nothing was written"* ]]
  untouched() {
    [ ! -e "$MNT/ventoy/pim" ]
    [ ! -e "$MNT/ventoy/ventoy.json.bak" ]
    grep -q '// a comment' "$MNT/ventoy/ventoy.json"
  }
  on "$STICK" untouched
  clean_after "$STICK"
}

@test "verify hashes every ISO again and catches a corrupted copy (65)" {
  pim-ventoy add small --stick "$STICK" >/dev/null 2>&1
  run --separate-stderr pim-ventoy verify --stick "$STICK"
  [ "$status" -eq 0 ]
  [[ "$output" =~ ^/small.iso$'\t'ok$'\t'[0-9a-f]{64}$ ]]
  corrupt() { printf 'X' | dd of="$MNT/small.iso" bs=1 seek=1000000 conv=notrunc,fsync status=none; }
  on "$STICK" corrupt
  run --separate-stderr pim-ventoy verify --stick "$STICK" --json
  [ "$status" -eq 65 ]
  [ "$(jq -r .status <<<"$output")" = mismatch ]
  [[ "$stderr" == *"/small.iso: sha256 "*"does not match its sidecar"* ]]
  clean_after "$STICK"
}

@test "eject syncs, unmounts what pim left mounted, and leaves fsck.exfat clean" {
  pim-ventoy add small --stick "$STICK" >/dev/null 2>&1
  pim-ventoy configure dev --stick "$STICK" >/dev/null 2>&1
  # a pim-ventoy killed before it could clean up left its mount behind
  attach "$STICK"
  mkdir -p "$XDG_RUNTIME_DIR/pim/ventoy.left"
  mount.exfat-fuse "${LOOP}p1" "$XDG_RUNTIME_DIR/pim/ventoy.left" >/dev/null 2>&1
  echo more >"$XDG_RUNTIME_DIR/pim/ventoy.left/note.txt"
  run --separate-stderr pim-ventoy eject --stick "$LOOP"
  [ "$status" -eq 0 ]
  [ "$output" = "$LOOP	yes	1	no" ]
  ! mountpoint -q "$XDG_RUNTIME_DIR/pim/ventoy.left"
  run fsck.exfat -n "${LOOP}p1"
  [ "$status" -eq 0 ]
  [[ "$output" == *"clean"* ]]
  detach "$LOOP"
  run --separate-stderr pim-ventoy eject --stick "$STICK"
  [ "$status" -eq 0 ]
  [ "$output" = "$STICK	yes	0	no" ]
}

@test "install refuses a disk with an active swap partition (75); Ventoy2Disk.sh never runs; after swapoff it does" {
  mkdir -p "$PIM_TMP/ventoy-sw"
  V="$PIM_TMP/ventoy-sw/Ventoy2Disk.sh"
  printf 'touch "$(dirname "$0")/ran"\n' >"$V"
  truncate -s 64M "$PIM_TMP/stick-swap.img"
  printf 'label: dos\n,32M,82\n,,83\n' | sfdisk -q "$PIM_TMP/stick-swap.img"
  attach "$PIM_TMP/stick-swap.img"
  [ -b "${LOOP}p1" ] && [ -b "${LOOP}p2" ]
  mkswap -q "${LOOP}p1"
  echo "${LOOP}p1" >"$PIM_TMP/swapon"
  swapon "${LOOP}p1"
  run --separate-stderr pim-ventoy install "$LOOP" --ventoy "$V" --yes
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"$LOOP has an active swap partition (${LOOP}p1); swapoff ${LOOP}p1 first"* ]]
  [ ! -e "$PIM_TMP/ventoy-sw/ran" ]
  swapoff "${LOOP}p1"
  rm "$PIM_TMP/swapon"
  # free again: it runs
  run --separate-stderr pim-ventoy install "$LOOP" --ventoy "$V" --yes
  [ "$status" -eq 0 ]
  [ -e "$PIM_TMP/ventoy-sw/ran" ]
}

@test "install refuses a disk that a device-mapper device holds (75)" {
  dmsetup targets >/dev/null 2>&1 || skip "no device-mapper in this kernel (the unit test reads a stand-in sysfs)"
  mkdir -p "$PIM_TMP/ventoy-dm"
  V="$PIM_TMP/ventoy-dm/Ventoy2Disk.sh"
  printf 'touch "$(dirname "$0")/ran"\n' >"$V"
  truncate -s 64M "$PIM_TMP/stick-dm.img"
  printf 'label: dos\n,32M,83\n,,83\n' | sfdisk -q "$PIM_TMP/stick-dm.img"
  attach "$PIM_TMP/stick-dm.img"
  local dm="pimtest-$$-$BATS_TEST_NUMBER"
  echo "$dm" >"$PIM_TMP/dm"
  echo "0 $(blockdev --getsz "${LOOP}p2") linear ${LOOP}p2 0" | dmsetup create "$dm"
  run --separate-stderr pim-ventoy install "$LOOP" --ventoy "$V" --yes
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"$LOOP is in use: ${LOOP}p2 by /dev/dm-"*"($dm)"* ]]
  [ ! -e "$PIM_TMP/ventoy-dm/ran" ]
  dmsetup remove "$dm"
  rm "$PIM_TMP/dm"
}

@test "install refuses without --yes, a mounted disk, a partition and the root disk; it answers Ventoy2Disk.sh's two prompts" {
  mkdir -p "$PIM_TMP/ventoy-1.1.17"
  V="$PIM_TMP/ventoy-1.1.17/Ventoy2Disk.sh"
  # a stand-in for Ventoy's script: records its argv, its directory and its two answers
  cat >"$V" <<'SH'
printf '%s\n' "$@" >"$(dirname "$0")/argv"
pwd >"$(dirname "$0")/cwd"
read -r a; read -r b
printf '%s %s\n' "$a" "$b" >"$(dirname "$0")/answers"
echo "Install Ventoy to $3 successfully finished."
SH
  truncate -s 64M "$PIM_TMP/stick-blank.img"
  attach "$PIM_TMP/stick-blank.img"
  run --separate-stderr pim-ventoy install "$LOOP" --ventoy "$V"
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"install erases everything on $LOOP; run again with --yes"* ]]
  [ ! -e "$PIM_TMP/ventoy-1.1.17/argv" ]
  run --separate-stderr pim-ventoy install "$LOOP" --ventoy "$V" --gpt --reserve 16 --yes
  [ "$status" -eq 0 ]
  [ "$output" = "$LOOP	installed	gpt" ]
  [ "$(cat "$PIM_TMP/ventoy-1.1.17/argv" | tr '\n' ' ')" = "-i -g -r 16 $LOOP " ]
  [ "$(cat "$PIM_TMP/ventoy-1.1.17/answers")" = "y y" ]
  [ "$(cat "$PIM_TMP/ventoy-1.1.17/cwd")" = "$PIM_TMP/ventoy-1.1.17" ]
  rm "$PIM_TMP/ventoy-1.1.17/argv"
  detach "$LOOP"
  attach "$STICK"
  mount.exfat-fuse "${LOOP}p1" "$MNT" >/dev/null 2>&1
  run --separate-stderr pim-ventoy install "$LOOP" --ventoy "$V" --yes
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"has a mounted partition (${LOOP}p1 at $MNT)"* ]]
  run --separate-stderr pim-ventoy install "${LOOP}p1" --ventoy "$V" --yes
  [ "$status" -eq 64 ]
  [[ "$stderr" == *"is a partition, not a whole disk"* ]]
  root=$(findmnt -no SOURCE / | sed -E 's/p?[0-9]+$//')
  if [ -b "$root" ]; then
    run --separate-stderr pim-ventoy install "$root" --ventoy "$V" --yes
    [ "$status" -eq 64 ]
    [[ "$stderr" == *'holds "/", the system you are running: refused'* ]]
  fi
  run pim-ventoy install "$STICK" --ventoy "$V" --yes
  [ "$status" -eq 64 ]
  [ ! -e "$PIM_TMP/ventoy-1.1.17/argv" ]
}
