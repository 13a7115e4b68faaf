/**
 * pim-cp: copy files between the host and a VM, scp-style: `NAME:path` on
 * one side (or both: VM to VM, a tar stream through pim). It goes over the VM's ssh config and cached connection (the same
 * as pim-ssh: lib/guest/reach.ts), with OpenSSH's `scp -O` (no SFTP server
 * needed in the guest), modes and times kept; a guest without scp gets a tar
 * stream over ssh (lib/guest/copy.ts).
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Words } from '../lib/cli/command.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { planCopy, checkLocal, copy, copyAcross } from '../lib/guest/copy.ts';
import { runningVm } from '../lib/vm/connect.ts';
import { prepareSsh, startMaster, overrideArgs, needSshClient } from '../lib/guest/reach.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

export default defineCommand({
  meta: {
    name: 'pim-cp',
    version: VERSION,
    description:
      'Copy files between the host and a VM (NAME:path), or between two VMs, over their cached SSH connections.',
    usage: '[options] SRC... DEST',
    details: `
One side is a VM, written NAME:path (USER@NAME:path; NAME: alone is the login's home), the
other the host. As with scp, a ':' before any '/' makes a word remote: write a local path
that has one as ./x:y or /x:y. Several sources go into a directory; -r copies directories.
The copy is OpenSSH's scp -O over the VM's ssh config and cached master connection (see
pim-ssh; the user and key are chosen the same way), with -p: modes and times are kept. A
guest with no scp binary (dropbear brings none) gets a tar stream over ssh instead, said
once and remembered until the VM stops (PIM_CP_VIA=scp|tar chooses). A local source that
does not exist is 66 before anything runs; so is a source missing in the guest (its
"No such file or directory"). A destination that cannot be written is 73 (77 when
refused), a VM that is not running or cannot be reached 69. Between two VMs
(A:path B:path) each source is a tar stream from A's ssh into B's, through pim: the
guests need not reach each other; --user and -i apply to both sides unless USER@ says.
A guest's tar stream is checked by pim, member by member: only what was asked for, files
and directories (the guest follows links, as scp -r does); an absolute name, "..", a
link, a device or a FIFO is refused (65) and nothing is copied. Without ssh or scp on
PATH, the install hint (69) before anything connects.`,
    examples: [
      'pim-cp /etc/hostname dev:/tmp/',
      'pim-cp dev:/etc/os-release .',
      'pim-cp -r /etc/default dev:/tmp/defaults',
      'pim-cp -r dev:/etc/acpi ./acpi-of-dev',
      'pim-cp dev:/etc/hostname web:/tmp/hostname-of-dev',
    ],
  },
  args: {
    paths: {
      type: 'positional',
      required: true,
      variadic: true,
      valueHint: 'SRC... DEST',
      description: 'local paths and NAME:path, one side a VM',
      complete: vmNames,
      path: 'file',
      remote: true,
    },
    recursive: { type: 'boolean', alias: 'r', description: 'copy directories, and what is in them' },
    user: { type: 'string', description: 'log in as USER (also USER@NAME:path); env PIM_SSH_USER', valueHint: 'USER' },
    identity: {
      type: 'string',
      alias: 'i',
      description: 'the private key to log in with; env PIM_SSH_KEY',
      valueHint: 'KEY',
      path: 'file',
    },
  },
  async run({ args, data }) {
    const words = (data as Words).positionals;
    const plan = planCopy(words);
    for (const side of [plan, plan.to]) {
      if (side?.user && args.user && side.user !== args.user)
        throw new PimError(EXIT.USAGE, `--user ${args.user} and ${side.user}@${side.vm} disagree`);
    }
    checkLocal(plan, Boolean(args.recursive));
    // before anything connects: without ssh, the install hint (69), not "cannot reach"
    const ssh = await needSshClient('ssh');
    // a builtin through getBuiltinModule: a dynamic import() would set up the ESM loader (ms)
    const { writeSync } = process.getBuiltinModule('node:fs') as typeof import('node:fs');
    /** ssh's options for one VM, its master connection up */
    const reach = async (name: string, user: string | undefined) => {
      const vm = await runningVm(name);
      const p = await prepareSsh(vm, { user: user ?? args.user, key: args.identity }, (m) =>
        writeSync(2, `pim-cp: ${m}\n`),
      );
      if (!p.master) await startMaster(p, vm, ssh);
      return { opts: ['-F', p.files.config, ...overrideArgs(p)], dir: p.files.dir };
    };
    const from = await reach(plan.vm, plan.user);
    if (plan.to)
      await copyAcross(plan, Boolean(args.recursive), from.opts, (await reach(plan.to.vm, plan.to.user)).opts);
    else await copy({ plan, recursive: Boolean(args.recursive), sshOpts: from.opts, dir: from.dir });
    return EXIT.OK;
  },
});
