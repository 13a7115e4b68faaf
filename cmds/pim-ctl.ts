/**
 * pim-ctl: pause, resume, reboot or reset a running VM, and print NAME and
 * its state afterwards (QMP's run state). reboot is the gentle one (the guest
 * agent asks the guest to reboot itself), reset the hard one (QMP
 * system_reset, the reset button); see lib/vm/ctl.ts for what each does.
 * An action that finds the VM already in its state is exit 0 with a note.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Completer, type Words } from '../lib/cli/command.ts';
import { jsonArgs, parseTimeout } from '../lib/cli/args.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { parseAction, ctlVm } from '../lib/vm/ctl.ts';
import { parseWaitFor, checkWaitable, signalsOf, waitUp } from '../lib/guest/wait.ts';
import { runningVm } from '../lib/vm/connect.ts';
import { printRecords } from '../lib/cli/output.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

const ACTIONS: Array<[string, string]> = [
  ['pause', 'stop the vCPUs (QMP stop)'],
  ['resume', 'continue (QMP cont)'],
  ['reboot', 'ask the guest to reboot itself (guest agent)'],
  ['reset', 'reset it hard, like the reset button (QMP system_reset)'],
];

const actionNames: Completer = (c) => {
  for (const [a, d] of ACTIONS) c(a, d);
};
const waitForms: Completer = (c) => {
  c('agent', 'the guest agent answers guest-sync');
  c('ssh', 'an SSH banner on the forwarded port');
  c('console:', 'a console line matches REGEX (console:REGEX)');
};

export default defineCommand({
  meta: {
    name: 'pim-ctl',
    version: VERSION,
    description: 'Pause, resume, reboot (gently, through the guest agent) or reset (hard) a VM.',
    usage: 'NAME pause|resume|reboot|reset [options]',
    details: `
pause stops the vCPUs (QMP stop) and resume continues them (QMP cont). reboot asks the
guest to reboot itself through its agent (guest-shutdown mode reboot) and returns once QEMU
reports the reset; without an answering agent it is exit 69 and resets nothing (ACPI has no
reboot button): reset is the hard way, QMP system_reset, with no shutdown in the guest. A VM
that stopped on an error (internal-error, guest-panicked) is continued after a reset; a
paused one stays paused. Prints NAME STATE; an action that finds the VM already in its
state is exit 0 with a note on stderr. --wait (resume, reboot, reset) then waits as pim-wait
does; a console line counts only when written after the action.`,
    examples: ['pim-ctl dev pause', 'pim-ctl dev resume', 'pim-ctl dev reboot --wait agent', 'pim-ctl dev reset'],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    action: {
      type: 'positional',
      required: true,
      valueHint: 'ACTION',
      description: 'pause, resume, reboot or reset',
      complete: actionNames,
    },
    timeout: {
      type: 'string',
      description: 'seconds to wait for QMP, and for the guest to reset (reboot)',
      default: '60',
      valueHint: 'S',
    },
    wait: {
      type: 'string',
      repeatable: true,
      valueHint: 'ssh|agent|console:REGEX',
      description: 'then wait until this answers, as pim-wait --for',
      complete: waitForms,
    },
    waitTimeout: { type: 'string', description: 'seconds --wait waits', default: '120', valueHint: 'S' },
    ...jsonArgs,
  },
  async run({ args, data }) {
    const [name, word] = (data as Words).positionals as [string, string];
    const action = parseAction(word);
    const ms = parseTimeout(args.timeout, 60);
    const waitMs = parseTimeout(args.waitTimeout, 120, '--wait-timeout');
    const fors = ((data as Words).repeated.wait ?? []).map((s) => parseWaitFor(s, '--wait'));
    if (fors.length && action === 'pause')
      throw new PimError(EXIT.USAGE, '--wait is for resume, reboot and reset: a paused guest answers nothing');
    const { log } = await import('../lib/core/log.ts');
    const vm = await runningVm(name);
    checkWaitable(vm.name, signalsOf(vm), fors);
    // a console line counts only when written after the action
    const { statSync } = await import('node:fs');
    let logFrom = 0;
    try {
      logFrom = statSync(vm.files.log).size;
    } catch {
      /* no log: waitUp says so */
    }
    const r = await ctlVm(vm, action, ms);
    if (r.note) log.info(r.note);
    printRecords([{ name: r.name, state: r.state }], ['state'], { json: args.json });
    if (fors.length) {
      const ready = await waitUp(vm, fors, { timeoutMs: waitMs, logFrom });
      for (const x of ready) log.info(`${x.name}: ${x.for} up after ${x.seconds} s (${x.seen})`);
    }
    return 0;
  },
});
