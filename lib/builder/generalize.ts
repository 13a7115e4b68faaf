/**
 * The end of every build that boots a VM (`generalize: false` in the profile
 * turns it off): what virt-sysprep does, run as root in the guest over the
 * build's SSH connection, so that every VM started or deployed from one
 * build is a machine of its own:
 *
 *   - cloud-init's instance state and logs cleaned as `cloud-init clean --logs`
 *     does (by hand where cloud_dir is the default: no start of its Python), so
 *     a deploy-time seed runs as a first boot (and makes new host keys);
 *   - /etc/machine-id emptied (the file kept: systemd makes a new id on the
 *     next boot, and with it a new DHCP client id);
 *   - the SSH host keys removed; where the image has no cloud-init, a small
 *     first-boot unit of pim's (pim-ssh-hostkeys.service, systemd) runs
 *     `ssh-keygen -A` before ssh.service;
 *   - DHCP leases, systemd's random seed, logs (truncated, rotated ones
 *     removed, the journal) and shell history removed;
 *   - free space trimmed (`fstrim -av`; the build's disk has discard=unmap, so
 *     the trimmed blocks leave the qcow2), and the store's `qemu-img convert`
 *     writes only what is left.
 *
 * Each step runs only where its tool or file is there: a busybox guest (the
 * test bed's) takes what applies to it. The script prints one "pim:" line a
 * step for the build log, with when it ended. Then the guest powers off at
 * once (POWEROFF_SCRIPT), so that nothing writes into the cleaned image.
 */
import type { RunningVm } from '../vm/state.ts';
import { awaitPoweroff, type StopResult } from '../guest/stop.ts';

export const GENERALIZE_SCRIPT = String.raw`
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
have() { command -v "$1" >/dev/null 2>&1; }
# each line says when its step ended, in seconds since the script began (the guest's
# uptime, in hundredths, by the shell alone: under a loaded TCG each process started costs
# up to a second)
cs() { c=0; [ -r /proc/uptime ] && IFS='. ' read -r s h _ </proc/uptime && c=$((s * 100 + 1$h - 100)); }
cs
t0=$c
say() { cs; d=$((c - t0)); echo "pim: $* (at $((d / 100)).$((d % 100 / 10)) s)"; }
# cloud-init clean --machine-id may remove the file (or write "uninitialized"): the image keeps an empty one
machineid=0
[ -f /etc/machine-id ] && machineid=1
if have cloud-init; then
  # what \`cloud-init clean --logs\` does, without starting cloud-init's Python (8-27 s
  # under TCG): everything in its cloud_dir but seed/, its two logs, then /etc/cloud/clean.d's
  # executables (cloud-init 23.1+). An image that moves cloud_dir elsewhere (Debian's
  # cloud.cfg names the default) gets the real command.
  if ! grep -hs '^[[:space:]]*cloud_dir:' /etc/cloud/cloud.cfg /etc/cloud/cloud.cfg.d/*.cfg |
    grep -qvE '^[[:space:]]*cloud_dir:[[:space:]]*["'"'"']?/var/lib/cloud/?["'"'"']?[[:space:]]*$'; then
    set -- /var/log/cloud-init.log /var/log/cloud-init-output.log
    for p in /var/lib/cloud/* /var/lib/cloud/.[!.]*; do
      { [ -e "$p" ] || [ -L "$p" ]; } && [ "$p" != /var/lib/cloud/seed ] && set -- "$@" "$p"
    done
    rm -rf -- "$@"
    if [ -d /etc/cloud/clean.d ]; then
      for x in /etc/cloud/clean.d/*; do [ -f "$x" ] && [ -x "$x" ] && "$x"; done
    fi
    say "cloud-init clean --logs (by hand): instance state removed; the next boot is a first boot"
  # cloud-init 22.3+ knows --machine-id; an older one cleans without it
  elif cloud-init clean --logs --machine-id >/dev/null 2>&1 || cloud-init clean --logs >/dev/null 2>&1; then
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
# systemd's saved entropy: each clone starts without it rather than with the same bytes
rm -f /var/lib/systemd/random-seed
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
say "synced"
if have fstrim; then
  # util-linux: every mounted file system that supports it; busybox: the root's
  { fstrim -av 2>/dev/null || fstrim -v / 2>&1; } | sed 's/^/pim: fstrim: /'
  sync
  say "trimmed and synced"
fi
exit 0
`;

/**
 * After the generalization nothing more may run in the guest: a systemd guest
 * powers off at once (`systemctl poweroff --force`: no unit's stop job runs, so
 * neither journald nor systemd-random-seed writes into the cleaned image; every
 * process is killed and the file systems unmounted or remounted read-only
 * before the power goes, as in any shutdown). 3: no systemd (the caller stops
 * the VM the usual way).
 */
export const POWEROFF_SCRIPT = String.raw`
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] || exit 3
sync
exec systemctl poweroff --force
`;

/**
 * Power the generalized guest off (POWEROFF_SCRIPT, through `sh`: a script as
 * root over the build's SSH connection, which goes with the guest) and wait
 * for its QEMU to exit. null: not a systemd guest, or still running after
 * `timeoutMs`: stop it with stopVm.
 */
export async function powerOffGeneralized(
  sh: (script: string) => Promise<{ code: number }>,
  vm: RunningVm,
  timeoutMs: number,
): Promise<StopResult | null> {
  // the connection may drop before the status comes back: that is the guest going
  const r = await sh(POWEROFF_SCRIPT).catch(() => null);
  // 3: no systemd; another status under 128: systemctl refused (a dropped connection is 255)
  if (r && r.code > 0 && r.code < 128) return null;
  return awaitPoweroff(vm, timeoutMs);
}
