/**
 * pim-run's policy, from its flags and a VM definition (vms.d, pim-vm) to a
 * start request: the image, the defaults (2 CPUs, 1G), UEFI vars, forwards
 * and qemu_args with their variables, --wait, --display, --cdrom, the image's
 * write lock, --share, and who logs in over SSH. Everything is checked here,
 * before anything starts; cmds/pim-run.ts parses, calls this and startVm
 * (lib/vm/plan.ts), and prints.
 */
import { resolve as resolvePath } from 'node:path';
import { statSync } from 'node:fs';
import { EXIT, PimError } from '../core/exit.ts';
import { log } from '../core/log.ts';
import { efivarsOf, runtimeDirPath } from '../core/paths.ts';
import { parseTimeout } from '../cli/args.ts';
import * as vms from '../config/vms.ts';
import { looksLikePath, resolveImage, storeImages, type ImageRef } from '../image/store.ts';
import type { VmSpec } from '../qemu/argv.ts';
import { parseForward } from '../vm/forward.ts';
import { checkCpus, checkMem, checkPort, type StartRequest } from '../vm/plan.ts';
import { vmRef } from '../vm/ref.ts';
import { listVms, vmInfo } from '../vm/state.ts';
import { checkWaitable, parseWaitFor, type WaitFor } from './wait.ts';
import { loadRuntimeConfig } from '../config/runtime.ts';
import { buildOfDisk } from '../image/registry.ts';
import { sshOfBuild } from './reach.ts';
import { parseShare, chooseShareFs, ninepArgs, startVirtiofsd, virtiofsArgs } from '../qemu/share.ts';

/** pim-run's flags, as parsed. */
export interface RunArgs {
  target: string;
  name?: string;
  cpus?: string;
  mem?: string;
  bridged?: boolean;
  bridge?: string;
  sshPort?: string;
  accel?: string;
  snapshot?: boolean;
  clone?: boolean;
  console?: boolean;
  display?: string;
  cdrom?: string;
  waitTimeout?: string;
  forward?: string[];
  wait?: string[];
  share?: string[];
  /** the words after -- (QEMU's own arguments) */
  rest: string[];
  /** pim-gdb: QEMU in the foreground under this program */
  debugger?: string[];
}

/** The start, less what only the command holds (the signal, the share's prepare), and what follows it. */
export interface RunPlan {
  start: Omit<StartRequest, 'signal' | 'prepare'>;
  img: ImageRef;
  fors: WaitFor[];
  waitMs: number;
  shares: Shares;
}

export async function planRun(a: RunArgs): Promise<RunPlan> {
  const running = async (n: string) => (await vmInfo(vmRef(n))).state === 'running';
  // a VM defined in vms.d (pim-vm): its settings, which the flags override
  const def = looksLikePath(a.target) ? null : await vms.findVmDefinition(a.target);
  const target = def ? vms.definitionTarget(def) : { target: a.target, buildOnly: false };
  const img = await resolveImage(target.target, a.name ?? def?.name, running);
  if (target.buildOnly && !img.build) {
    throw new PimError(
      EXIT.NOINPUT,
      `VM ${def!.name} boots build:${target.target}, but ${img.path} is not a build of profile ${target.target}; run pim-build run ${target.target}`,
    );
  }
  const ref = vmRef(img.name);
  const cpus = checkCpus(a.cpus ?? def?.cpus ?? 2);
  const mem = checkMem(a.mem ?? def?.mem ?? '1G');
  const bridged = Boolean(a.bridged || def?.net === 'bridged');
  let sshPort = a.sshPort
    ? checkPort(a.sshPort)
    : def?.ssh_port !== undefined
      ? checkPort(def.ssh_port, 'ssh_port')
      : undefined;
  const efivars = firmwareVars(def, img);
  // --forward and --wait are checked before anything starts
  const forwards = [...(def?.ports ?? []), ...(a.forward ?? [])].map((s) => parseForward(s));
  // qemu_args with their variables, then the words after --
  let extra = a.rest;
  if (def?.qemu_args.length) {
    if (!bridged && sshPort === undefined && vms.referencedVars(def.qemu_args).includes('vm.ssh_port'))
      sshPort = await (await import('../qemu/host.ts')).freePort();
    const args2 = vms.expandVars(def.qemu_args, def.argWhere, def, {
      vm: { name: ref.name, mem, cpus, ssh_port: bridged ? null : (sshPort ?? null) },
      globalVars: (await loadRuntimeConfig()).value.vars ?? {},
      image: (n) => storeImages().find((i) => i.name === n)?.path ?? null,
      runtime: runtimeDirPath(),
    });
    extra = [...args2, ...a.rest];
  }
  const fors = (a.wait ?? []).map((s) => parseWaitFor(s, '--wait'));
  const waitMs = parseTimeout(a.waitTimeout, 120, '--wait-timeout');
  if (fors.length && a.console)
    throw new PimError(EXIT.USAGE, '--wait is for a headless start; --console shows the console itself');
  if (a.debugger && (a.console || fors.length))
    throw new PimError(EXIT.USAGE, 'pim-gdb runs QEMU in the foreground under gdb: leave out --console and --wait');
  checkWaitable(ref.name, { agent: true, ssh: !bridged }, fors);
  const display = a.display === undefined ? undefined : parseDisplay(a.display);
  const cdrom = a.cdrom === undefined ? undefined : checkCdrom(a.cdrom);
  if (!a.clone) await checkWriteLock(img.path, ref.name, a);
  // --share: checked now; 9p arguments, or virtiofsd started under the VM's lock (and stopped again if the start fails)
  const shares = await planShares(a.share ?? [], mem);
  return {
    start: {
      ref,
      disk: { path: img.path, format: img.format, efivars },
      mem,
      cpus,
      accel: a.accel ?? def?.accel,
      net: { bridged, bridge: a.bridge ?? def?.bridge, sshPort, forwards },
      snapshot: Boolean(a.snapshot || def?.snapshot),
      clone: a.clone,
      display,
      ...(cdrom ? { spec: { cdrom } } : {}),
      console: a.console,
      debugger: a.debugger,
      extra,
      ssh: await sshOfImage(img),
    },
    img,
    fors,
    waitMs,
    shares,
  };
}

