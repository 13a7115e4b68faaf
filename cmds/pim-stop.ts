/**
 * pim-stop: stop VMs, gently first. guest agent -> ACPI powerdown -> SIGTERM
 * -> SIGKILL; prints NAME STAGE SECONDS for each VM, the stage being the one
 * that stopped it. With no names, reads them from stdin (the first word of
 * each line), so `pim-ps | fzf | pim-stop` and `pim-ps -q | xargs pim-stop` work.
 * Words that look like the other fields of a pim-ps line (`pim-ps | xargs
 * pim-stop`) are refused with a pointer to `pim-ps -q`, before anything stops.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Words } from '../lib/cli/command.ts';
import { jsonArgs, timeoutArgs, parseTimeout, forEachName, namesOrStdin } from '../lib/cli/args.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { vmRef } from '../lib/vm/ref.ts';
import { requireRunning, vmInfo } from '../lib/vm/state.ts';
import { printRecords, stdoutIsTTY } from '../lib/cli/output.ts';
import { looksLikeField, nameProblem } from '../lib/core/names.ts';
import { StatusLine } from '../lib/cli/status.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

export default defineCommand({
  meta: {
    name: 'pim-stop',
    version: VERSION,
    description: 'Stop VMs: guest agent, then ACPI powerdown, then SIGTERM, then SIGKILL.',
    details: `
Each stage waits up to --timeout seconds for QEMU to exit before the next one.
--force skips the guest agent and ACPI stages. A paused VM is resumed first (said on
stderr); a VM in an error state (internal-error, guest-panicked) is told to quit through
QMP at once; a pim-kboot VM gets 5 s for ACPI, then QMP quit. On a terminal, stderr shows
the stage each VM is waiting in. Output: NAME STAGE SECONDS, where STAGE is agent, acpi,
quit, sigterm or sigkill. With no NAME, names are read from stdin; empty stdin
is nothing to do (exit 0).`,
    examples: ['pim-stop dev', 'pim-ps -q | fzf -m | pim-stop', 'pim-ps -q | xargs pim-stop --timeout 10'],
  },
  args: {
    names: {
      type: 'positional',
      required: false,
      variadic: true,
      valueHint: 'NAME',
      description: 'VMs to stop (default: names read from stdin)',
      complete: vmNames,
    },
    ...jsonArgs,
    ...timeoutArgs(20, 'at each stage'),
    force: { type: 'boolean', alias: 'f', description: 'skip the graceful stages: SIGTERM, then SIGKILL' },
  },
  async run({ args, data }) {
    const { stopVm } = await import('../lib/guest/stop.ts');
    const ms = parseTimeout(args.timeout, 20);
    const names = await namesOrStdin(
      (data as Words).positionals,
      'no VM names given; name them, or pipe them in (pim-ps -q | pim-stop)',
    );
    if (!names.length) return 0; // nothing to do (an empty pipe, a cancelled fzf)
    // `pim-ps | fzf | xargs pim-stop` gives every field of a line as a name: refuse them all
    // before anything stops. A pim-ps line always has a word that cannot be a name (its
    // image path, or "-" for a field it lacks): only then are the other field-like words
    // (a pid, a state) taken for fields; alone, "stale" is a name like any other, and a
    // field word that is a VM's name is still a name.
    const fields: string[] = [];
    if (names.some((n) => looksLikeField(n) && nameProblem(n))) {
      for (const n of new Set(names)) {
        if (looksLikeField(n) && (nameProblem(n) || (await vmInfo(vmRef(n))).state === 'absent')) fields.push(n);
      }
    }
    if (fields.length) {
      const shown =
        fields
          .slice(0, 4)
          .map((w) => JSON.stringify(w))
          .join(', ') + (fields.length > 4 ? ', ...' : '');
      throw new PimError(
        EXIT.USAGE,
        `${shown} ${fields.length > 1 ? 'look' : 'looks'} like ${fields.length > 1 ? 'fields' : 'a field'} of pim-ps lines (a path, pid, port, state...), not VM names, so nothing was stopped; give names alone: pim-ps -q | fzf -m | xargs pim-stop`,
      );
    }
    const refs = new Map(names.map((n) => [n, vmRef(n)])); // every name is checked before anything stops
    // on a terminal, the stage each VM is waiting in (acpi, agent, quit, sigterm), live on stderr
    const status = new StatusLine();
    const waiting = new Map<string, string>();
    const show = () => status.show(`stopping ${[...waiting].map(([n, s]) => `${n}: ${s}`).join(', ')}`);
    const tty = stdoutIsTTY() && !args.json;
    const done: Array<{ name: string; stage: string; seconds: number }> = [];
    try {
      return await forEachName(
        names,
        async (name) => {
          const vm = await requireRunning(refs.get(name)!);
          const r = await stopVm(vm, {
            timeoutMs: ms,
            force: args.force,
            onStage: (s) => (waiting.set(name, s === 'agent' ? 'guest agent' : s), show()),
            say: (l) => status.say(l),
          });
          waiting.delete(name);
          // a pipe gets each VM's line as it stops; a terminal one aligned table at the end
          if (tty) done.push({ ...r });
          else printRecords([{ ...r }], ['stage', 'seconds'], { json: args.json, plain: true });
          if (waiting.size) show();
        },
        { parallel: true },
      );
    } finally {
      status.end();
      if (done.length) printRecords(done, ['stage', 'seconds'], { json: args.json });
    }
  },
});
