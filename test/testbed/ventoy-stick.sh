#!/usr/bin/env bash
# A stand-in Ventoy stick as an image file, without Ventoy and without a loop
# device: ventoy-stick.sh IMAGE MIB [mbr|gpt]
#   partition 1 at sector 2048 to the start of partition 2: exFAT labelled Ventoy
#   (MBR: type 7, bootable); partition 2 the last 65536 sectors (GPT: the last
#   usable ones), FAT16 labelled VTOYEFI with /grub/grub.cfg setting
#   VENTOY_VERSION="1.1.17". Each file system is made in a file of its own and
#   copied into place (dd conv=notrunc). Ventoy's own `Ventoy2Disk.sh -l`
#   accepts this layout.
set -euo pipefail
img=$1 mib=$2 style=${3:-mbr}
total=$((mib * 2048))
end=$total
[ "$style" = gpt ] && end=$((total - 34))
p2=$((end - 65536))
p1size=$((p2 - 2048))
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -f "$img"
truncate -s "${mib}M" "$img"
if [ "$style" = gpt ]; then
  printf 'label: gpt\nstart=2048, size=%d, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=Ventoy\nstart=%d, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=VTOYEFI\n' "$p1size" "$p2"
else
  printf 'label: dos\nstart=2048, size=%d, type=7, bootable\nstart=%d, size=65536, type=ef\n' "$p1size" "$p2"
fi | sfdisk -q "$img"
truncate -s $((p1size * 512)) "$tmp/p1"
mkfs.exfat -L Ventoy "$tmp/p1" >/dev/null
dd if="$tmp/p1" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
truncate -s 32M "$tmp/p2"
mkfs.vfat -F 16 -n VTOYEFI "$tmp/p2" >/dev/null 2>&1
printf 'set VENTOY_VERSION="1.1.17"\n' >"$tmp/grub.cfg"
mmd -i "$tmp/p2" ::/grub
mcopy -i "$tmp/p2" "$tmp/grub.cfg" ::/grub/grub.cfg
dd if="$tmp/p2" of="$img" bs=512 seek="$p2" conv=notrunc,sparse status=none
