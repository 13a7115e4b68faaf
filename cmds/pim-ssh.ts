/**
 * pim-ssh: the system's OpenSSH client to a VM, through a per-VM config file
 * that pim writes in the runtime dir (lib/guest/reach.ts): the address (the
 * forwarded port, or a bridged guest's address from its agent), the user and
 * key, a known_hosts pinned through the guest agent, and a cached master
 * connection (ControlMaster auto, ControlPersist). With no command, an
 * interactive shell; with one, its stdin, stdout, stderr and exit status.
 *
 * The first connection is made apart (ssh -N, its messages captured), so a
 * connection that fails is one clear error with pim's exit code; then
 * pim-ssh becomes ssh (execve, Node 22.15+; else a child with its signals
 * forwarded), which runs the command over the master: nothing of pim's stays
 * between the command and its streams.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Words } from '../lib/cli/command.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { runningVm } from '../lib/vm/connect.ts';
import { prepareSsh, startMaster, overrideArgs, needSshClient } from '../lib/guest/reach.ts';
import { ensureUserKey } from '../lib/guest/userkey.ts';
import { writeOut } from '../lib/cli/output.ts';
import { becomeOrRun } from '../lib/core/proc.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

export default defineCommand({
  meta: {
    name: 'pim-ssh',
    version: VERSION,
    description: 'SSH into a VM (OpenSSH, a cached connection, host keys pinned through the guest agent).',
    usage: 'NAME [options] [-- COMMAND [ARGS...]]',
    passthrough: 'COMMAND ARGS',
    details: `
Runs the system's ssh with -F <runtime>/NAME.ssh/config, a file pim writes: the address
(127.0.0.1 and the forwarded port; a bridged VM's address from its guest agent), the user
and key, a known_hosts of its own, and ControlMaster auto with ControlPersist 10m, so a
second command reuses the open connection. Who logs in: --user and -i, else PIM_SSH_USER
and PIM_SSH_KEY, else what pim-run recorded (a VM from a pim build: the profile's ssh_user
and your key in its ssh_keys, or pim's own key, which every build gets), else root with
pim's own key (~/.local/share/pim/ssh/id_ed25519, made on first use) and OpenSSH's default
keys. The guest's host keys
are read through its guest agent (/etc/ssh/ssh_host_*_key.pub, or dropbear's key files)
and pinned before the first connection (StrictHostKeyChecking yes): a guest that shows
another key is refused (65). Without an agent the first key is taken (accept-new), and
pim-ssh says so once. With no COMMAND: an interactive shell. With one: the words go to
ssh as they are (the remote shell joins them, as with ssh), stdin, stdout and stderr stay
apart, and the exit status is the command's. A connection that fails is 69 (77 when the
key is refused). --config prints the config's path (writing it first, with --user and -i
in it as User and IdentityFile), for ssh -F, scp -F and rsync -e "ssh -F PATH" (rsync must
be in the guest too). pim-stop closes the cached
connection. --pubkey prints the public half of pim's own key (made on first use), for a
guest of your own: append it to the guest's authorized_keys.`,
    examples: [
      'pim-ssh dev -- uname -a',
      "pim-ssh dev -- 'echo out; echo err >&2; exit 3'",
      'tar c -C /etc hostname | pim-ssh dev -- tar x -C /tmp',
      'ssh -F "$(pim-ssh --config dev)" dev uptime',
      'ssh -F "$(pim-ssh -i ~/.ssh/other --config dev)" dev uptime',
      'scp -O -F "$(pim-ssh --config dev)" /etc/hostname dev:/tmp/',
      "pim-ssh --pubkey | pim-exec dev -- sh -c 'cat >>/root/.ssh/authorized_keys'",
    ],
  },
  args: {
    name: { type: 'positional', required: false, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    user: { type: 'string', alias: 'l', description: 'log in as USER; env PIM_SSH_USER', valueHint: 'USER' },
    identity: {
      type: 'string',
      alias: 'i',
      description: 'the private key to log in with; env PIM_SSH_KEY',
      valueHint: 'KEY',
      path: 'file',
    },
    tty: { type: 'boolean', alias: 't', description: 'a terminal for the command (ssh -t)' },
    config: { type: 'boolean', description: "print the path of the VM's ssh config (written first), for ssh -F" },
    pubkey: {
      type: 'boolean',
      description: "print pim's own public key (made on first use), for a guest's authorized_keys; no NAME",
    },
  },
  async run({ args, data }) {
    const { rest } = data as Words;
    // a builtin through getBuiltinModule: a dynamic import() would set up the ESM loader (ms)
    const { writeSync } = process.getBuiltinModule('node:fs') as typeof import('node:fs');
    const say = (m: string) => writeSync(2, `pim-ssh: ${m}\n`);
    if (args.config && rest.length) throw new PimError(EXIT.USAGE, '--config prints a path: it takes no command');
    if (args.pubkey) {
      if (args.name || rest.length || args.config)
        throw new PimError(EXIT.USAGE, "--pubkey prints pim's public key: it takes no NAME, command or --config");
      writeOut((await ensureUserKey()).public + '\n');
      return EXIT.OK;
    }
    if (!args.name) throw new PimError(EXIT.USAGE, 'missing NAME: the VM to ssh into (or --pubkey)');
    // before anything connects: without ssh, the install hint (69), not "cannot reach"
    const ssh = args.config ? '' : await needSshClient('ssh');
    const vm = await runningVm(args.name);
    // with --config the file is all its reader gets: -i and --user go into it
    const p = await prepareSsh(vm, { user: args.user, key: args.identity }, say, { configWho: args.config });
    if (args.config) {
      writeOut(p.files.config + '\n');
      return EXIT.OK;
    }
    if (!p.master) await startMaster(p, vm, ssh);
    const argv = ['-F', p.files.config, ...overrideArgs(p), ...(args.tty ? ['-t'] : []), '--', vm.name, ...rest];
    return becomeOrRun(ssh, argv, { argv0: 'ssh' });
  },
});
