/**
 * pim-ga: run one raw guest-agent command in a VM and print its `return`
 * value as JSON. Plumbing. Exit 69 when no agent answers, 65 on an agent error.
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { completeVmNames } from '../lib/vm/complete.ts';

export const cmd = defineCmd({
  name: 'pim-ga',
  summary: 'Run a raw guest-agent command in a VM; print its return value as JSON.',
  usage: 'NAME CMD [JSON-ARGS] [--timeout S]',
  description: `
Commands that answer nothing when they succeed (guest-shutdown, guest-suspend-*) print {}.`,
  examples: ['pim-ga dev guest-info', `pim-ga dev guest-exec '{"path":"/bin/uname","arg":["-a"],"capture-output":true}'`],
  args: { timeout: { type: 'string', description: 'seconds to wait for the agent', default: '5' } },
  positionals: { min: 2, max: 3 },
  completePositional: completeVmNames,
  async run({ args, positionals }) {
    const { withGa, jsonArg, timeoutMs } = await import('../lib/vm/connect.ts');
    const { printJson } = await import('../lib/cli/output.ts');
    const [name, command, raw] = positionals as [string, string, string | undefined];
    const a = jsonArg(raw);
    const ms = timeoutMs(args.timeout, 5);
    const ret = await withGa(name, ms, (g) => g.execute(command, a, ms));
    printJson(ret ?? {});
  },
});

main(cmd);
