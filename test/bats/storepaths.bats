#!/usr/bin/env bats
# "Builds never change" whatever the spelling of a path: pim-snapshot and
# pim-build rm decide what is a stored build by the file (real path, device
# and inode), not by how its path is written. A raw build (no VM: an empty
# qcow2 disk, registered as any build) is the stored build here; the store
# disk backed by it is made as pim-run makes one (qemu-img create -b).
load helper
bats_require_minimum_version 1.5.0

setup_file() {
  pim_isolate
  mkdir -p "$XDG_CONFIG_HOME/pim/profiles.d"
  echo 'blank: {builder: raw, disk_size: 16M}' >"$XDG_CONFIG_HOME/pim/profiles.d/t.yml"
  pim-build run blank >/dev/null
  # the same data dir, spelled through a symbolic link
  ln -s "$XDG_DATA_HOME" "$PIM_TMP/data-link"
}

teardown_file() {
  pim_cleanup
}

build_path() { pim-build path blank; }

@test "pim-snapshot refuses a build's image spelled through a link, a hard link, or a linked XDG_DATA_HOME (77); the build's sha256 is unchanged" {
  local path sum via
  path=$(build_path)
  sum=$(sha256sum <"$path")
  via="$PIM_TMP/data-link/${path#"$XDG_DATA_HOME"/}"
  [ -f "$via" ]
  ln -s "$path" "$PIM_TMP/link.qcow2"
  ln "$path" "$PIM_TMP/hard.qcow2"
  for target in "$PIM_TMP/link.qcow2" "$via" "$PIM_TMP/hard.qcow2"; do
    run --separate-stderr pim-snapshot "$target" save s1
    [ "$status" -eq 77 ]
    [[ "$stderr" == *"builds never change"* ]]
  done
  run --separate-stderr env XDG_DATA_HOME="$PIM_TMP/data-link" pim-snapshot "$path" save s1
  [ "$status" -eq 77 ]
  run --separate-stderr env XDG_DATA_HOME="$PIM_TMP/data-link" pim-snapshot "$via" save s1
  [ "$status" -eq 77 ]
  [ "$(sha256sum <"$path")" = "$sum" ]
  [ -z "$(qemu-img snapshot -l -U "$path")" ]
  rm "$PIM_TMP/link.qcow2" "$PIM_TMP/hard.qcow2"
}

@test "pim-run of a build's image through a link boots the store overlay, never the build itself; the build's sha256 is unchanged" {
  local path sum image
  path=$(build_path)
  sum=$(sha256sum <"$path")
  ln -sf "$path" "$PIM_TMP/run-link.qcow2"
  run --separate-stderr pim-run "$PIM_TMP/run-link.qcow2" --name vialink --mem 128M --cpus 1
  [ "$status" -eq 0 ]
  image=$(jq -r .image "$XDG_RUNTIME_DIR/pim/vialink.json")
  [ "$image" = "$XDG_DATA_HOME/pim/images/vialink.qcow2" ]
  [ "$(qemu-img info -U --output=json "$image" | jq -r '."backing-filename"')" = "$path" ]
  pim-stop vialink --force >/dev/null
  [ "$(sha256sum <"$path")" = "$sum" ]
  rm -f "$image" "$PIM_TMP/run-link.qcow2"
}

@test "pim-build rm keeps a build a store disk is backed by (75), with XDG_DATA_HOME or the backing file spelled through a link" {
  local path images
  path=$(build_path)
  images="$XDG_DATA_HOME/pim/images"
  mkdir -p "$images" && chmod 700 "$images"
  qemu-img create -q -f qcow2 -F qcow2 -b "$path" "$images/blank.qcow2"
  run --separate-stderr env XDG_DATA_HOME="$PIM_TMP/data-link" pim-build rm blank
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"images/blank.qcow2"* ]]
  [ -f "$path" ]
  rm "$images/blank.qcow2"
  # the backing file recorded through the link, the store spelled plainly
  qemu-img create -q -f qcow2 -F qcow2 -b "$PIM_TMP/data-link/${path#"$XDG_DATA_HOME"/}" "$images/other.qcow2"
  run --separate-stderr pim-build rm blank
  [ "$status" -eq 75 ]
  [[ "$stderr" == *"images/other.qcow2"* ]]
  [ -f "$path" ]
  # and a relative backing file
  rm "$images/other.qcow2"
  (cd "$images" && qemu-img create -q -f qcow2 -F qcow2 -b "../builds/${path#"$XDG_DATA_HOME"/pim/builds/}" rel.qcow2)
  run pim-build rm blank
  [ "$status" -eq 75 ]
  [ -f "$path" ]
  # once no disk is backed by it, it goes
  rm "$images/rel.qcow2"
  run pim-build rm blank
  [ "$status" -eq 0 ]
  [ ! -e "$path" ]
}
