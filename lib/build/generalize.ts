/**
 * The end of every build that boots a VM (`generalize: false` in the profile
 * turns it off): what virt-sysprep does, run as root in the guest over the
 * build's SSH connection, so that every VM started or deployed from one
 * build is a machine of its own:
 *
 *   - cloud-init's instance state and logs cleaned (`cloud-init clean --logs`),
 *     so a deploy-time seed runs as a first boot (and makes new host keys);
 *   - /etc/machine-id emptied (the file kept: systemd makes a new id on the
 *     next boot, and with it a new DHCP client id);
 *   - the SSH host keys removed; where the image has no cloud-init, a small
 *     first-boot unit of pim's (pim-ssh-hostkeys.service, systemd) runs
 *     `ssh-keygen -A` before ssh.service;
 *   - DHCP leases, logs (truncated, rotated ones removed, the journal) and
 *     shell history removed;
 *   - free space trimmed (`fstrim -av`; the build's disk has discard=unmap, so
 *     the trimmed blocks leave the qcow2), and the store's `qemu-img convert`
 *     writes only what is left.
 *
 * Each step runs only where its tool or file is there: a busybox guest (the
 * test bed's) takes what applies to it. The script prints one "pim:" line a
 * step for the build log.
 */

export const GENERALIZE_SCRIPT = String.raw`
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "pim: $*"; }
# cloud-init clean --machine-id may remove the file (or write "uninitialized"): the image keeps an empty one
machineid=0
[ -f /etc/machine-id ] && machineid=1
if have cloud-init; then
  # cloud-init 22.3+ knows --machine-id; an older one cleans without it
  if cloud-init clean --logs --machine-id >/dev/null 2>&1 || cloud-init clean --logs >/dev/null 2>&1; then
    say "cloud-init clean --logs: instance state removed; the next boot is a first boot"
  else
    rm -rf /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data /var/lib/cloud/sem /var/log/cloud-init*.log
    say "cloud-init clean failed: its state removed by hand"
  fi
  cloudinit=1
else
  cloudinit=0
fi
if [ "$machineid" = 1 ]; then
  : >/etc/machine-id && chmod 0444 /etc/machine-id && say "/etc/machine-id emptied"
fi
[ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ] && rm -f /var/lib/dbus/machine-id
set -- /etc/ssh/ssh_host_*
if [ -e "$1" ]; then
  rm -f /etc/ssh/ssh_host_*
  say "SSH host keys removed"
  if [ "$cloudinit" = 0 ] && [ -d /etc/systemd/system ] && have ssh-keygen; then
    cat >/etc/systemd/system/pim-ssh-hostkeys.service <<'EOF'
[Unit]
Description=pim: make SSH host keys on the first boot of a generalized image
Before=ssh.service sshd.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
    mkdir -p /etc/systemd/system/multi-user.target.wants
    ln -sf ../pim-ssh-hostkeys.service /etc/systemd/system/multi-user.target.wants/pim-ssh-hostkeys.service
    say "pim-ssh-hostkeys.service makes new ones on the first boot"
  fi
fi
rm -f /var/lib/dhcp/*.leases /var/lib/dhclient/*.leases /var/lib/NetworkManager/*.lease /var/lib/systemd/network/* 2>/dev/null
if [ -d /var/log ]; then
  find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -exec rm -f {} + 2>/dev/null
  find /var/log -type f ! -path '/var/log/journal/*' -exec sh -c 'for f; do : >"$f"; done' sh {} + 2>/dev/null
  [ -d /var/log/journal ] && find /var/log/journal -type f -name '*.journal*' -exec rm -f {} + 2>/dev/null
  say "logs truncated"
fi
rm -f /root/.bash_history /root/.ash_history /root/.sh_history /home/*/.bash_history /home/*/.ash_history /home/*/.sh_history 2>/dev/null
rm -rf /var/tmp/* 2>/dev/null
say "shell history removed"
sync
if have fstrim; then
  # util-linux: every mounted file system that supports it; busybox: the root's
  { fstrim -av 2>/dev/null || fstrim -v / 2>&1; } | sed 's/^/pim: fstrim: /'
  sync
fi
exit 0
`;
