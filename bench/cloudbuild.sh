#!/usr/bin/env bash
# pim-build's builder: cloud-init against the Packer QEMU builder (Debian's
# packer 1.6.6), side by side under TCG on the same base image (the test bed's
# real Debian 12 cloud image, test/testbed/debian-cloud.sh), the same seed and
# the same script, to the same result: a provisioned qcow2.
#
#   bench/cloudbuild.sh [RUNS]      (default 1 run each, alternating;
#                                    PIM_BENCH_TOGETHER=1: each run both at once)
#
# pim-build: a copy of the image grown to disk_size, one boot with the NoCloud
# seed on a virtio disk, `cloud-init status --wait` over SSH, cloud-init's
# account judged, the script, generalized (cloud-init's state, machine-id, host
# keys, logs, fstrim), powered off at once, stored with qemu-img convert.
# Packer: disk_image: true (the same image, resized to disk_size), the same
# user-data and meta-data served from http_directory and named to cloud-init
# through `-smbios type=1,serial=ds=nocloud-net;s=http://HTTPIP:HTTPPORT/`,
# then over SSH `cloud-init status --wait` (as Packer's docs advise) and the
# same script, its shutdown_command, and its own qemu-img convert
# (skip_compaction: false).
#
# Prints the wall times, what each took after the guest's cloud-init said
# "finished" (the part that is the tool's own: the guest's boot and cloud-init's
# run are the same work for both, and on a loaded machine the noisiest part),
# the load average before each, and the stored sizes, as built and compressed (pim's
# `compress: true` and Packer's `disk_compression: true` both are qemu-img
# convert -c: the compressed size is that of the built image converted with -c).
# Targets: pim <= 0.8x Packer's time; pim's image no larger than Packer's.
source "$(dirname "$0")/common.sh"
runs=${1:-1}
bench_install packer
bash test/testbed/debian-cloud.sh
image="${PIM_DEBIAN_CLOUD_DIR:-$(dirname "$testbed")/debian-cloud}/debian-12-cloud.qcow2"
mem=1024 cpus=2 disk=3G

# the image through pim's catalog, from a loopback server (downloaded once, before timing)
bench_www "$image"
c="$XDG_CONFIG_HOME/pim"
mkdir -p "$c/isos.d" "$c/profiles.d" "$c/scripts.d"
echo "deb12: {kind: image, url: \"$u/debian-12-cloud.qcow2\", checksum_url: \"$u/SHA256SUMS\"}" >"$c/isos.d/deb.yml"
cat >"$c/profiles.d/bench.yml" <<EOF
bench:
  builder: cloud-init
  image: deb12
  hostname: bench
  ssh_user: admin
  ssh_keys: ["$(cat "$testbed/id_ed25519.pub")"]
  packages: []
  disk_size: $disk
  mem: ${mem}M
  cpus: $cpus
  timeout: 1800
  scripts: [provision.sh]
  cloud_config:
    write_files: [{path: /etc/motd, content: "built by a bench\n"}]
    runcmd: ["echo runcmd >/var/lib/bench-runcmd"]
EOF
printf '#!/bin/sh\nset -e\necho "provisioned $(hostname)" >/var/lib/bench-provisioned\n' >"$c/scripts.d/provision.sh"
pim-iso download deb12 >/dev/null 2>&1

# Packer: the same seed, rendered by pim for the profile (without pim's per-build key)
mkdir -p "$tmp/packer/http"
for r in user-data meta-data; do pim_answer bench "/$r" http://10.0.2.2:0 >"$tmp/packer/http/$r"; done
: >"$tmp/packer/http/vendor-data"
cp "$c/scripts.d/provision.sh" "$tmp/packer/provision.sh"
sum=$(sha256sum "$image" | cut -d' ' -f1)
cat >"$tmp/packer/template.json" <<EOF
{
  "builders": [{
    "type": "qemu",
    "iso_url": "file://$image",
    "iso_checksum": "sha256:$sum",
    "disk_image": true,
    "accelerator": "tcg",
    "headless": true,
    "memory": $mem,
    "cpus": $cpus,
    "disk_size": "$disk",
    "format": "qcow2",
    "disk_interface": "virtio",
    "net_device": "virtio-net",
    "http_directory": "http",
    "boot_wait": "1s",
    "ssh_username": "admin",
    "ssh_private_key_file": "$testbed/id_ed25519",
    "ssh_timeout": "20m",
    "shutdown_command": "sudo -n shutdown -P now",
    "output_directory": "out",
    "vm_name": "bench.qcow2",
    "qemuargs": [["-serial", "file:serial.log"], ["-smbios", "type=1,serial=ds=nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/"]]
  }],
  "provisioners": [
    {"type": "shell", "inline": ["cloud-init status --wait"]},
    {"type": "shell", "script": "provision.sh", "execute_command": "sudo -n sh -c '{{ .Vars }} {{ .Path }}'"}
  ]
}
EOF

