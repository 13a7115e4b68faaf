/**
 * pim-kboot's work, kept out of the command file, in named steps:
 *
 *   resolveInputs  the kernel (a pipe copied, a bzImage's PVH vmlinux
 *                  extracted), the initramfs parts, the shares, the
 *                  accelerator and the kernel command line: everything that
 *                  can fail on bad input fails here, before anything runs
 *   reserve        the VM name, taken under its lock (lib/vm/launch.ts)
 *   startShares    virtiofsd for virtiofs shares, or 9p arguments
 *   buildInitrd    the user's initramfs, pim's base and this boot's settings,
 *                  joined in the VM's stage dir (made under the lock)
 *   start          the output port, then QEMU (launch: the usual runtime
 *                  files, lock and metadata)
 *   follow         lib/kboot/follow.ts: the guest's output until it is up or
 *                  the command is done
 *
 * Signals are trapped from the start: Ctrl-C at any step undoes what the
 * steps before it started (a pipe's copy, virtiofsd, QEMU, the runtime
 * files) and exits 128+N.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { log } from '../core/log.ts';
import { ensureRuntimeDir, type VmFiles } from '../core/paths.ts';
import type { Trap } from '../core/signals.ts';
import type { Accel } from '../qemu/argv.ts';
import {
  chooseShareFs,
  ninepArgs,
  parseShare,
  startVirtiofsd,
  virtiofsArgs,
  type Share,
  type ShareFs,
  type Virtiofsds,
} from '../qemu/share.ts';
import { cleanupFiles } from '../vm/state.ts';
import type { LaunchRequest, Reservation } from '../vm/launch.ts';
import { cachedPack, concatArchives, kbootCacheDir, type Compress } from '../archive/initramfs.ts';
import { bootArchive, findPanic, pimBaseArchive, RS, staticBusybox, type GuestSettings } from './guest.ts';
import { checkInitrd, resolveInput, type InputOpts } from './input.ts';
import { checkKernel, hostKernel, hostTscKhz, pvhKernel } from './kernel.ts';
import { follow, killVm, openOutputPort, type OutputPort } from './follow.ts';
import { trapSignals } from '../core/signals.ts';
import { vmRef } from '../vm/ref.ts';

export interface KbootOpts {
  name?: string;
  kernel?: string;
  initrd?: string;
  initramfsFrom?: string;
  append?: string;
  shares: string[];
  rootShare?: string;
  fs: string;
  exec?: string;
  console: boolean;
  mem: string;
  cpus: number;
  machine: string;
  compress: Compress;
  timeoutMs: number;
  accel?: string;
  extra: string[];
  token: string;
}

/** What a boot needs, all checked. */
interface Inputs {
  /** the kernel as the user named it (metadata, messages) */
  kernel: string;
  /** what QEMU boots: the cached PVH vmlinux, or the kernel itself */
  bootKernel: string;
  /** the initramfs before this boot's own archive: the user's initrd or packed tree, then pim's base */
  parts: string[];
  shares: Share[];
  root?: Share;
  shareFs: { fs: ShareFs; virtiofsd: string | null };
  accel: Accel;
  probeKvm: boolean;
  append: string;
}

const ms = (t0: number) => `${(performance.now() - t0).toFixed(0)} ms`;

export async function kboot(o: KbootOpts): Promise<number> {
  const t0 = performance.now();
  const trap = trapSignals();
  const temps: string[] = [];
  try {
    const inp = await resolveInputs(o, { cache: kbootCacheDir(), idleMs: o.timeoutMs, signal: trap.signal }, temps, t0);
    // with --console QEMU runs in the foreground on this terminal: its signals are its own
    if (o.console) trap.dispose();
    const res = await reserve(o);
    return await bootReserved(o, inp, res, o.console ? null : trap, t0);
  } finally {
    trap.dispose();
    for (const t of temps) fs.rmSync(t, { force: true });
  }
}

