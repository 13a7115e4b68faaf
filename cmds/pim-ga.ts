/**
 * pim-ga: run one raw guest-agent command in a VM and print its `return`
 * value as JSON. Plumbing. Exit 69 when no agent answers, 65 on an agent error.
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { timeoutArgs } from '../lib/cli/args.ts';
import { completeVmNames } from '../lib/vm/complete.ts';

export const cmd = defineCmd({
  name: 'pim-ga',
  summary: 'Run a raw guest-agent command in a VM; print its return value as JSON.',
  usage: 'NAME CMD [JSON-ARGS] [--timeout S]',
  description: `
Commands that answer nothing when they succeed (guest-shutdown, guest-suspend-*) print {}.`,
  examples: ['pim-ga dev guest-info', `pim-ga dev guest-exec '{"path":"/bin/uname","arg":["-a"],"capture-output":true}'`],
  args: { ...timeoutArgs(5, 'for the agent') },
  positionals: { min: 2, max: 3 },
  completePositional: completeVmNames,
  async run({ args, positionals }) {
    const { rawCommand } = await import('../lib/vm/connect.ts');
    const { parseTimeout } = await import('../lib/cli/args.ts');
    const [name, command, raw] = positionals as [string, string, string | undefined];
    await rawCommand('ga', name, command, raw, parseTimeout(args.timeout, 5));
  },
});

main(cmd);