packer_run() {
  # in a session of its own, as pim's daemonized QEMU is: with the kernel's autogroups
  # (sched_autogroup_enabled) each session is one scheduling group, and in the caller's
  # session Packer's QEMU got twice the CPU of pim's under the same load
  (cd "$tmp/packer" && rm -rf out && PACKER_LOG=0 setsid -w timeout 1800 packer build -color=false template.json >"$tmp/packer.log" 2>&1) ||
    { echo "bench: packer failed; last lines of its log and of the VM's console:" >&2; tail -n 30 "$tmp/packer.log" "$tmp/packer/serial.log" >&2; exit 70; }
}
pim_run() { pim-build run bench --force 2>>"$tmp/pim.log" >"$tmp/pim.out" || { echo "bench: pim-build failed:" >&2; tail -n 30 "$tmp/pim.log" >&2; exit 70; }; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
# when the guest's cloud-init said "finished at DATE" (the guest's clock is the host's under
# TCG): what came after it is each tool's own tail (pim: the account, the script, the key,
# generalize, power-off, store; Packer: the script, its shutdown, its convert)
finished() { date -d "$(grep -ao 'finished at [^.]*+0000' "$1" | tail -1 | sed 's/finished at //')" +%s; }
load() { cut -d' ' -f1 /proc/loadavg; }

declare -a tp tq ap aq lp lq
for i in $(seq "$runs"); do
  if [ -n "${PIM_BENCH_TOGETHER:-}" ]; then
    # both at once: on a machine others load, each meets the same load
    lp+=("$(load)") lq+=("$(load)")
    s=$(date +%s.%N)
    (pim_run; date +%s.%N >"$tmp/pim.end") &
    a=$!
    (packer_run; date +%s.%N >"$tmp/packer.end") &
    b=$!
    wait "$a" && wait "$b" || exit 70
    ep=$(cat "$tmp/pim.end") eq=$(cat "$tmp/packer.end")
    tp+=("$(secs "$s" "$ep")") tq+=("$(secs "$s" "$eq")")
  else
    lp+=("$(load)")
    s=$(date +%s.%N); pim_run; ep=$(date +%s.%N); tp+=("$(secs "$s" "$ep")")
    lq+=("$(load)")
    s=$(date +%s.%N); packer_run; eq=$(date +%s.%N); tq+=("$(secs "$s" "$eq")")
  fi
  ap+=("$(secs "$(finished "$(ls -t "$XDG_STATE_HOME"/pim/build-logs/bench-*.log | head -1)")" "$ep")")
  aq+=("$(secs "$(finished "$tmp/packer/serial.log")" "$eq")")
  echo "bench: run $i: pim-build ${tp[-1]} s (after cloud-init finished: ${ap[-1]} s, load ${lp[-1]}), packer ${tq[-1]} s (after: ${aq[-1]} s, load ${lq[-1]}), ratio $(awk -v a="${tp[-1]}" -v b="${tq[-1]}" 'BEGIN { printf "%.2f", a / b }')" >&2
done
mp=$(median "${tp[@]}")
mq=$(median "${tq[@]}")
map=$(median "${ap[@]}")
maq=$(median "${aq[@]}")
pimg=$(cat "$tmp/pim.out")
qimg="$tmp/packer/out/bench.qcow2"
qemu-img convert -c -O qcow2 "$pimg" "$tmp/pim-c.qcow2"
qemu-img convert -c -O qcow2 "$qimg" "$tmp/packer-c.qcow2"
size() { du -B1 "$1" | cut -f1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
sp=$(size "$pimg") sq=$(size "$qimg") spc=$(size "$tmp/pim-c.qcow2") sqc=$(size "$tmp/packer-c.qcow2")
printf '%-44s %10s\n' "measure (median of $runs, TCG, $cpus CPUs, ${mem} MiB)" "value"
printf '%-44s %10s s\n' "pim-build run (a miss, --force)" "$mp"
printf '%-44s %10s s\n' "packer build (qemu builder, disk_image)" "$mq"
printf '%-44s %10.2f  (target <= 0.80)\n' "time ratio pim / packer" "$(awk -v a="$mp" -v b="$mq" 'BEGIN { print a / b }')"
printf '%-44s %10s s\n' "pim after cloud-init finished" "$map"
printf '%-44s %10s s\n' "packer after cloud-init finished" "$maq"
printf '%-44s %10s\n' "load average before each (pim; packer)" "${lp[*]}; ${lq[*]}"
printf '%-44s %10s MiB\n' "pim's stored image" "$(mib "$sp")"
printf '%-44s %10s MiB\n' "packer's image" "$(mib "$sq")"
printf '%-44s %10s MiB\n' "pim's image compressed (compress: true)" "$(mib "$spc")"
printf '%-44s %10s MiB\n' "packer's compressed (disk_compression)" "$(mib "$sqc")"
printf '%-44s %10.2f  (target <= 1.00)\n' "size ratio pim / packer" "$(awk -v a="$sp" -v b="$sq" 'BEGIN { print a / b }')"
printf '%-44s %10.2f  (target <= 1.00)\n' "size ratio, compressed" "$(awk -v a="$spc" -v b="$sqc" 'BEGIN { print a / b }')"
