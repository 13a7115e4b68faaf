/**
 * pim-qmp: run one raw QMP command on a VM and print its `return` value as
 * JSON. Plumbing. A QMP error exits 65 with its class and description.
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { timeoutArgs } from '../lib/cli/args.ts';
import { completeVmNames } from '../lib/vm/complete.ts';

export const cmd = defineCmd({
  name: 'pim-qmp',
  summary: 'Run a raw QMP command on a VM; print its return value as JSON.',
  usage: 'NAME CMD [JSON-ARGS] [--timeout S]',
  examples: ['pim-qmp dev query-status', `pim-qmp dev human-monitor-command '{"command-line":"info network"}'`],
  args: { ...timeoutArgs(10, 'for a reply') },
  positionals: { min: 2, max: 3 },
  completePositional: completeVmNames,
  async run({ args, positionals }) {
    const { rawCommand } = await import('../lib/vm/connect.ts');
    const { parseTimeout } = await import('../lib/cli/args.ts');
    const [name, command, raw] = positionals as [string, string, string | undefined];
    await rawCommand('qmp', name, command, raw, parseTimeout(args.timeout, 10));
  },
});

main(cmd);
