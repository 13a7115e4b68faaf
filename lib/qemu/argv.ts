/**
 * Building QEMU command lines. Pure functions (unit-tested): no I/O here.
 * Option values are comma-separated, so a comma inside a value (a path,
 * usually) is doubled.
 */

/** Escape a value for a QEMU `key=value,...` option: commas are doubled. */
export const qemuEscape = (v: string): string => v.replace(/,/g, ',,');

/** `opt(['socket', {id: 'x', path: p}])` -> "socket,id=x,path=p" with values escaped. */
export function qemuOpt(first: string | null, kv: Record<string, string | number | boolean | undefined>): string {
  const parts = first ? [qemuEscape(first)] : [];
  for (const [k, v] of Object.entries(kv)) {
    if (v === undefined) continue;
    parts.push(typeof v === 'boolean' ? `${k}=${v ? 'on' : 'off'}` : `${k}=${qemuEscape(String(v))}`);
  }
  return parts.join(',');
}

export type Accel = 'kvm' | 'hvf' | 'tcg';

/** A user-mode port forward: BIND:HOST on the host to GUEST in the guest (QEMU's hostfwd). */
export interface PortForward {
  proto: 'tcp' | 'udp';
  /** the host address it listens on (IPv4) */
  bind: string;
  host: number;
  guest: number;
}

/** QEMU's hostfwd rule for a forward: `tcp:127.0.0.1:8080-:80` (the guest address is the DHCP one). */
export const hostfwdRule = (f: PortForward): string => `${f.proto}:${f.bind}:${f.host}-:${f.guest}`;

export interface NetSpec {
  mode: 'user' | 'bridge' | 'vmnet-bridged' | 'none';
  sshPort?: number; // user mode: host port forwarded to guest 22 on 127.0.0.1
  forwards?: PortForward[]; // user mode: more forwards (pim-run --forward)
  bridge?: string; // bridge mode: bridge name; vmnet: host interface
  helper?: string; // bridge helper path
  mac?: string;
}

export interface VmSpec {
  name: string;
  accel: Accel;
  mem: string;
  cpus: number;
  machine?: string;
  files: { qmp: string; ga: string; serial: string; pid: string; log: string };
  /** disk image and its format; absent for direct kernel boot */
  disk?: {
    path: string;
    format: string;
    snapshot: boolean /** the disk is an overlay whose backing file is read without a lock (pim-run --clone) */;
    unlockedBacking?: boolean;
    discard?: boolean;
  };
  /** a display (pim-run --display): a window (gtk, sdl) or VNC on 127.0.0.1:N; absent: none */
  display?: { kind: 'gtk' | 'sdl' } | { kind: 'vnc'; n: number };
  /** UEFI firmware: code (read-only) and this VM's vars */
  uefi?: { code: string; vars: string };
  kernel?: { kernel: string; initrd?: string; append?: string };
  /** an ISO attached read-only as a CD-ROM */
  cdrom?: string;
  /** more disks, after the first: virtio-blk, not bootable (pim-build's NoCloud seed) */
  drives?: Array<{ path: string; format: 'raw' | 'qcow2'; readonly?: boolean }>;
  /** serial: 'socket' (headless, copied to the log) or 'stdio' (console in the foreground) */
  serial: 'socket' | 'stdio';
  agent: boolean;
  net: NetSpec;
  daemonize: boolean;
  /** a virtio-rng device (default true); false for machines without PCI (microvm) */
  rng?: boolean;
  /** -no-reboot: QEMU exits when the guest reboots (kboot: a panic with panic=-1 ends the VM) */
  noReboot?: boolean;
  extra: string[];
}

export function buildQemuArgv(s: VmSpec): string[] {
  const a: string[] = [];
  a.push('-name', qemuOpt(s.name, { 'debug-threads': undefined }));
  a.push('-machine', qemuOpt(s.machine ?? 'q35', { accel: s.accel }));
  if (s.accel === 'kvm' || s.accel === 'hvf') a.push('-cpu', 'host');
  a.push('-m', s.mem, '-smp', String(s.cpus));
  const d = s.display;
  a.push(
    '-nodefaults',
    '-display',
    !d ? 'none' : d.kind === 'vnc' ? `vnc=127.0.0.1:${d.n}` : d.kind,
    '-vga',
    d ? 'std' : 'none',
  );
  a.push(...controlArgs(s));
  a.push(...storageArgs(s));
  a.push(...netArgs(s.net));
  if (s.net.mode !== 'none') a.push('-device', qemuOpt('virtio-net-pci', { netdev: 'net0', mac: s.net.mac }));
  if (s.rng !== false) a.push('-device', 'virtio-rng-pci');
  if (s.noReboot) a.push('-no-reboot');
  a.push('-pidfile', s.files.pid);
  if (s.daemonize) {
    // -daemonize points QEMU's stderr at /dev/null unless a log file is open
    // (-D, which needs a -d item): then stderr is that file, the VM's log. So
    // what QEMU says at run time (a KVM internal error, "terminating on
    // signal") is in the log too (pim-log). QEMU opens it without O_APPEND;
    // lib/vm/launch.ts has it reopened ("logfile") to append once QMP answers.
    a.push('-d', 'guest_errors', '-D', s.files.log, '-daemonize');
  }
  a.push(...s.extra);
  return a;
}

