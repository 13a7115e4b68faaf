/**
 * pim-run's policy, as a library call that pim-build and pim-kboot share:
 * which accelerator (and the fallback from a KVM that fails at run time),
 * which network (user mode with an SSH port forward, or a bridge through
 * sudo), UEFI vars, and the disk. `startVm` reserves the name, prepares
 * what the VM needs under its lock, launches QEMU and checks KVM.
 */
import { copyFileSync } from 'node:fs';
import { EXIT, PimError } from '../core/exit.ts';
import { log } from '../core/log.ts';
import { chooseAccel, KVM_BROKEN_WARNING, markKvmBroken, markSaid, warnOncePerBoot } from '../qemu/accel.ts';
import { bridgeHelper, checkPortFree, freePort, macFor, ovmfCode } from '../qemu/host.ts';
import type { Accel, NetSpec, PortForward, VmSpec } from '../qemu/argv.ts';
import { checkForwards, checkHostPortFree } from './forward.ts';
import { KvmFailed, kvmWorks, launch, reserveVm, type LaunchRequest, type Reservation } from './launch.ts';
import type { RunningVm, VmMeta } from './state.ts';
import type { VmRef } from './ref.ts';
import { surveyKvm } from './health.ts';
import { createOverlayUnlocked } from '../image/qemu-img.ts';

/** A memory size such as 512M or 2G (exit 64 otherwise). */
export function checkMem(mem: string | number, what = '--mem'): string {
  const s = String(mem);
  if (!/^\d+[KMGT]?$/i.test(s))
    throw new PimError(EXIT.USAGE, `${what} must be a size such as 512M or 2G, not ${JSON.stringify(s)}`);
  return s;
}

/** A CPU count from 1 to 256 (exit 64 otherwise). */
export function checkCpus(cpus: string | number, what = '--cpus'): number {
  const n = Number(cpus);
  if (!Number.isInteger(n) || n < 1 || n > 256)
    throw new PimError(EXIT.USAGE, `${what} must be a whole number from 1 to 256, not ${JSON.stringify(String(cpus))}`);
  return n;
}

/** A TCP port number (exit 64 otherwise). */
export function checkPort(port: string | number, what = '--ssh-port'): number {
  const n = Number(port);
  if (!Number.isInteger(n) || n < 1 || n > 65535)
    throw new PimError(EXIT.USAGE, `${what} must be a port number (1-65535), not ${JSON.stringify(String(port))}`);
  return n;
}

export interface NetRequest {
  bridged?: boolean;
  /** bridge (Linux) or host interface (macOS) */
  bridge?: string;
  /** user mode: the host port for the guest's port 22 (checked free); default a free one */
  sshPort?: number;
  /** user mode: more port forwards (pim-run --forward; lib/vm/forward.ts), each checked free */
  forwards?: PortForward[];
}

export interface NetPlan {
  net: NetSpec;
  /** QEMU must run as root (bridged without a setuid helper) */
  sudo: boolean;
  sshPort: number | null;
  /** the port was picked by pim (so a clash may be retried with another) */
  picked: boolean;
}

/** The network for VM `name`: user mode with a forwarded SSH port, or a bridge. */
export async function planNetwork(name: string, r: NetRequest): Promise<NetPlan> {
  const mac = macFor(name);
  if (r.bridged) {
    if (r.sshPort)
      throw new PimError(
        EXIT.USAGE,
        '--ssh-port is for user networking; a bridged VM has its own address (see pim-ip)',
      );
    if (r.forwards?.length)
      throw new PimError(
        EXIT.USAGE,
        '--forward is for user networking; a bridged VM has its own address on the bridge (see pim-ip)',
      );
    if (process.platform === 'darwin')
      return {
        net: { mode: 'vmnet-bridged', bridge: r.bridge ?? process.env.PIM_BRIDGE ?? 'en0', mac },
        sudo: true,
        sshPort: null,
        picked: false,
      };
    const helper = bridgeHelper();
    if (!helper) throw new PimError(EXIT.UNAVAILABLE, 'qemu-bridge-helper was not found; install qemu-system-common');
    return {
      net: { mode: 'bridge', bridge: r.bridge ?? process.env.PIM_BRIDGE ?? 'br0', helper: helper.path, mac },
      sudo: !helper.setuid,
      sshPort: null,
      picked: false,
    };
  }
  const forwards = r.forwards ?? [];
  checkForwards(forwards, [], r.sshPort ?? null);
  for (const f of forwards) await checkHostPortFree(f, 'choose another host port for --forward');
  if (r.sshPort) {
    await checkPortFree(r.sshPort);
    return { net: { mode: 'user', sshPort: r.sshPort, mac, forwards }, sudo: false, sshPort: r.sshPort, picked: false };
  }
  let port = await freePort();
  while (forwards.some((f) => f.proto === 'tcp' && f.host === port)) port = await freePort();
  return { net: { mode: 'user', sshPort: port, mac, forwards }, sudo: false, sshPort: port, picked: true };
}

