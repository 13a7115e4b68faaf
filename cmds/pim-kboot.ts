/**
 * pim-kboot: boot a kernel directly, with an initramfs (given, or packed from
 * a directory), host directories shared in, and optionally one command run
 * to completion (a test runner). A kboot VM is a pim VM: pim-ps lists it,
 * pim-stop, pim-console and pim-qmp work on it.
 */
import { defineCommand } from 'citty';
import { VERSION, type Words } from '../lib/cli/command.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';

export default defineCommand({
  meta: {
    name: 'pim-kboot',
    version: VERSION,
    description:
      'Boot a kernel directly with an initramfs and host shares; optionally run one command and exit with its status.',
    usage: '[NAME] [--kernel PATH] [--initrd PATH | --initramfs-from DIR] [options] [-- qemu args]',
    passthrough: 'qemu args',
    details: `
No firmware, bootloader or disk: QEMU loads the kernel and initramfs itself. A bzImage
whose payload is XZ, gzip or zstd is booted as its uncompressed PVH vmlinux (extracted
once, checked whole, cached in ~/.cache/pim/kboot/), which skips the guest's
decompression. Without --kernel the host's /boot/vmlinuz-$(uname -r) is used when it is
readable. --kernel and --initrd take a file or a pipe (--initrd <(find . | cpio -o -H
newc)): a pipe is read once into a private file in the cache, and given up on when its
writer sends nothing for --timeout seconds.

--initramfs-from DIR packs DIR as a newc cpio with every file owned by root (system cpio,
or bsdtar), cached by the tree's listing (paths, modes, sizes, mtimes): an unchanged tree
is not packed again. pim appends its own small archive (/pim/init, a static busybox from
the host when there is one) and boots with rdinit=/pim/init, which mounts the shares and
then runs the command (--exec), hands over to the initramfs's own /init if it has one,
or gives a root shell on the serial console. The cache (~/.cache/pim/kboot) is private:
0700 directories, 0600 files.

--share DIR[:TAG] (repeatable) shares DIR over virtiofs when virtiofsd is found, else 9p
(--fs overrides); pim's init mounts it at /mnt/TAG. The guest kernel needs virtio_pci and
9p (or virtiofs) built in, or as modules in the initramfs's /lib/modules/<kver>/ (loaded
with modprobe). --root-share DIR makes DIR the guest's root filesystem (the init mounts
it and switches to it; --exec runs the command inside it).

--exec CMD runs CMD with sh -c in the guest, streams its output (stdout and stderr, on a
serial port of their own: kernel messages stay in the log), powers off and exits with
CMD's status. Otherwise pim-kboot prints NAME once the guest's userspace is up and
leaves the VM running headless (pim-console NAME, pim-stop NAME), or with --console
runs it in the foreground on this terminal.

Exit codes: 64 usage; 65 a kernel that is no bzImage, a bzImage cut short, an ELF that
QEMU cannot boot (no PVH note, e.g. /bin/true), an initrd that is no archive; 66 a
missing kernel, initrd, directory or share, a directory or device given as kernel or
initrd, a pipe or FIFO with nothing in it and no writer; 69 a kernel panic (seen in the
serial log: the kernel runs with panic=-1 and QEMU with -no-reboot, so the VM ends; its
lines are printed), or QEMU gone before the guest was up; 75 a guest that does not reach
userspace within --timeout, a pipe silent for as long, a VM name in use; 77 a kernel or
initrd you cannot read; 128+N on signal N (Ctrl-C: 130). In every case no VM is left
behind. With --exec any other status is the command's own, passed through whatever its
value.`,
    examples: [
      'pim-kboot --kernel arch/x86/boot/bzImage --exec "uname -r"',
      'pim-kboot t1 --kernel bzImage --initramfs-from ./rootfs --share .:src --exec "make -C /mnt/src check"',
      'pim-kboot --kernel bzImage --root-share ./sysroot --console',
    ],
  },
  args: {
    name: {
      type: 'positional',
      description: 'VM name (default: kboot, or kboot-N when taken)',
      required: false,
      valueHint: 'NAME',
    },
    kernel: {
      type: 'string',
      description: 'kernel (bzImage, or a PVH vmlinux; a file or a pipe); default /boot/vmlinuz-$(uname -r)',
      valueHint: 'PATH',
      path: 'file',
    },
    initrd: {
      type: 'string',
      description: 'initramfs (cpio, compressed or not; a file or a pipe)',
      valueHint: 'PATH',
      path: 'file',
    },
    initramfsFrom: {
      type: 'string',
      description: 'pack this directory as the initramfs (cached)',
      valueHint: 'DIR',
      path: 'dir',
    },
    append: { type: 'string', description: 'more kernel command line', valueHint: 'ARGS' },
    share: {
      type: 'string',
      description: 'share a host directory at /mnt/TAG',
      valueHint: 'DIR[:TAG]',
      repeatable: true,
      path: 'dir',
    },
    rootShare: {
      type: 'string',
      description: "boot with this host directory as the guest's root filesystem",
      valueHint: 'DIR',
      path: 'dir',
    },
    fs: { type: 'enum', options: ['auto', '9p', 'virtiofs'], description: 'share filesystem', default: 'auto' },
    exec: {
      type: 'string',
      description: 'run this command in the guest, print its output, exit with its status',
      valueHint: 'CMD',
    },
    console: { type: 'boolean', description: 'serial console on this terminal (foreground)' },
    mem: { type: 'string', description: 'memory size', default: '512M', valueHint: 'SIZE' },
    cpus: { type: 'string', description: 'virtual CPUs', default: '1', valueHint: 'N' },
    machine: {
      type: 'enum',
      options: ['q35', 'pc', 'microvm'],
      description: 'machine type (microvm: no PCI, so no shares)',
      default: 'q35',
    },
    compress: {
      type: 'enum',
      options: ['none', 'gzip'],
      description: 'compression of a packed initramfs (none packs 4x faster and boots as fast)',
      default: 'none',
    },
    timeout: {
      type: 'string',
      description: 'seconds for the guest to reach userspace (and for a pipe given as input to say something)',
      default: '120',
      valueHint: 'SECONDS',
    },
    accel: { type: 'enum', options: ['kvm', 'hvf', 'tcg'], description: 'accelerator; env PIM_ACCEL' },
  },
  async run({ args, data }) {
    const { rest, repeated } = data as Words;
    const { randomBytes } = await import('node:crypto');
    const { kboot } = await import('../lib/kboot/boot.ts');

    if (args.initrd && args.initramfsFrom)
      throw new PimError(
        EXIT.USAGE,
        '--initrd and --initramfs-from are exclusive: pass a ready archive or a directory to pack',
      );
    const cpus = Number(args.cpus);
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > 256)
      throw new PimError(EXIT.USAGE, `--cpus must be a whole number from 1 to 256`);
    if (!/^\d+[KMGT]?$/i.test(args.mem)) throw new PimError(EXIT.USAGE, `--mem must be a size such as 512M or 2G`);
    const timeout = Number(args.timeout);
    if (!(timeout > 0)) throw new PimError(EXIT.USAGE, `--timeout must be a number of seconds`);
    return kboot({
      name: args.name,
      kernel: args.kernel,
      initrd: args.initrd,
      initramfsFrom: args.initramfsFrom,
      append: args.append,
      shares: repeated.share ?? [],
      rootShare: args.rootShare,
      fs: args.fs,
      exec: args.exec,
      console: Boolean(args.console),
      mem: args.mem,
      cpus,
      machine: args.machine,
      compress: args.compress as 'none' | 'gzip',
      timeoutMs: timeout * 1000,
      accel: args.accel,
      extra: rest,
      token: randomBytes(6).toString('hex'),
    });
  },
});
