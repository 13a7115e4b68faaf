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
import { trapSignals } from '../lib/core/signals.ts';
import { waitUp } from '../lib/guest/wait.ts';
import { StatusLine } from '../lib/cli/status.ts';

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
    const { planRun } = await import('../lib/guest/runplan.ts');
    const { startVm } = await import('../lib/vm/plan.ts');
    const { log } = await import('../lib/core/log.ts');
    const { start, fors, waitMs, shares } = await planRun({
      ...args,
      forward: repeated.forward,
      wait: repeated.wait,
      share: repeated.share,
      rest,
      debugger: debuggerArgv,
    });
    // the foreground console leaves Ctrl-C to QEMU; a headless start undoes itself on a signal
    // (and under gdb, Ctrl-C is gdb's: it stops QEMU and gives the prompt back)
    const trap = args.console || debuggerArgv ? null : trapSignals();
    let started = false;
    try {
      const r = await startVm({ ...start, prepare: shares.prepare, signal: trap?.signal });
      if (typeof r === 'number') return r; // --console: QEMU's own status (under gdb: gdb's)
      started = true;
      for (const s of shares.shares)
        log.info(
          `share ${s.dir}: in the guest, mount -t ${shares.fs() === '9p' ? '9p -o trans=virtio,version=9p2000.L' : 'virtiofs'} ${s.tag} /mnt/${s.tag}`,
        );
      const display = start.display;
      if (display?.kind === 'vnc')
        log.info(`display: VNC on 127.0.0.1:${5900 + display.n} (vnc viewer 127.0.0.1:${display.n})`);
      log.info(`${r.vm.name} started (pid ${r.vm.pid}${r.sshPort ? `, ssh 127.0.0.1:${r.sshPort}` : ''}, ${r.accel})`);
      writeOut(r.vm.name + '\n');
      if (!fors.length) return 0;
      trap?.dispose(); // the VM is up: a signal now ends the wait only
      // on a terminal: what is awaited, the time so far and what was last seen, live on stderr
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
