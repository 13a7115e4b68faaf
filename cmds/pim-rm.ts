/**
 * pim-rm: remove what stopped VMs left: the kept log and stale runtime files
 * (and, with --image, the image in the store). Prints NAME PATH for each
 * file removed. Refuses a running VM (75). With no names, reads them from
 * stdin (the first word of each line), as pim-stop does.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Words } from '../lib/cli/command.ts';
import { jsonArgs } from '../lib/cli/args.ts';

/** Names whose log is kept in the runtime dir (loaded at TAB time only) */
const leftNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeLoggedNames);

export default defineCommand({
  meta: {
    name: 'pim-rm',
    version: VERSION,
    description: 'Remove what stopped VMs left (kept log, stale runtime files); --image also removes the store image.',
    details: `
A VM that stopped keeps its log (NAME.log in the runtime dir) for a post-mortem, and
pim-ps --all lists it as "stopped". pim-rm removes that log and any runtime file of the
name. A running VM is refused (exit 75): stop it first with pim-stop. --image also
deletes the image in the store (~/.local/share/pim/images/NAME.qcow2 and its UEFI vars):
there is no prompt, the flag is the confirmation. Builds are never touched (pim-build rm).
Output: NAME PATH for each file removed. Nothing of NAME to remove is exit 66.
With no NAME, names are read from stdin (the first word of each line); empty stdin is
nothing to do (exit 0). --stale removes, with no NAME, what builds, pim-kboot VMs and
failed starts left (their logs and runtime files, listed by pim-ps --all as stopped), and
never a VM defined in vms.d, a name with an image in the store, or a running VM; nothing
stale is exit 0.`,
    examples: ['pim-rm dev', 'pim-log dev >dev.log && pim-rm dev', 'pim-rm dev --image', 'pim-rm --stale'],
  },
  args: {
    names: {
      type: 'positional',
      required: false,
      variadic: true,
      valueHint: 'NAME',
      description: 'stopped VMs (default: names read from stdin)',
      complete: leftNames,
    },
    image: { type: 'boolean', description: 'also delete the image in the store' },
    stale: {
      type: 'boolean',
      description:
        'remove every leftover of builds, pim-kboot and failed starts (never a defined VM, a store image or a running VM); no NAME',
    },
    ...jsonArgs,
  },
  async run({ args, data }) {
    const { forEachName, namesOrStdin } = await import('../lib/cli/args.ts');
    const { vmRef } = await import('../lib/vm/ref.ts');
    const { removeVm } = await import('../lib/vm/remove.ts');
    const { printRecords, stdoutIsTTY } = await import('../lib/cli/output.ts');
    // a pipe (and --json) gets each VM's lines as they go; a terminal one aligned table at the end
    const tty = stdoutIsTTY() && !args.json;
    const done: Array<{ name: string; path: string }> = [];
    const print = (recs: Array<{ name: string; path: string }>) => {
      if (tty) done.push(...recs);
      else printRecords(recs, ['path'], { json: args.json, plain: true });
    };
    const show = async (work: () => Promise<number>) => {
      try {
        return await work();
      } finally {
        if (tty && done.length) printRecords(done, ['path']);
      }
    };
    if (args.stale) {
      const { EXIT, PimError } = await import('../lib/core/exit.ts');
      if ((data as Words).positionals.length || args.image)
        throw new PimError(EXIT.USAGE, '--stale finds what to remove itself: it takes no NAME and no --image');
      const { staleNames } = await import('../lib/vm/remove.ts');
      const stale = await staleNames();
      // one that started or went meanwhile is not an error: there is nothing of it to clean
      return show(() =>
        forEachName(stale, async (name) => {
          const removed = await removeVm(vmRef(name)).catch((e: unknown) => {
            if (e instanceof PimError && (e.code === EXIT.NOINPUT || e.code === EXIT.TEMPFAIL)) return [];
            throw e;
          });
          print(removed.map((path) => ({ name, path })));
        }),
      );
    }
    const names = await namesOrStdin(
      (data as Words).positionals,
      'no VM names given; name them, or pipe them in (pim-ps --all | pim-rm)',
    );
    if (!names.length) return 0; // nothing to do (an empty pipe, a cancelled fzf)
    const refs = new Map(names.map((n) => [n, vmRef(n)])); // every name is checked before anything is removed
    return show(() =>
      forEachName(names, async (name) => {
        const removed = await removeVm(refs.get(name)!, { image: args.image });
        print(removed.map((path) => ({ name, path })));
      }),
    );
  },
});
