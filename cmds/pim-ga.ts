/**
 * pim-ga: run one raw guest-agent command in a VM and print its `return`
 * value as JSON. Plumbing. Exit 69 when no agent answers, 65 on an agent error.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION } from '../lib/cli/command.ts';
import { timeoutArgs, parseTimeout } from '../lib/cli/args.ts';
import { rawCommand } from '../lib/vm/connect.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

export default defineCommand({
  meta: {
    name: 'pim-ga',
    version: VERSION,
    description: 'Run a raw guest-agent command in a VM; print its return value as JSON.',
    details: `
Commands that answer nothing when they succeed (guest-shutdown, guest-suspend-*) print {}.`,
    examples: [
      'pim-ga dev guest-info',
      `pim-ga dev guest-exec '{"path":"/bin/uname","arg":["-a"],"capture-output":true}'`,
    ],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    command: { type: 'positional', required: true, valueHint: 'CMD', description: 'the command, e.g. guest-info' },
    arguments: {
      type: 'positional',
      required: false,
      valueHint: 'JSON-ARGS',
      description: 'its arguments, a JSON object',
    },
    ...timeoutArgs(5, 'for the agent'),
  },
  async run({ args }) {
    await rawCommand('ga', args.name, args.command, args.arguments, parseTimeout(args.timeout, 5));
  },
});