/** Every input checked and made ready (see the top of this file); `temps` collects files to remove at the end. */
async function resolveInputs(o: KbootOpts, io: InputOpts, temps: string[], t0: number): Promise<Inputs> {
  const kernel = await resolveInput(o.kernel ?? hostKernel(), 'kernel', io);
  if (kernel.temp) temps.push(kernel.temp);
  const kind = checkKernel(kernel.path, kernel.shown);
  const initrd = o.initrd ? await resolveInput(o.initrd, 'initrd', io) : null;
  if (initrd?.temp) temps.push(initrd.temp);
  if (initrd) checkInitrd(initrd.path, initrd.shown);
  const { shares, root, shareFs } = resolveShares(o);
  if (o.initramfsFrom) {
    const st = fs.statSync(o.initramfsFrom, { throwIfNoEntry: false });
    if (!st) throw new PimError(EXIT.NOINPUT, `initramfs directory ${o.initramfsFrom} does not exist`);
    if (!st.isDirectory())
      throw new PimError(
        EXIT.NOINPUT,
        `${o.initramfsFrom} is not a directory (--initramfs-from takes a directory to pack)`,
      );
  }
  const busybox = staticBusybox();
  if (!busybox && !initrd && !o.initramfsFrom) {
    throw new PimError(
      EXIT.UNAVAILABLE,
      "no initramfs given and no static busybox on this host for pim's own: install busybox-static, set PIM_BUSYBOX, or pass --initrd/--initramfs-from",
    );
  }
  if (!busybox) log.debug("no static busybox on the host: pim's init relies on the initramfs's /bin/sh");
  const { chooseAccel } = await import('../qemu/accel.ts');
  const { accel, probeKvm } = chooseAccel(o.accel);

  // the PVH vmlinux inside a bzImage boots without the guest decompressing it
  let bootKernel = kernel.path;
  if (kind === 'bzimage' && process.env.PIM_KBOOT_PVH !== '0')
    bootKernel = (await pvhKernel(kernel.path, io.cache, { signal: io.signal, shown: kernel.shown })) ?? kernel.path;
  log.debug(`kernel ${bootKernel} (${ms(t0)})`);

  const parts: string[] = [];
  if (initrd) parts.push(initrd.path);
  if (o.initramfsFrom) {
    const p = await cachedPack(o.initramfsFrom, o.compress);
    log.debug(`initramfs ${p.path} (${p.hit ? 'cached' : 'packed'}, ${ms(t0)})`);
    parts.push(p.path);
  }
  parts.push(await pimBaseArchive(io.cache, busybox));
  return {
    kernel: kernel.shown,
    bootKernel,
    parts,
    shares,
    root,
    shareFs,
    accel: accel as Accel,
    probeKvm,
    append: commandLine(o, accel as Accel),
  };
}

function resolveShares(o: KbootOpts): Pick<Inputs, 'shares' | 'root' | 'shareFs'> {
  const used = new Set<string>();
  const shares = o.shares.map((s) => parseShare(s, used));
  const root = o.rootShare ? parseShare(`${o.rootShare}:pimroot`, used) : undefined;
  const any = shares.length > 0 || root !== undefined;
  if (o.machine === 'microvm' && any)
    throw new PimError(
      EXIT.USAGE,
      'shares need PCI, which microvm has not: use --machine q35 (the default) with --share/--root-share',
    );
  const shareFs = any ? chooseShareFs(o.fs === 'auto' ? undefined : o.fs) : { fs: '9p' as const, virtiofsd: null };
  return { shares, root, shareFs };
}

function commandLine(o: KbootOpts, accel: Accel): string {
  const append = ['console=ttyS0', 'quiet', 'panic=-1', 'rdinit=/pim/init'];
  if (o.machine === 'microvm') {
    append.push('pci=off');
    const khz = accel === 'tcg' ? hostTscKhz() : null;
    if (khz) append.push(`tsc_early_khz=${khz}`);
  }
  if (o.append) append.push(o.append);
  return append.join(' ');
}

/** The VM name, taken under its lock: the one given, or the first free kboot, kboot-2, ... */
async function reserve(o: KbootOpts): Promise<Reservation> {
  const { reserveVm, reserveFreeName } = await import('../vm/launch.ts');
  if (!o.name) return reserveFreeName('kboot', ensureRuntimeDir());
  return reserveVm(vmRef(o.name));
}