export interface DiskPlan {
  path: string;
  format: 'qcow2' | 'raw';
  /** UEFI vars that belong to this disk (NAME.efivars.fd beside it), if any */
  efivars?: string | null;
  /** pass the guest's discards (fstrim) down to the image: discard=unmap (pim-build's disk) */
  discard?: boolean;
}

export interface StartRequest {
  ref: VmRef;
  disk?: DiskPlan;
  mem: string;
  cpus: number;
  /** --accel (else PIM_ACCEL, else the host's best) */
  accel?: string;
  net: NetRequest;
  snapshot?: boolean;
  /** boot a throwaway overlay of the disk (made under the VM's lock, removed with the VM), reading the disk without its lock */
  clone?: boolean;
  /** a display: a window or VNC (pim-run --display); default none */
  display?: VmSpec['display'];
  console?: boolean;
  /** QEMU in the foreground under this program (pim-gdb; lib/vm/launch.ts): returns its status */
  debugger?: string[];
  /** a guest-agent channel (default true) */
  agent?: boolean;
  kind?: VmMeta['kind'];
  /** what the metadata names as the image (default the disk's path) */
  image?: string;
  /** more of the VM: direct kernel boot, a CD, more disks, -no-reboot (pim-build's first boot) */
  spec?: Partial<Pick<VmSpec, 'kernel' | 'cdrom' | 'drives' | 'noReboot' | 'machine' | 'rng'>>;
  extra?: string[];
  /** run under the VM's lock, after its stale files are gone and before QEMU starts: more QEMU arguments (pim-run --share starts virtiofsd here) */
  prepare?: (files: Reservation['files']) => Promise<string[]>;
  signal?: AbortSignal;
  /** who logs in over SSH and with which key, for pim-ssh and pim-cp (lib/guest/reach.ts), when known */
  ssh?: { user?: string; key?: string };
}

/**
 * Start a VM the way pim-run does and return it running (or, with console,
 * QEMU's exit status). UEFI vars are copied for a snapshot run under the
 * VM's lock. KVM chosen by default with no verdict since the host booted
 * (lib/qemu/accel.ts): the other KVM VMs are asked first (one in
 * internal-error means TCG now); then a QEMU that dies of KVM as it starts,
 * or a VM that hits a KVM internal error in its first seconds, is restarted
 * on TCG, still under the same lock. A failure after that is seen by pim-ps
 * and pim-status (lib/vm/health.ts).
 */
