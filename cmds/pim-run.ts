/**
 * pim-run: boot an image as a VM.
 *
 * Headless by default: no display, serial on a socket (copied to the log),
 * QEMU detached. Returns once QMP answers and prints the VM name on stdout.
 * The policy (accelerator, network, UEFI vars) is lib/vm/plan.ts, shared
 * with pim-build.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Completer, type Words } from '../lib/cli/command.ts';
import { writeOut } from '../lib/cli/output.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';

/** What --wait takes, at TAB time */
const waitForms: Completer = (c) => {
  c('agent', 'the guest agent answers guest-sync');
  c('ssh', 'an SSH banner on the forwarded port');
  c('console:', 'a console line matches REGEX (console:REGEX)');
};

/** What --display takes, at TAB time */
const displayForms: Completer = (c) => {
  c('gtk', 'a GTK window');
  c('sdl', 'an SDL window');
  c('vnc', 'VNC on 127.0.0.1:5900');
  c('vnc:1', 'VNC on 127.0.0.1:5901');
};

/** Images in the store, loaded at TAB time only */
const imageNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeImages);

export default defineCommand({
  meta: {
    name: 'pim-run',
    version: VERSION,
    description: 'Boot an image from the image store, or from a path, as a VM.',
    passthrough: 'qemu args',
    details: `
NAME boots the VM defined as NAME in ~/.config/pim/vms.d (see pim-vm: its image, settings
and qemu_args, which the flags override), else ~/.local/share/pim/images/NAME.qcow2 (or
.img/.raw), else the newest build of profile NAME; a path boots that file and names the
VM after it (or --name). Headless by default: the serial console is on
<runtime>/NAME.serial (attach with pim-console) and copied to NAME.log. Networking is
QEMU user mode with SSH forwarded from 127.0.0.1:PORT (a free port unless --ssh-port).
--bridged joins a host bridge (Linux: qemu-bridge-helper, through sudo unless the helper
is setuid; macOS: vmnet-bridged through sudo). The accelerator is KVM on Linux when
/dev/kvm works, HVF on macOS, else TCG; --accel or PIM_ACCEL overrides. UEFI is used
when NAME.efivars.fd sits beside the image. Words after -- go to QEMU untouched.
Ctrl-C while the VM starts stops it again: no VM is left behind (exit 130).
--forward [tcp:|udp:][BIND:]HOST:GUEST forwards a host port (on BIND, default 127.0.0.1) to
a guest port; pim-forward changes them later. --wait ssh|agent|console:REGEX returns only once
the guest answers so, as pim-wait does (the name is printed first; a timeout is exit 75 and
leaves the VM running).
A running VM holds its image's write lock, so a second VM of that image cannot start, not
even with --snapshot (exit 75, naming the VM); --clone boots a throwaway qcow2 overlay of
the image instead (<runtime>/NAME.clone.qcow2, removed with the VM), reading the image
without its lock: while the other VM runs, the clone may see its writes land.
--share DIR[:TAG] shares a host directory over virtiofs when virtiofsd is found, else 9p
(TAG defaults to DIR's name); the guest mounts it with the command pim-run prints, e.g.
mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt/TAG (the guest kernel needs 9p or
virtiofs). --display gtk|sdl opens a window, --display vnc[:N] serves VNC on 127.0.0.1:5900+N
only; the default stays headless. --cdrom ISO attaches an ISO as a CD-ROM, after the disk
in the boot order (a blank disk boots it: a manual install).`,
    examples: [
      'pim-run dev',
      'pim-run ./disk.qcow2 --name scratch --snapshot',
      'pim-run dev --bridged',
      'pim-run dev --forward 8080:80 --wait ssh',
      'pim-run dev --mem 2G --cpus 4 -- -device virtio-balloon',
      'pim-run dev --name dev2 --clone',
      'pim-run dev --share .:src --display vnc:1',
    ],
  },
  args: {
    target: {
      type: 'positional',
      description: 'a defined VM, an image in the store, or the path of one',
      required: true,
      valueHint: 'NAME|IMAGE',
      complete: imageNames,
      path: 'file',
    },
    name: { type: 'string', description: 'VM name (default: the image name)', valueHint: 'NAME' },
    console: { type: 'boolean', description: 'run in the foreground with the serial console on this terminal' },
    bridged: { type: 'boolean', description: 'bridged networking (needs sudo unless the bridge helper is setuid)' },
    bridge: {
      type: 'string',
      description: 'bridge (Linux) or interface (macOS) for --bridged; env PIM_BRIDGE',
      valueHint: 'IF',
    },
    mem: { type: 'string', description: "memory size (default: the definition's, else 1G)", valueHint: 'SIZE' },
    cpus: { type: 'string', description: "virtual CPUs (default: the definition's, else 2)", valueHint: 'N' },
    sshPort: {
      type: 'string',
      description: 'host port forwarded to guest port 22 (user networking)',
      valueHint: 'PORT',
    },
    snapshot: { type: 'boolean', description: 'discard disk writes when the VM stops' },
    accel: { type: 'enum', options: ['kvm', 'hvf', 'tcg'], description: 'accelerator; env PIM_ACCEL' },
    forward: {
      type: 'string',
      repeatable: true,
      description: 'forward a host port to a guest port (user networking; tcp unless udp:)',
      valueHint: '[tcp:|udp:][BIND:]HOST:GUEST',
    },
    wait: {
      type: 'string',
      repeatable: true,
      description: 'return once this answers, as pim-wait --for',
      valueHint: 'ssh|agent|console:REGEX',
      complete: waitForms,
    },
    waitTimeout: {
      type: 'string',
      description: 'seconds --wait waits (then exit 75; the VM keeps running)',
      default: '120',
      valueHint: 'S',
    },
    clone: {
      type: 'boolean',
      description: 'boot a throwaway overlay of the image (removed with the VM): a second VM of an image in use',
    },
    share: {
      type: 'string',
      repeatable: true,
      description: 'share a host directory with the guest (virtiofs, else 9p); how to mount it is printed',
      valueHint: 'DIR[:TAG]',
      path: 'dir',
    },
    display: {
      type: 'string',
      description: 'show the screen: a gtk or sdl window, or VNC on 127.0.0.1:5900+N (default: headless)',
      valueHint: 'gtk|sdl|vnc[:N]',
      complete: displayForms,
    },
    cdrom: {
      type: 'string',
      description: 'attach an ISO as a CD-ROM (after the disk in the boot order)',
      valueHint: 'ISO',
      path: 'file',
    },
  },
  async run({ args, data }) {
    // pim-gdb runs this command with `debugger`: QEMU in the foreground under gdb
    const { rest, repeated, debugger: debuggerArgv } = data as Words & { debugger?: string[] };
    const { resolveImage } = await import('../lib/image/store.ts');
    const { startVm, checkCpus, checkMem, checkPort } = await import('../lib/vm/plan.ts');
    const { vmRef } = await import('../lib/vm/ref.ts');
    const { trapSignals } = await import('../lib/core/signals.ts');
    const { log } = await import('../lib/core/log.ts');

    const { vmInfo } = await import('../lib/vm/state.ts');
    const running = async (n: string) => (await vmInfo(vmRef(n))).state === 'running';
    // a VM defined in vms.d (pim-vm): its settings, which the flags override
    const vms = await import('../lib/config/vms.ts');
    const { looksLikePath } = await import('../lib/image/store.ts');
    const def = looksLikePath(args.target) ? null : await vms.findVmDefinition(args.target);
    const target = def ? vms.definitionTarget(def) : { target: args.target, buildOnly: false };
    const img = await resolveImage(target.target, args.name ?? def?.name, running);
    if (target.buildOnly && !img.build) {
      throw new PimError(
        EXIT.NOINPUT,
        `VM ${def!.name} boots build:${target.target}, but ${img.path} is not a build of profile ${target.target}; run pim-build run ${target.target}`,
      );
    }
    const ref = vmRef(img.name);
    const cpus = checkCpus(args.cpus ?? def?.cpus ?? 2);
    const mem = checkMem(args.mem ?? def?.mem ?? '1G');
    const bridged = Boolean(args.bridged || def?.net === 'bridged');
    let sshPort = args.sshPort
      ? checkPort(args.sshPort)
      : def?.ssh_port !== undefined
        ? checkPort(def.ssh_port, 'ssh_port')
        : undefined;
    let efivars = img.efivars;
    if (def?.firmware === 'bios') efivars = null;
    if (def?.firmware === 'uefi' && !efivars) {
      throw new PimError(
        EXIT.NOINPUT,
        `VM ${def.name} asks for UEFI firmware, but its image has no UEFI vars beside it (${img.path.replace(/\.[^./]+$/, '')}.efivars.fd); copy OVMF_VARS there, or set firmware: bios`,
      );
    }
    // --forward and --wait are checked before anything starts
    const { parseForward } = await import('../lib/vm/forward.ts');
    const forwards = [...(def?.ports ?? []), ...(repeated.forward ?? [])].map((s) => parseForward(s));
    // qemu_args with their variables, then the words after --
    let extra = rest;
    if (def?.qemu_args.length) {
      if (!bridged && sshPort === undefined && vms.referencedVars(def.qemu_args).includes('vm.ssh_port'))
        sshPort = await (await import('../lib/qemu/host.ts')).freePort();
      const { loadRuntimeConfig } = await import('../lib/config/runtime.ts');
      const { storeImages } = await import('../lib/image/store.ts');
      const { runtimeDirPath } = await import('../lib/core/paths.ts');
      const args2 = vms.expandVars(def.qemu_args, def.argWhere, def, {
        vm: { name: ref.name, mem, cpus, ssh_port: bridged ? null : (sshPort ?? null) },
        globalVars: (await loadRuntimeConfig()).value.vars ?? {},
        image: (n) => storeImages().find((i) => i.name === n)?.path ?? null,
        runtime: runtimeDirPath(),
      });
      extra = [...args2, ...rest];
    }
    const { parseWaitFor, checkWaitable, waitUp } = await import('../lib/vm/wait.ts');
    const { parseTimeout } = await import('../lib/cli/args.ts');
    const fors = (repeated.wait ?? []).map((s) => parseWaitFor(s, '--wait'));
    const waitMs = parseTimeout(args.waitTimeout, 120, '--wait-timeout');
    if (fors.length && args.console)
      throw new PimError(EXIT.USAGE, '--wait is for a headless start; --console shows the console itself');
    if (debuggerArgv && (args.console || fors.length))
      throw new PimError(EXIT.USAGE, 'pim-gdb runs QEMU in the foreground under gdb: leave out --console and --wait');
    checkWaitable(ref.name, { agent: true, ssh: !bridged }, fors);
    const display = args.display === undefined ? undefined : parseDisplay(args.display);
    let cdrom: string | undefined;
    if (args.cdrom !== undefined) {
      const { resolve: resolvePath } = await import('node:path');
      const { statSync } = await import('node:fs');
      cdrom = resolvePath(args.cdrom);
      if (!statSync(cdrom, { throwIfNoEntry: false })?.isFile())
        throw new PimError(EXIT.NOINPUT, `--cdrom ${cdrom} is not a file; give the path of an ISO`);
    }
    // a running VM that boots this very image read-write holds its write lock: not even
    // --snapshot can read it (one started with --snapshot only reads it: others may too)
    if (!args.clone) {
      const { listVms } = await import('../lib/vm/state.ts');
      const { runtimeDirPath } = await import('../lib/core/paths.ts');
      const user = (await listVms(runtimeDirPath())).find(
        (v) =>
          v.state === 'running' &&
          v.name !== ref.name &&
          v.meta?.image === img.path &&
          !v.meta.clone &&
          !v.meta.snapshot,
      );
      if (user)
        throw new PimError(
          EXIT.TEMPFAIL,
          `image ${img.path} is in use by running VM ${user.name}, whose QEMU holds its write lock (so --snapshot cannot read it either); start a throwaway copy with --clone (pim-run ${args.target} --name ${args.name ?? 'NAME'} --clone), or stop ${user.name} first`,
        );
    }
    // --share: checked now; 9p arguments, or virtiofsd started under the VM's lock (and stopped again if the start fails)
    const shares = await planShares(repeated.share ?? [], mem);
    // a pim build's VM: who logs in over SSH (pim-ssh, pim-cp), recorded in the metadata
    let ssh: { user?: string; key?: string } | undefined;
    if (img.build) {
      const { buildOfDisk } = await import('../lib/image/registry.ts');
      const { sshOfBuild } = await import('../lib/vm/reach.ts');
      const b = buildOfDisk(img.path);
      if (b) {
        ssh = sshOfBuild(b.settings?.ssh_user, b.inputs?.profile?.ssh_keys, b.settings?.user_key);
        // no key of yours in it: a build from before pim kept a key of its own, or pim's key was made anew
        if (!ssh.key && b.inputs?.builder !== 'raw')
          log.warn(
            `build ${b.id} has no SSH key you hold (not pim's current key, nor one of ~/.ssh/id_* in its profile's ssh_keys): pim-ssh will fall back to passwords; rebuild it with pim-build run ${b.profile} --force`,
          );
      }
    }
    // the foreground console leaves Ctrl-C to QEMU; a headless start undoes itself on a signal
    // (and under gdb, Ctrl-C is gdb's: it stops QEMU and gives the prompt back)
    const trap = args.console || debuggerArgv ? null : trapSignals();
    let started = false;
    try {
      const r = await startVm({
        ref,
        disk: { path: img.path, format: img.format, efivars },
        mem,
        cpus,
        accel: args.accel ?? def?.accel,
        net: { bridged, bridge: args.bridge ?? def?.bridge, sshPort, forwards },
        snapshot: Boolean(args.snapshot || def?.snapshot),
        clone: args.clone,
        display,
        ...(cdrom ? { spec: { cdrom } } : {}),
        console: args.console,
        debugger: debuggerArgv,
        extra,
        prepare: shares.prepare,
        signal: trap?.signal,
        ssh,
      });
      if (typeof r === 'number') return r; // --console: QEMU's own status (under gdb: gdb's)
      started = true;
      for (const s of shares.shares)
        log.info(
          `share ${s.dir}: in the guest, mount -t ${shares.fs() === '9p' ? '9p -o trans=virtio,version=9p2000.L' : 'virtiofs'} ${s.tag} /mnt/${s.tag}`,
        );
      if (display?.kind === 'vnc')
        log.info(`display: VNC on 127.0.0.1:${5900 + display.n} (vnc viewer 127.0.0.1:${display.n})`);
      log.info(`${r.vm.name} started (pid ${r.vm.pid}${r.sshPort ? `, ssh 127.0.0.1:${r.sshPort}` : ''}, ${r.accel})`);
      writeOut(r.vm.name + '\n');
      if (!fors.length) return 0;
      trap?.dispose(); // the VM is up: a signal now ends the wait only
      // on a terminal: what is awaited, the time so far and what was last seen, live on stderr
      const { StatusLine } = await import('../lib/cli/status.ts');
      const status = new StatusLine();
      const onProgress = (waiting: string[], last: string) => {
        if (!waiting.length) return status.hide();
        status.show(`waiting for ${waiting.join(' and ')}`);
        status.update(last);
      };
      const ready = await waitUp(r.vm, fors, { timeoutMs: waitMs, onProgress })
        .catch((e: unknown) => {
          if (e instanceof PimError && e.code === EXIT.TEMPFAIL)
            throw new PimError(e.code, `${e.message} (the VM keeps running: pim-stop ${r.vm.name})`);
          throw e;
        })
        .finally(() => status.end());
      for (const x of ready) log.info(`${x.name}: ${x.for} up after ${x.seconds} s (${x.seen})`);
      return 0;
    } finally {
      trap?.dispose();
      if (!started) shares.stop();
    }
  },
});