/** Under the reservation: stage, shares, initrd, QEMU, then follow. Whatever fails, nothing is left running. */
async function bootReserved(
  o: KbootOpts,
  inp: Inputs,
  res: Reservation,
  trap: Trap | null,
  t0: number,
): Promise<number> {
  const { files } = res;
  let vfs: Virtiofsds | null = null;
  let port: OutputPort | null = null;
  let pid: number | null = null;
  let followed = false;
  try {
    fs.mkdirSync(files.stage, { mode: 0o700 });
    const shared = await startShares(o, inp, files.stage, trap?.signal);
    vfs = shared.vfs;
    const initrd = buildInitrd(o, inp, shared.fs, files.stage);
    log.debug(`initrd ${initrd} (${ms(t0)})`);
    if (!o.console) port = await openOutputPort(join(files.stage, 'out.sock'));
    const { launch } = await import('../vm/launch.ts');
    const starting = launch(res, launchRequest(o, inp, initrd, [...shared.args, ...(port?.args ?? []), ...o.extra]), {
      signal: trap?.signal,
    });
    const result = await starting;
    log.debug(`QEMU up (${ms(t0)})`);
    if (typeof result === 'number') return consoleResult(o, files, result);
    pid = result.pid;
    const sock = await port!.connected(5_000);
    // QEMU has loaded the kernel and initrd
    if (process.env.PIM_KBOOT_SAVE_INITRD) fs.copyFileSync(initrd, process.env.PIM_KBOOT_SAVE_INITRD); // bench/kboot.sh replays the boot by hand
    fs.rmSync(initrd, { force: true });
    const { markKvmBroken } = await import('../qemu/accel.ts');
    followed = true; // from here follow() owns the VM: it stops it on every way out but "up, left running"
    return await follow(sock, {
      name: res.name,
      files,
      pid,
      exec: o.exec !== undefined,
      token: o.token,
      timeoutMs: o.timeoutMs,
      t0,
      signal: trap!.signal,
      // remember that KVM failed, the way pim-run does, when it was chosen by default; a guest
      // that came up is no proof that KVM works (lib/qemu/accel.ts: pim-ps and pim-status write that)
      kvmSeen: inp.probeKvm ? (v) => void (v === 'broken' && markKvmBroken()) : undefined,
    });
  } catch (e) {
    vfs?.stop();
    if (!followed) {
      if (pid) await killVm(pid, files);
      else cleanupFiles(files);
    }
    throw e;
  } finally {
    port?.close();
    // the stage was only for the start; an --exec VM's virtiofsds end with it
    fs.rmSync(files.stage, { recursive: true, force: true });
    if (o.exec !== undefined) vfs?.stop();
    await res.release();
  }
}

/** Shares as QEMU arguments: virtiofs through virtiofsd (falling back to 9p under --fs auto), or 9p. */
async function startShares(
  o: KbootOpts,
  inp: Inputs,
  stage: string,
  signal?: AbortSignal,
): Promise<{ fs: ShareFs; args: string[]; vfs: Virtiofsds | null }> {
  const all = inp.root ? [...inp.shares, inp.root] : inp.shares;
  if (inp.shareFs.fs === 'virtiofs') {
    try {
      const vfs = await startVirtiofsd(inp.shareFs.virtiofsd!, all, join(stage, 'vfs'), { signal });
      return { fs: 'virtiofs', args: virtiofsArgs(vfs.shares, o.mem), vfs };
    } catch (e) {
      if (o.fs === 'virtiofs' || signal?.aborted) throw e;
      log.warn(`${(e as Error).message}: sharing over 9p instead`);
    }
  }
  return { fs: '9p', args: ninepArgs(all), vfs: null };
}

/** The initrd QEMU loads: the parts, then this boot's settings and command (made in memory). */
function buildInitrd(o: KbootOpts, inp: Inputs, shareFs: ShareFs, stage: string): string {
  const guest: GuestSettings = {
    token: o.token,
    mode: o.exec !== undefined ? 'exec' : 'handoff',
    out: o.console ? '/dev/console' : '/dev/ttyS1',
    fs: shareFs,
    shares: inp.shares,
    root: inp.root?.tag,
  };
  const initrd = join(stage, 'initrd');
  concatArchives([...inp.parts, bootArchive(guest, o.exec ?? '')], initrd);
  return initrd;
}

function launchRequest(o: KbootOpts, inp: Inputs, initrd: string, extra: string[]): LaunchRequest {
  return {
    spec: {
      accel: inp.accel,
      mem: o.mem,
      cpus: o.cpus,
      machine: o.machine,
      kernel: { kernel: inp.bootKernel, initrd, append: inp.append },
      agent: false,
      net: { mode: 'none' },
      rng: o.machine !== 'microvm',
      noReboot: true,
      extra,
    },
    console: o.console,
    sudo: false,
    meta: {
      kind: 'kboot',
      image: inp.kernel,
      ssh_port: null,
      bridged: false,
      agent: false,
      accel: inp.accel,
      mem: o.mem,
      cpus: o.cpus,
      snapshot: false,
    },
  };
}

/** --console: QEMU ran in the foreground and has exited; the command's status is in the log. */
function consoleResult(o: KbootOpts, files: VmFiles, status: number): number {
  const text = fs.readFileSync(files.log, 'latin1');
  const m = new RegExp(`${RS}PIM-EXIT-${o.token}:(\\d+)`).exec(text);
  if (o.exec !== undefined && m) return Number(m[1]);
  const panic = findPanic(text);
  if (panic)
    throw new PimError(EXIT.UNAVAILABLE, `the guest kernel panicked:\n${panic.map((l) => `  | ${l}`).join('\n')}`);
  return status;
}
