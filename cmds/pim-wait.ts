/**
 * pim-wait: return once a running VM's guest is really up, as `limactl start`
 * does, on readiness signals and never on sleeps: the guest agent answering
 * guest-sync, an SSH banner on the forwarded port, or a console line that
 * matches a regular expression (lib/guest/wait.ts). Prints NAME, what answered,
 * after how many seconds, and what it said. 75 on timeout (with what was
 * last seen), 69 when the VM stops meanwhile or does not run.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION, type Completer, type Words } from '../lib/cli/command.ts';
import { jsonArgs, timeoutArgs, parseTimeout } from '../lib/cli/args.ts';
import { runningVm } from '../lib/vm/connect.ts';
import { parseWaitFor, waitUp, checkWaitable, signalsOf } from '../lib/guest/wait.ts';
import { printRecords } from '../lib/cli/output.ts';
import { StatusLine } from '../lib/cli/status.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

const waitForCompleter: Completer = (complete) => {
  complete('agent', 'the guest agent answers guest-sync');
  complete('ssh', 'an SSH banner on the forwarded port');
  complete('console:', 'a console line matches REGEX (console:REGEX)');
};

export default defineCommand({
  meta: {
    name: 'pim-wait',
    version: VERSION,
    description: 'Wait until a VM is really up: its guest agent, SSH, or a console line.',
    details: `
--for agent: the guest agent answers guest-sync (the request waits in the agent's socket
until the guest opens its port; the reply is the signal). --for ssh: an "SSH-" banner on
the VM's forwarded SSH port (QEMU's forward accepts TCP before the guest listens, so only
the banner counts). --for console:REGEX: a line of the serial console matches REGEX,
searched from the start of this QEMU's log (so a line printed before pim-wait started
counts; after pim-ctl reboot use pim-ctl's own --wait). --for may be repeated: all must
answer. Prints NAME FOR SECONDS SEEN. Exit 75 on timeout, with what was last seen; 69 when
the VM stops meanwhile.`,
    examples: [
      'pim-wait dev',
      'pim-wait dev --for ssh --timeout 300',
      "pim-wait dev --for 'console:pim-testbed ready' --for agent",
    ],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    for: {
      type: 'string',
      repeatable: true,
      valueHint: 'ssh|agent|console:REGEX',
      description: 'what must answer (default: agent; ssh for a VM without an agent channel)',
      complete: waitForCompleter,
    },
    ...timeoutArgs(120, 'in all'),
    ...jsonArgs,
  },
  async run({ args, data }) {
    const ms = parseTimeout(args.timeout, 120);
    const given = (data as Words).repeated.for?.map((s) => parseWaitFor(s));
    const vm = await runningVm(args.name);
    const fors = given ?? [parseWaitFor(signalsOf(vm).agent ? 'agent' : 'ssh')];
    checkWaitable(vm.name, signalsOf(vm), fors);
    // on a terminal: what is awaited, the time so far and what was last seen, live on stderr
    const status = new StatusLine();
    const onProgress = (waiting: string[], last: string) => {
      if (!waiting.length) return status.hide();
      status.show(`waiting for ${waiting.join(' and ')}`);
      status.update(last);
    };
    const ready = await waitUp(vm, fors, { timeoutMs: ms, onProgress }).finally(() => status.end());
    printRecords(ready, ['for', 'seconds', 'seen'], { json: args.json });
    return 0;
  },
});
