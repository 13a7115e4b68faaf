/**
 * pim-qmp: run one raw QMP command on a VM and print its `return` value as
 * JSON. Plumbing. A QMP error exits 65 with its class and description.
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { completeVmNames } from '../lib/vm/complete.ts';

export const cmd = defineCmd({
  name: 'pim-qmp',
  summary: 'Run a raw QMP command on a VM; print its return value as JSON.',
  usage: 'NAME CMD [JSON-ARGS] [--timeout S]',
  examples: ['pim-qmp dev query-status', `pim-qmp dev human-monitor-command '{"command-line":"info network"}'`],
  args: { timeout: { type: 'string', description: 'seconds to wait for a reply', default: '10' } },
  positionals: { min: 2, max: 3 },
  completePositional: completeVmNames,
  async run({ args, positionals }) {
    const { withQmp, jsonArg, timeoutMs } = await import('../lib/vm/connect.ts');
    const { printJson } = await import('../lib/cli/output.ts');
    const [name, command, raw] = positionals as [string, string, string | undefined];
    const a = jsonArg(raw);
    const ms = timeoutMs(args.timeout, 10);
    const ret = await withQmp(name, ms, (q) => q.execute(command, a, ms));
    printJson(ret ?? {});
  },
});

main(cmd);
