/**
 * pim-ventoy: a Ventoy stick fed from pim's verified ISO catalog, with the
 * profiles' answer files on it (the same templates as pim-serve and
 * pim-build, rendered with `target: "ventoy"`).
 *   list [--json] [-q]                     DEVICE SIZE VERSION STYLE FREE ISOS (read-only, no mount)
 *   add ISO-NAME... [--dir /iso]           verified copy, read back, NAME.iso.sha256 beside it
 *   configure PROFILE... [--iso ISO-NAME]  /ventoy/pim/ answer files + ventoy.json auto_install
 *   verify                                 hash every ISO again against its sidecar (65 on a mismatch)
 *   eject                                  sync, unmount pim's mounts, power off
 *   install DEVICE --ventoy Ventoy2Disk.sh --yes [--gpt] [--reserve MiB]
 * Every command but install takes --stick DEVICE|IMAGE; without it, the only
 * Ventoy disk list finds. The work is lib/ventoy/; this file parses, calls it, prints.
 */
import { defineCommand } from 'citty';
import { VERSION, type Words } from '../lib/cli/command.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { catalogCompleter } from '../lib/cli/catalog-names.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';

const stickArg = {
  stick: {
    type: 'string',
    valueHint: 'DEVICE|IMAGE',
    description: 'the Ventoy disk, or an image file of one (default: the only one pim-ventoy list finds)',
    path: 'file',
  },
} as const;

const isoNames = catalogCompleter('isos', () => import('../lib/config/defaults.ts'));
const profileNames = catalogCompleter('profiles', () => import('../lib/config/defaults.ts'));

const list = defineCommand({
  meta: {
    name: 'list',
    description: 'Ventoy disks, read-only: device, size, version, partition style, free space, ISOs.',
  },
  args: { ...stickArg, ...jsonArgs, ...quietArgs },
  async run({ args }) {
    const d = await import('../lib/ventoy/detect.ts');
    const { printRecords } = await import('../lib/cli/output.ts');
    let sticks: Awaited<ReturnType<typeof d.pickStick>>[];
    if (args.stick) sticks = [await d.pickStick(args.stick)];
    else {
      const found = await d.findSticks();
      sticks = found.sticks;
      if (found.unreadable.length) {
        const { log } = await import('../lib/core/log.ts');
        log.warn(
          `cannot read ${found.unreadable.join(', ')}: run as root, or through sudo, to see whether they are Ventoy disks`,
        );
      }
    }
    const recs = sticks.map((s) => ({
      name: s.name,
      size: s.size,
      version: s.version,
      style: s.style,
      free: s.free,
      isos: args.json ? s.isos : s.isos.join(','),
    }));
    printRecords(recs, ['size', 'version', 'style', 'free', 'isos'], { json: args.json, quiet: args.quiet });
  },
});

const add = defineCommand({
  meta: {
    name: 'add',
    description:
      'Copy catalog ISOs onto the stick, verified (downloaded when missing), read back, with NAME.iso.sha256.',
  },
  args: {
    names: {
      type: 'positional',
      required: true,
      variadic: true,
      valueHint: 'ISO-NAME',
      description: 'ISOs of the catalog (pim-iso list)',
      complete: isoNames,
    },
    dir: { type: 'string', valueHint: 'DIR', description: 'the directory on the stick', default: '/' },
    ...stickArg,
    ...jsonArgs,
  },
  async run({ args, data }) {
    const names = (data as Words).positionals;
    const { checkStickDir, sources, addToStick } = await import('../lib/ventoy/add.ts');
    const dir = checkStickDir(args.dir ?? '/');
    const { withStick } = await import('../lib/ventoy/stick.ts');
    const { log } = await import('../lib/core/log.ts');
    const { progressReporter } = await import('../lib/install/download.ts');
    const { printRecords } = await import('../lib/cli/output.ts');
    const srcs = await sources(names);
    const res = await withStick(args.stick, (s, signal) =>
      addToStick(s, srcs, dir, signal, {
        onSkip: (n, p) => log.info(`${n}: ${p} is there with a matching sidecar; skipped`),
        onCopy: (n, p) => {
          log.info(`${n}: copying to ${p}`);
          return progressReporter(`pim-ventoy: ${n}`);
        },
        onVerify: (n) => log.info(`${n}: reading the copy back`),
      }),
    );
    printRecords(res, ['status', 'path', 'sha256', 'seconds'], { json: args.json, plain: true });
  },
});

