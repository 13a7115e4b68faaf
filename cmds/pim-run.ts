/**
 * pim-run: boot an image as a VM.
 *
 * Headless by default: no display, serial on a socket (copied to the log),
 * QEMU detached. Returns once QMP answers and prints the VM name on stdout.
 * The policy (accelerator, network, UEFI vars) is lib/vm/plan.ts, shared
 * with pim-build.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Words } from '../lib/cli/command.ts';
import { writeOut } from '../lib/cli/output.ts';

/** Images in the store, loaded at TAB time only */
const imageNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeImages);

export default defineCommand({
  meta: {
    name: 'pim-run',
    version: VERSION,
    description: 'Boot an image from the image store, or from a path, as a VM.',
    passthrough: 'qemu args',
    details: `
NAME boots ~/.local/share/pim/images/NAME.qcow2 (or .img/.raw); a path boots that file
and names the VM after it (or --name). Headless by default: the serial console is on
<runtime>/NAME.serial (attach with pim-console) and copied to NAME.log. Networking is
QEMU user mode with SSH forwarded from 127.0.0.1:PORT (a free port unless --ssh-port).
--bridged joins a host bridge (Linux: qemu-bridge-helper, through sudo unless the helper
is setuid; macOS: vmnet-bridged through sudo). The accelerator is KVM on Linux when
/dev/kvm works, HVF on macOS, else TCG; --accel or PIM_ACCEL overrides. UEFI is used
when NAME.efivars.fd sits beside the image. Words after -- go to QEMU untouched.
Ctrl-C while the VM starts stops it again: no VM is left behind (exit 130).`,
    examples: ['pim-run dev', 'pim-run ./disk.qcow2 --name scratch --snapshot', 'pim-run dev --bridged', 'pim-run dev --mem 2G --cpus 4 -- -device virtio-balloon'],
  },
  args: {
    target: { type: 'positional', description: 'an image in the store, or the path of one', required: true, valueHint: 'NAME|IMAGE', complete: imageNames, path: 'file' },
    name: { type: 'string', description: 'VM name (default: the image name)', valueHint: 'NAME' },
    console: { type: 'boolean', description: 'run in the foreground with the serial console on this terminal' },
    bridged: { type: 'boolean', description: 'bridged networking (needs sudo unless the bridge helper is setuid)' },
    bridge: { type: 'string', description: 'bridge (Linux) or interface (macOS) for --bridged; env PIM_BRIDGE', valueHint: 'IF' },
    mem: { type: 'string', description: 'memory size', default: '1G', valueHint: 'SIZE' },
    cpus: { type: 'string', description: 'virtual CPUs', default: '2', valueHint: 'N' },
    sshPort: { type: 'string', description: 'host port forwarded to guest port 22 (user networking)', valueHint: 'PORT' },
    snapshot: { type: 'boolean', description: 'discard disk writes when the VM stops' },
    accel: { type: 'enum', options: ['kvm', 'hvf', 'tcg'], description: 'accelerator; env PIM_ACCEL' },
  },
  async run({ args, data }) {
    const { rest } = data as Words;
    const { resolveImage } = await import('../lib/image/store.ts');
    const { startVm, checkCpus, checkMem, checkPort } = await import('../lib/vm/plan.ts');
    const { vmRef } = await import('../lib/vm/ref.ts');
    const { trapSignals } = await import('../lib/core/signals.ts');
    const { log } = await import('../lib/core/log.ts');

    const { vmInfo } = await import('../lib/vm/state.ts');
    const running = async (n: string) => (await vmInfo(vmRef(n))).state === 'running';
    const img = await resolveImage(args.target, args.name, running);
    const ref = vmRef(img.name);
    const cpus = checkCpus(args.cpus);
    const mem = checkMem(args.mem);
    const sshPort = args.sshPort ? checkPort(args.sshPort) : undefined;
    // the foreground console leaves Ctrl-C to QEMU; a headless start undoes itself on a signal
    const trap = args.console ? null : trapSignals();
    try {
      const r = await startVm({
        ref,
        disk: { path: img.path, format: img.format, efivars: img.efivars },
        mem,
        cpus,
        accel: args.accel,
        net: { bridged: args.bridged, bridge: args.bridge, sshPort },
        snapshot: args.snapshot,
        console: args.console,
        extra: rest,
        signal: trap?.signal,
      });
      if (typeof r === 'number') return r; // --console: QEMU's own status
      log.info(`${r.vm.name} started (pid ${r.vm.pid}${r.sshPort ? `, ssh 127.0.0.1:${r.sshPort}` : ''}, ${r.accel})`);
      writeOut(r.vm.name + '\n');
      return 0;
    } finally {
      trap?.dispose();
    }
  },
});

