/**
 * pim-qmp: run one raw QMP command on a VM and print its `return` value as
 * JSON. Plumbing. A QMP error exits 65 with its class and description.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION } from '../lib/cli/command.ts';
import { timeoutArgs, parseTimeout } from '../lib/cli/args.ts';
import { rawCommand } from '../lib/vm/connect.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

export default defineCommand({
  meta: {
    name: 'pim-qmp',
    version: VERSION,
    description: 'Run a raw QMP command on a VM; print its return value as JSON.',
    examples: ['pim-qmp dev query-status', `pim-qmp dev human-monitor-command '{"command-line":"info network"}'`],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    command: { type: 'positional', required: true, valueHint: 'CMD', description: 'the command, e.g. query-status' },
    arguments: {
      type: 'positional',
      required: false,
      valueHint: 'JSON-ARGS',
      description: 'its arguments, a JSON object',
    },
    ...timeoutArgs(10, 'for a reply'),
  },
  async run({ args }) {
    await rawCommand('qmp', args.name, args.command, args.arguments, parseTimeout(args.timeout, 10));
  },
});
