/**
 * pim-run: boot an image as a VM.
 *
 * Headless by default: no display, serial on a socket (copied to the log),
 * QEMU detached. Returns once QMP answers and prints the VM name on stdout.
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { writeOut } from '../lib/cli/out.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { completeImages } from '../lib/vm/complete.ts';

export const cmd = defineCmd({
  name: 'pim-run',
  summary: 'Boot an image from the image store, or from a path, as a VM.',
  usage: 'NAME|IMAGE [options] [-- qemu args]',
  description: `
NAME boots ~/.local/share/pim/images/NAME.qcow2 (or .img/.raw); a path boots that file
and names the VM after it (or --name). Headless by default: the serial console is on
<runtime>/NAME.serial (attach with pim-console) and copied to NAME.log. Networking is
QEMU user mode with SSH forwarded from 127.0.0.1:PORT (a free port unless --ssh-port).
--bridged joins a host bridge (Linux: qemu-bridge-helper, through sudo unless the helper
is setuid; macOS: vmnet-bridged through sudo). The accelerator is KVM on Linux when
/dev/kvm works, HVF on macOS, else TCG; --accel or PIM_ACCEL overrides. UEFI is used
when NAME.efivars.fd sits beside the image. Words after -- go to QEMU untouched.`,
  examples: ['pim-run dev', 'pim-run ./disk.qcow2 --name scratch --snapshot', 'pim-run dev --bridged', 'pim-run dev --mem 2G --cpus 4 -- -device virtio-balloon'],
  args: {
    target: { type: 'positional', description: 'image name or path', required: true },
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
  positionals: { min: 1, max: 1 },
  passthrough: true,
  completePositional: completeImages,
  async run({ args, positionals, rest }) {
    const fs = await import('node:fs');
    const { resolveImage } = await import('../lib/image/store.ts');
    const { detectAccel, freePort, checkPortFree, bridgeHelper, ovmfCode, macFor, readKvmVerdict, writeKvmVerdict } = await import('../lib/qemu/host.ts');
    const { launch } = await import('../lib/vm/launch.ts');
    const { log } = await import('../lib/core/log.ts');
    const { vmFiles, ensureRuntimeDir } = await import('../lib/core/paths.ts');

    const img = resolveImage(positionals[0]!, args.name);
    const cpus = Number(args.cpus);
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > 256) throw new PimError(EXIT.USAGE, `--cpus must be a whole number from 1 to 256`);
    if (!/^\d+[KMGT]?$/i.test(args.mem)) throw new PimError(EXIT.USAGE, `--mem must be a size such as 512M or 2G`);
    let { accel, warning } = detectAccel(args.accel);
    // KVM chosen by default but not yet seen working on this host: check it on this boot
    let checkKvm = false;
    if (accel === 'kvm' && !args.accel && !process.env.PIM_ACCEL) {
      const verdict = await readKvmVerdict();
      if (verdict === 'broken') {
        accel = 'tcg';
        warning = 'KVM failed on this host earlier (internal error): using TCG, which is much slower; set PIM_ACCEL=kvm to try KVM again';
      } else checkKvm = verdict === null;
    }
    if (warning) log.warn(warning);

    let net: import('../lib/qemu/argv.ts').NetSpec;
    let sudo = false;
    let sshPort: number | null = null;
    if (args.bridged) {
      if (args.sshPort) throw new PimError(EXIT.USAGE, '--ssh-port is for user networking; a bridged VM has its own address (see pim-ip)');
      if (process.platform === 'darwin') {
        net = { mode: 'vmnet-bridged', bridge: args.bridge ?? process.env.PIM_BRIDGE ?? 'en0' };
        sudo = true;
      } else {
        const helper = bridgeHelper();
        if (!helper) throw new PimError(EXIT.UNAVAILABLE, 'qemu-bridge-helper was not found; install qemu-system-common');
        net = { mode: 'bridge', bridge: args.bridge ?? process.env.PIM_BRIDGE ?? 'br0', helper: helper.path };
        sudo = !helper.setuid;
      }
    } else {
      if (args.sshPort) {
        sshPort = Number(args.sshPort);
        if (!Number.isInteger(sshPort) || sshPort < 1 || sshPort > 65535) throw new PimError(EXIT.USAGE, `--ssh-port must be a port number (1-65535)`);
        await checkPortFree(sshPort);
      } else {
        sshPort = await freePort();
      }
      net = { mode: 'user', sshPort };
    }
    net.mac = macFor(img.name);

    let uefi: { code: string; vars: string } | undefined;
    if (img.efivars) {
      let vars = img.efivars;
      if (args.snapshot) {
        // a snapshot run must not change the image's vars either
        vars = vmFiles(img.name, ensureRuntimeDir()).meta.replace(/\.json$/, '.efivars.fd');
        fs.copyFileSync(img.efivars, vars);
      }
      uefi = { code: ovmfCode(), vars };
    }

    const request = (accel: import('../lib/qemu/argv.ts').Accel): import('../lib/vm/launch.ts').LaunchRequest => ({
      spec: {
        name: img.name,
        accel,
        mem: args.mem,
        cpus,
        disk: { path: img.path, format: img.format, snapshot: Boolean(args.snapshot) },
        uefi,
        agent: true,
        net,
        extra: rest,
      },
      console: Boolean(args.console),
      sudo,
      meta: {
        kind: 'run',
        image: img.path,
        ssh_port: sshPort,
        bridged: Boolean(args.bridged),
        agent: true,
        accel,
        mem: args.mem,
        cpus,
        snapshot: Boolean(args.snapshot),
      },
    });
    let result = await launch(request(accel));
    if (typeof result === 'number') return result; // --console: QEMU's own status
    if (checkKvm) {
      const { kvmWorks } = await import('../lib/vm/launch.ts');
      if (await kvmWorks(result)) {
        await writeKvmVerdict('ok');
      } else {
        await writeKvmVerdict('broken');
        log.warn('KVM failed at run time here (internal error): restarting with TCG, which is much slower; later runs use TCG directly');
        accel = 'tcg';
        result = await launch(request(accel));
        if (typeof result === 'number') return result;
      }
    }
    log.info(`${result.name} started (pid ${result.pid}${sshPort ? `, ssh 127.0.0.1:${sshPort}` : ''}, ${accel})`);
    writeOut(result.name + '\n');
    return EXIT.OK;
  },
});

main(cmd);