const configure = defineCommand({
  meta: {
    name: 'configure',
    description: "Render profiles' answer files onto the stick and point ventoy.json's auto_install at them.",
  },
  args: {
    profiles: {
      type: 'positional',
      required: true,
      variadic: true,
      valueHint: 'PROFILE',
      description: 'profiles (pim-profile list)',
      complete: profileNames,
    },
    iso: {
      type: 'string',
      valueHint: 'ISO-NAME',
      description: "the ISO to install from (default: each profile's iso)",
      complete: isoNames,
    },
    url: {
      type: 'string',
      valueHint: 'URL',
      description: "a pim-serve URL the installer can reach, for the late command's installs.d script (default: none)",
    },
    timeout: {
      type: 'string',
      valueHint: 'S',
      description: 'seconds Ventoy waits before it picks the template',
      default: '10',
    },
    ...stickArg,
    ...jsonArgs,
  },
  async run({ args, data }) {
    const profiles = (data as Words).positionals;
    const timeout = Number(args.timeout);
    if (!Number.isInteger(timeout) || timeout < 0)
      throw new PimError(
        EXIT.USAGE,
        `--timeout must be a whole number of seconds, not ${JSON.stringify(args.timeout)}`,
      );
    if (args.url !== undefined && !/^https?:\/\/[^\s/]+/.test(args.url))
      throw new PimError(EXIT.USAGE, `--url must be an http:// or https:// URL, not ${JSON.stringify(args.url)}`);
    const { withStick } = await import('../lib/ventoy/stick.ts');
    const c = await import('../lib/ventoy/configure.ts');
    const { printRecords } = await import('../lib/cli/output.ts');
    const res = await withStick(args.stick, (s) =>
      c.configure(s, profiles, { iso: args.iso, url: args.url?.replace(/\/+$/, ''), timeout }),
    );
    printRecords(res, ['iso', 'image', 'template'], { json: args.json, plain: true });
    // login is by key only unless a profile gives a password: a stick that installs a
    // system nobody can log in to is worth one line
    const { loadProfile } = await import('../lib/config/profile.ts');
    const { log } = await import('../lib/core/log.ts');
    for (const name of new Set(profiles)) {
      const v = (await loadProfile(name)).value;
      const keys = Array.isArray(v.ssh_keys) ? v.ssh_keys.filter((k) => typeof k === 'string' && k.trim()) : [];
      if (!keys.length && !v.password_hash)
        log.warn(
          `profile "${name}" has no ssh_keys and no password: the system it installs has no way in (login is by key only); add ssh_keys or password to it`,
        );
    }
  },
});

const verify = defineCommand({
  meta: {
    name: 'verify',
    description: 'Hash every ISO on the stick again against its NAME.iso.sha256; 65 when one does not match.',
  },
  args: { ...stickArg, ...jsonArgs },
  async run({ args }) {
    const { withStick } = await import('../lib/ventoy/stick.ts');
    const { verifyStick } = await import('../lib/ventoy/verify.ts');
    const { printRecords } = await import('../lib/cli/output.ts');
    const { log } = await import('../lib/core/log.ts');
    return withStick(args.stick, async (s, signal) => {
      let code = 0;
      for await (const r of verifyStick(s, signal)) {
        if (r.status === 'mismatch') {
          log.error(
            `${r.name}: sha256 ${r.sha256} does not match its sidecar (${r.expected}); copy it again with pim-ventoy add`,
          );
          code = EXIT.DATAERR;
        }
        printRecords([r], ['status', 'sha256'], { json: args.json, plain: true });
      }
      return code;
    });
  },
});

const eject = defineCommand({
  meta: {
    name: 'eject',
    description: 'Sync, unmount what pim mounted, and power the device off where the system allows it.',
  },
  args: { ...stickArg, ...jsonArgs },
  async run({ args }) {
    const { pickStick } = await import('../lib/ventoy/detect.ts');
    const { eject: ej } = await import('../lib/ventoy/eject.ts');
    const { printRecords } = await import('../lib/cli/output.ts');
    printRecords([await ej(await pickStick(args.stick))], ['synced', 'unmounted', 'powered_off'], {
      json: args.json,
      plain: true,
    });
  },
});