/** QMP, the serial console (its socket, or stdio muxed with the monitor) and the guest agent's channel. */
function controlArgs(s: VmSpec): string[] {
  const a: string[] = [];
  a.push('-qmp', qemuOpt(`unix:${s.files.qmp}`, { server: true, wait: false }));
  if (s.serial === 'socket') {
    a.push(
      '-chardev',
      qemuOpt('socket', {
        id: 'ser0',
        path: s.files.serial,
        server: true,
        wait: false,
        logfile: s.files.log,
        logappend: true,
      }),
    );
    a.push('-serial', 'chardev:ser0');
  } else {
    a.push(
      '-chardev',
      qemuOpt('stdio', { id: 'ser0', mux: true, signal: false, logfile: s.files.log, logappend: true }),
    );
    a.push('-serial', 'chardev:ser0', '-mon', 'chardev=ser0,mode=readline');
  }
  if (s.agent) {
    a.push('-device', 'virtio-serial-pci,id=vser0');
    a.push('-chardev', qemuOpt('socket', { id: 'ga0', path: s.files.ga, server: true, wait: false }));
    a.push('-device', 'virtserialport,bus=vser0.0,chardev=ga0,name=org.qemu.guest_agent.0');
  }
  return a;
}

/** UEFI's flash, the disk, extra drives, the CD-ROM and a kernel for direct boot. */
function storageArgs(s: VmSpec): string[] {
  const a: string[] = [];
  if (s.uefi) {
    a.push('-drive', qemuOpt(null, { if: 'pflash', format: 'raw', readonly: true, file: s.uefi.code }));
    a.push('-drive', qemuOpt(null, { if: 'pflash', format: 'raw', file: s.uefi.vars }));
  }
  if (s.disk) {
    a.push(
      '-drive',
      qemuOpt(null, {
        file: s.disk.path,
        format: s.disk.format,
        if: 'none',
        id: 'disk0',
        snapshot: s.disk.snapshot || undefined,
        'backing.file.locking': s.disk.unlockedBacking ? 'off' : undefined,
        discard: s.disk.discard ? 'unmap' : undefined,
      }),
    );
    // direct kernel boot takes boot index 0 itself (QEMU's linuxboot ROM): the disk comes after it
    a.push('-device', `virtio-blk-pci,drive=disk0,bootindex=${s.kernel ? 1 : 0}`);
  }
  (s.drives ?? []).forEach((d, i) => {
    a.push(
      '-drive',
      qemuOpt(null, {
        file: d.path,
        format: d.format,
        if: 'none',
        id: `disk${i + 1}`,
        readonly: d.readonly || undefined,
      }),
    );
    a.push('-device', `virtio-blk-pci,drive=disk${i + 1}`);
  });
  if (s.cdrom) {
    // on the q35's AHCI controller (SATA), after the disk in the boot order
    a.push(
      '-drive',
      qemuOpt(null, { file: s.cdrom, format: 'raw', if: 'none', id: 'cd0', media: 'cdrom', readonly: true }),
    );
    a.push('-device', `ide-cd,drive=cd0,bootindex=${s.kernel ? 2 : 1}`);
  }
  if (s.kernel) {
    a.push('-kernel', s.kernel.kernel);
    if (s.kernel.initrd) a.push('-initrd', s.kernel.initrd);
    if (s.kernel.append) a.push('-append', s.kernel.append);
  }
  return a;
}

/** The network's backend: user mode with its forwards, a bridge, or vmnet (its device: buildQemuArgv). */
function netArgs(n: NetSpec): string[] {
  const a: string[] = [];
  if (n.mode === 'user') {
    // hostfwd may be given several times, so the rules are appended by hand
    const rules = [...(n.sshPort ? [`tcp:127.0.0.1:${n.sshPort}-:22`] : []), ...(n.forwards ?? []).map(hostfwdRule)];
    a.push('-netdev', [qemuOpt('user', { id: 'net0' }), ...rules.map((r) => `hostfwd=${qemuEscape(r)}`)].join(','));
  } else if (n.mode === 'bridge') {
    a.push('-netdev', qemuOpt('bridge', { id: 'net0', br: n.bridge ?? 'br0', helper: n.helper }));
  } else if (n.mode === 'vmnet-bridged') {
    a.push('-netdev', qemuOpt('vmnet-bridged', { id: 'net0', ifname: n.bridge ?? 'en0' }));
  }
  return a;
}