export async function startVm(
  req: StartRequest,
): Promise<{ vm: RunningVm; accel: Accel; sshPort: number | null } | number> {
  const choice = chooseAccel(req.accel);
  let accel = choice.accel;
  let probe = choice.probeKvm;
  if (probe) {
    const verdict = await surveyKvm(req.ref.dir);
    if (verdict === 'broken') {
      warnOncePerBoot(KVM_BROKEN_WARNING);
      accel = 'tcg';
    }
    probe = verdict === null;
  }
  const res = await reserveVm(req.ref);
  try {
    if (req.clone && req.disk) {
      await createOverlayUnlocked(res.files.clone, req.disk.path, req.disk.format);
      req = {
        ...req,
        disk: { ...req.disk, path: res.files.clone, format: 'qcow2' },
        image: req.image ?? req.disk.path,
      };
    }
    if (req.prepare) req = { ...req, extra: [...(await req.prepare(res.files)), ...(req.extra ?? [])] };
    let uefi: { code: string; vars: string } | undefined;
    if (req.disk?.efivars) {
      let vars = req.disk.efivars;
      if (req.snapshot || req.clone) {
        // a snapshot run must not change the image's vars either: a copy, made under the lock
        copyFileSync(req.disk.efivars, res.files.efivars);
        vars = res.files.efivars;
      }
      uefi = { code: ovmfCode(), vars };
    }
    for (let attempt = 0; ; attempt++) {
      const np = await planNetwork(req.ref.name, req.net);
      try {
        let result: Awaited<ReturnType<typeof launch>>;
        try {
          result = await launch(res, request(req, np, accel, uefi), { signal: req.signal });
        } catch (e) {
          // QEMU died of KVM as it started (launch marked KVM broken): this VM runs on TCG
          if (!(probe && accel === 'kvm' && e instanceof KvmFailed)) throw e;
          log.warn(
            `KVM failed here as QEMU started: starting ${req.ref.name} with TCG, which is much slower; later runs use TCG directly`,
          );
          markSaid(KVM_BROKEN_WARNING); // said now: not again at the next start of this host boot
          accel = 'tcg';
          result = await launch(res, request(req, np, accel, uefi), { signal: req.signal });
        }
        if (typeof result === 'number') return result;
        // its first seconds: not proof that KVM works (pim-ps and pim-status write that), but
        // an internal error this early restarts the VM on TCG before pim-run returns
        if (probe && accel === 'kvm' && !(await kvmWorks(result))) {
          markKvmBroken();
          log.warn(
            'KVM failed at run time here (internal error): restarting with TCG, which is much slower; later runs use TCG directly',
          );
          markSaid(KVM_BROKEN_WARNING);
          accel = 'tcg';
          result = await launch(res, request(req, np, accel, uefi), { signal: req.signal });
          if (typeof result === 'number') return result;
        }
        return { vm: result, accel, sshPort: np.sshPort };
      } catch (e) {
        // a port pim picked was taken between picking and QEMU binding it: pick again
        if (
          np.picked &&
          attempt < 2 &&
          e instanceof PimError &&
          new RegExp(`forwarding rule '?tcp:127\\.0\\.0\\.1:${np.sshPort}-`, 'i').test(e.message)
        )
          continue;
        // one of --forward's ports was taken after the check: busy (75), not a broken QEMU
        if (e instanceof PimError && /could not set up host forwarding rule/i.test(e.message))
          throw new PimError(EXIT.TEMPFAIL, `a host port is in use: ${e.message}`);
        throw e;
      }
    }
  } finally {
    await res.release();
  }
}

function request(
  req: StartRequest,
  np: NetPlan,
  accel: Accel,
  uefi: { code: string; vars: string } | undefined,
): LaunchRequest {
  const agent = req.agent ?? true;
  return {
    spec: {
      accel,
      mem: req.mem,
      cpus: req.cpus,
      disk: req.disk
        ? {
            path: req.disk.path,
            format: req.disk.format,
            snapshot: Boolean(req.snapshot),
            unlockedBacking: Boolean(req.clone),
            ...(req.disk.discard ? { discard: true } : {}),
          }
        : undefined,
      display: req.display,
      uefi,
      agent,
      net: np.net,
      ...req.spec,
      extra: req.extra ?? [],
    },
    console: Boolean(req.console),
    debugger: req.debugger,
    sudo: np.sudo,
    meta: {
      kind: req.kind ?? 'run',
      image: req.image ?? req.disk?.path ?? '',
      ssh_port: np.sshPort,
      ...(np.net.forwards ? { forwards: np.net.forwards } : {}),
      bridged: Boolean(req.net.bridged),
      agent,
      accel,
      mem: req.mem,
      cpus: req.cpus,
      snapshot: Boolean(req.snapshot),
      ...(req.clone ? { clone: true } : {}),
      ...(req.ssh?.user ? { ssh_user: req.ssh.user } : {}),
      ...(req.ssh?.key ? { ssh_key: req.ssh.key } : {}),
    },
  };
}

export type { Reservation };
