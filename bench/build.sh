#!/usr/bin/env bash
# pim-build against the Packer QEMU builder (Debian's packer 1.6.6), side by
# side under TCG on the same installer ISO (the test bed's di.iso) and the same
# answer file, to the same result: an installed, provisioned qcow2.
#
#   bench/build.sh [RUNS]      (default 3 runs each, alternating)
#
# Packer boots the ISO from the CD, waits boot_wait, types its boot_command
# over VNC at the isolinux prompt, serves the preseed from http_directory,
# keeps the same VM across the installer's reboot, waits for SSH, runs the
# script, then its shutdown_command. pim-build boots the installer's kernel
# directly with the URL on its command line, waits for the installer to power
# off, boots the disk, pins the host key through the guest agent, provisions
# over one SSH connection and stops the guest. The answer file is pim's
# rendered preseed for both; for Packer its last line says reboot rather than
# power off, because Packer installs and provisions in one boot.
#
# Also: a cache hit, for the whole `pim-build run` process (target <= 0.5 s).
# Prints a table; target: pim <= 0.5x Packer. Installs packer and hyperfine
# with apt-get when they are missing.
source "$(dirname "$0")/common.sh"
runs=${1:-3}
bench_install packer hyperfine
bash test/testbed/installer/build.sh
iso="$testbed/installer/di.iso"

# the ISO through pim's catalog, from a loopback server (downloaded once, before timing)
bench_www "$iso"
c="$XDG_CONFIG_HOME/pim"
mkdir -p "$c/isos.d" "$c/profiles.d" "$c/scripts.d" "$c/installs.d"
echo "tb: {url: \"$u/di.iso\", checksum_url: \"$u/SHA256SUMS\", distro: debian}" >"$c/isos.d/tb.yml"
cat >"$c/profiles.d/tb.yml" <<EOF
bench:
  iso: tb
  ssh_user: root
  ssh_keys: ["$(cat "$testbed/id_ed25519.pub")"]
  keep_build_key: true
  disk_size: 256M
  mem: 256M
  cpus: 1
  scripts: [provision.sh]
EOF
printf '#!/bin/sh\nset -e\necho "provisioned $(hostname)" >/root/provisioned\n' >"$c/scripts.d/provision.sh"
printf '#!/bin/sh\necho late >/etc/pim-late-command\n' >"$c/installs.d/bench.sh"
pim-iso download tb >/dev/null 2>&1

# Packer: the same preseed, rendered by pim for the profile (Packer fills in its own URL)
mkdir -p "$tmp/packer/http/installs.d"
pim_answer bench /preseed.cfg http://PACKER_URL | sed 's|http://PACKER_URL|http://10.0.2.2:{{ .HTTPPort }}|g; s|exit/poweroff boolean true|exit/poweroff boolean false|' >"$tmp/packer/preseed.tmpl"
cp "$c/installs.d/bench.sh" "$tmp/packer/http/installs.d/bench.sh"
cp "$c/scripts.d/provision.sh" "$tmp/packer/provision.sh"
sum=$(sha256sum "$iso" | cut -d' ' -f1)
cat >"$tmp/packer/template.json" <<EOF
{
  "builders": [{
    "type": "qemu",
    "iso_url": "file://$iso",
    "iso_checksum": "sha256:$sum",
    "accelerator": "tcg",
    "headless": true,
    "memory": 256,
    "cpus": 1,
    "disk_size": "256M",
    "format": "qcow2",
    "disk_interface": "virtio",
    "net_device": "virtio-net",
    "http_directory": "http",
    "boot_wait": "3s",
    "boot_command": ["<esc><wait>install auto=true priority=critical url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/preseed.cfg console=ttyS0 ---<enter>"],
    "ssh_username": "root",
    "ssh_private_key_file": "$testbed/id_ed25519",
    "ssh_timeout": "10m",
    "shutdown_command": "/sbin/shutdown -h now",
    "output_directory": "out",
    "vm_name": "bench.qcow2",
    "qemuargs": [["-serial", "file:serial.log"]]
  }],
  "provisioners": [{"type": "shell", "script": "provision.sh"}]
}
EOF
# Packer serves http_directory as it is, so the preseed cannot learn Packer's
# port from a template: the port is fixed with http_port_min = http_port_max.
hport=$((20000 + RANDOM % 20000))
sed -i "s|\"http_directory\": \"http\",|\"http_directory\": \"http\", \"http_port_min\": $hport, \"http_port_max\": $hport,|" "$tmp/packer/template.json"
sed "s|{{ .HTTPPort }}|$hport|g" "$tmp/packer/preseed.tmpl" >"$tmp/packer/http/preseed.cfg"

packer_run() {
  (cd "$tmp/packer" && rm -rf out && PACKER_LOG=0 timeout 600 packer build -color=false template.json >"$tmp/packer.log" 2>&1) ||
    { echo "bench: packer failed; last lines of its log and of the VM's console:" >&2; tail -n 20 "$tmp/packer.log" "$tmp/packer/serial.log" >&2; exit 70; }
}
pim_run() { pim-build run bench --force >/dev/null 2>>"$tmp/pim.log"; }

declare -a tp tq
[ -n "${PIM_BENCH_PACKER_ONLY:-}" ] && { packer_run; echo "bench: packer ok" >&2; exit 0; }
for i in $(seq "$runs"); do
  s=$(date +%s.%N); pim_run; e=$(date +%s.%N); tp+=("$(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.2f", b - a }')")
  s=$(date +%s.%N); packer_run; e=$(date +%s.%N); tq+=("$(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.2f", b - a }')")
  echo "bench: run $i: pim-build ${tp[-1]} s, packer ${tq[-1]} s" >&2
done
mp=$(median "${tp[@]}")
mq=$(median "${tq[@]}")
hyperfine -N --warmup 2 --runs 20 --export-json "$tmp/hit.json" 'pim-build run bench' >/dev/null 2>&1
hit=$(jq -r '.results[0].median' "$tmp/hit.json")
printf '%-40s %10s\n' "measure (median of $runs, TCG)" "seconds"
printf '%-40s %10.2f\n' "pim-build run (a miss, --force)" "$mp"
printf '%-40s %10.2f\n' "packer build (qemu builder)" "$mq"
printf '%-40s %10.2f  (target <= 0.50)\n' "ratio pim / packer" "$(awk -v a="$mp" -v b="$mq" 'BEGIN { print a / b }')"
printf '%-40s %10.3f  (target <= 0.5)\n' "pim-build run, a cache hit (process)" "$hit"