/** The UEFI vars beside the image, as the definition's firmware has them (66: uefi asked, none there). */
function firmwareVars(def: vms.VmDefinition | null, img: ImageRef): string | null {
  if (def?.firmware === 'bios') return null;
  if (def?.firmware === 'uefi' && !img.efivars) {
    throw new PimError(
      EXIT.NOINPUT,
      `VM ${def.name} asks for UEFI firmware, but its image has no UEFI vars beside it (${efivarsOf(img.path.replace(/\.[^./]+$/, ''))}); copy OVMF_VARS there, or set firmware: bios`,
    );
  }
  return img.efivars;
}

/** --cdrom ISO: absolute, a file (66 otherwise). */
function checkCdrom(p: string): string {
  const cdrom = resolvePath(p);
  if (!statSync(cdrom, { throwIfNoEntry: false })?.isFile())
    throw new PimError(EXIT.NOINPUT, `--cdrom ${cdrom} is not a file; give the path of an ISO`);
  return cdrom;
}

/**
 * A running VM that boots this very image read-write holds its write lock: not even
 * --snapshot can read it (one started with --snapshot only reads it: others may too). 75.
 */
async function checkWriteLock(image: string, name: string, a: RunArgs): Promise<void> {
  const user = (await listVms(runtimeDirPath())).find(
    (v) => v.state === 'running' && v.name !== name && v.meta?.image === image && !v.meta.clone && !v.meta.snapshot,
  );
  if (user)
    throw new PimError(
      EXIT.TEMPFAIL,
      `image ${image} is in use by running VM ${user.name}, whose QEMU holds its write lock (so --snapshot cannot read it either); start a throwaway copy with --clone (pim-run ${a.target} --name ${a.name ?? 'NAME'} --clone), or stop ${user.name} first`,
    );
}

/** A pim build's VM: who logs in over SSH (pim-ssh, pim-cp), recorded in the metadata. */
async function sshOfImage(img: ImageRef): Promise<{ user?: string; key?: string } | undefined> {
  if (!img.build) return undefined;
  const b = buildOfDisk(img.path);
  if (!b) return undefined;
  const ssh = sshOfBuild(b.settings?.ssh_user, b.inputs?.profile?.ssh_keys, b.settings?.user_key);
  // no key of yours in it: a build from before pim kept a key of its own, or pim's key was made anew
  if (!ssh.key && b.inputs?.builder !== 'raw')
    log.warn(
      `build ${b.id} has no SSH key you hold (not pim's current key, nor one of ~/.ssh/id_* in its profile's ssh_keys): pim-ssh will fall back to passwords; rebuild it with pim-build run ${b.profile} --force`,
    );
  return ssh;
}

/** --display gtk|sdl|vnc[:N] (exit 64 otherwise). */
export function parseDisplay(s: string): NonNullable<VmSpec['display']> {
  if (s === 'gtk' || s === 'sdl') return { kind: s };
  const m = /^vnc(?::(\d{1,2}))?$/.exec(s);
  if (m) return { kind: 'vnc', n: Number(m[1] ?? 0) };
  throw new PimError(EXIT.USAGE, `--display must be gtk, sdl, vnc or vnc:N (N from 0 to 99), not ${JSON.stringify(s)}`);
}

export interface Shares {
  shares: Array<{ dir: string; tag: string }>;
  fs(): '9p' | 'virtiofs';
  prepare?: (files: { qmp: string }) => Promise<string[]>;
  stop(): void;
}

/**
 * --share DIR[:TAG]...: each checked now (66 for a missing directory, 64 for a bad tag);
 * `prepare` (under the VM's lock) gives QEMU's arguments: virtiofs, with one virtiofsd
 * per share started beside the VM's runtime files, where virtiofsd exists, else 9p.
 */
async function planShares(specs: string[], mem: string): Promise<Shares> {
  if (!specs.length) return { shares: [], fs: () => '9p', stop() {} };
  const used = new Set<string>();
  const shares = specs.map((s) => parseShare(s, used));
  let fs: '9p' | 'virtiofs' = '9p';
  let stop = () => {};
  return {
    shares,
    fs: () => fs,
    stop: () => stop(),
    prepare: async (files) => {
      const choice = chooseShareFs(undefined);
      if (choice.fs === '9p' || !choice.virtiofsd) return ninepArgs(shares);
      const vfs = await startVirtiofsd(choice.virtiofsd, shares, files.qmp.slice(0, -'.qmp'.length));
      fs = 'virtiofs';
      stop = () => vfs.stop();
      return virtiofsArgs(vfs.shares, mem);
    },
  };
}