const install = defineCommand({
  meta: {
    name: 'install',
    description:
      "Put Ventoy on a whole disk with your own Ventoy release's Ventoy2Disk.sh (erases the disk; needs --yes).",
  },
  args: {
    device: {
      type: 'positional',
      required: true,
      valueHint: 'DEVICE',
      description: 'a whole disk (/dev/sdb), not a partition',
      path: 'file',
    },
    ventoy: {
      type: 'string',
      valueHint: 'PATH',
      description: 'Ventoy2Disk.sh from a Ventoy release you unpacked (pim does not ship Ventoy)',
      path: 'file',
    },
    gpt: { type: 'boolean', description: 'a GPT partition table (default: MBR)' },
    reserve: { type: 'string', valueHint: 'MiB', description: 'space to leave free at the end of the disk' },
    yes: { type: 'boolean', description: 'yes, erase DEVICE' },
    ...jsonArgs,
  },
  async run({ args }) {
    if (!args.ventoy)
      throw new PimError(
        EXIT.USAGE,
        'install needs --ventoy PATH/Ventoy2Disk.sh (from a Ventoy release: pim does not ship Ventoy)',
      );
    const reserve = args.reserve === undefined ? undefined : Number(args.reserve);
    const { install: inst } = await import('../lib/ventoy/install.ts');
    const { printRecords } = await import('../lib/cli/output.ts');
    const r = await inst(args.device, { ventoy: args.ventoy, gpt: Boolean(args.gpt), reserve, yes: Boolean(args.yes) });
    printRecords([{ name: r.name, status: 'installed', style: r.gpt ? 'gpt' : 'mbr' }], ['status', 'style'], {
      json: args.json,
      plain: true,
    });
  },
});

export default defineCommand({
  meta: {
    name: 'pim-ventoy',
    version: VERSION,
    description: "A Ventoy stick fed from pim's verified ISO catalog, with the profiles' answer files on it.",
    details: `
Every command but install works on --stick DEVICE|IMAGE, or on the only Ventoy disk list
finds (none: 66; several: 64, listing them). An image file is set up on a loop device of
its own (losetup -f --show -P) and detached again at the end. A Ventoy disk has
partition 1 at sector 2048 and partition 2 of exactly 65536 sectors, FAT16, labelled
VTOYEFI; its version is VENTOY_VERSION in partition 2's /grub/grub.cfg. list reads all
that without mounting anything. add, configure and verify mount partition 1 (exFAT: the
kernel's driver, else mount.exfat-fuse) at a private dir and always unmount it, Ctrl-C
too; a stick mounted elsewhere is refused (75). Only losetup, partx, mount, umount and
eject's power-off run as root: through sudo -n when you are not root, and a refused sudo
is exit 77 naming the operation.
add verifies each ISO against the catalog (downloading it when missing), checks the free
space (73) and exFAT's rules for names, copies it as NAME.iso.part with fsync, reads it
back and hashes it, renames it to NAME.iso and writes NAME.iso.sha256 beside it. An ISO
already there with a matching sidecar is skipped.
configure renders each profile's answer file (preseed for Debian, autoinstall for Ubuntu,
whose first line must then be "autoinstall:") into /ventoy/pim/, aimed at the first
disk that is not the stick ($$VT_LINUX_DISK_SDX_1ST_NONVTOY$$), and merges pim's entries
into /ventoy/ventoy.json's auto_install (image, template, autosel, timeout); the user's
keys and entries stay as they were, the old file is kept as ventoy.json.bak. A broken
ventoy.json is exit 78 with FILE:LINE and nothing is written. A profile with no ssh_keys
and no password gets a warning: the system it installs would let nobody log in.`,
    examples: [
      'pim-ventoy list',
      'pim-ventoy add debian-netinst-amd64 --dir /iso',
      'pim-ventoy configure dev --iso debian-netinst-amd64',
      'pim-ventoy verify',
      'pim-ventoy eject',
      'pim-ventoy install /dev/sdb --ventoy ~/ventoy-1.1.17/Ventoy2Disk.sh --yes',
      'pim-ventoy add debian-netinst-amd64 --stick ./stick.img',
    ],
  },
  subCommands: { list, add, configure, verify, eject, install },
});