/** --display gtk|sdl|vnc[:N] (exit 64 otherwise). */
export function parseDisplay(s: string): NonNullable<import('../lib/qemu/argv.ts').VmSpec['display']> {
  if (s === 'gtk' || s === 'sdl') return { kind: s };
  const m = /^vnc(?::(\d{1,2}))?$/.exec(s);
  if (m) return { kind: 'vnc', n: Number(m[1] ?? 0) };
  throw new PimError(EXIT.USAGE, `--display must be gtk, sdl, vnc or vnc:N (N from 0 to 99), not ${JSON.stringify(s)}`);
}

/**
 * --share DIR[:TAG]...: each checked now (66 for a missing directory, 64 for a bad tag);
 * `prepare` (under the VM's lock) gives QEMU's arguments: virtiofs, with one virtiofsd
 * per share started beside the VM's runtime files, where virtiofsd exists, else 9p.
 */
async function planShares(
  specs: string[],
  mem: string,
): Promise<{
  shares: Array<{ dir: string; tag: string }>;
  fs(): '9p' | 'virtiofs';
  prepare?: (files: { qmp: string }) => Promise<string[]>;
  stop(): void;
}> {
  if (!specs.length) return { shares: [], fs: () => '9p', stop() {} };
  const { parseShare, chooseShareFs, ninepArgs, startVirtiofsd, virtiofsArgs } = await import('../lib/qemu/share.ts');
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
