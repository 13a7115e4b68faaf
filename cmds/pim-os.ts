/**
 * pim-os: the guest OS, from the guest agent (guest-get-osinfo):
 * NAME PRETTY-NAME KERNEL-RELEASE MACHINE.
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { jsonArgs, timeoutArgs } from '../lib/cli/args.ts';
import { completeVmNames } from '../lib/vm/complete.ts';

export const cmd = defineCmd({
  name: 'pim-os',
  summary: "Show a VM's guest OS (from the guest agent).",
  usage: 'NAME [--json] [--timeout S]',
  examples: ['pim-os dev', 'pim-os dev --json | jq -r .kernel_release'],
  args: { ...jsonArgs, ...timeoutArgs(5, 'for the guest agent') },
  positionals: { min: 1, max: 1 },
  completePositional: completeVmNames,
  async run({ args, positionals }) {
    const { withGa } = await import('../lib/vm/connect.ts');
    const { parseTimeout } = await import('../lib/cli/args.ts');
    const { printRecords } = await import('../lib/cli/output.ts');
    const name = positionals[0]!;
    const ms = parseTimeout(args.timeout, 5);
    const os = (await withGa(name, ms, (g) => g.execute('guest-get-osinfo', undefined, ms))) as Record<string, string | undefined>;
    const rec = {
      name,
      pretty_name: os['pretty-name'] ?? os.name ?? null,
      id: os.id ?? null,
      version_id: os['version-id'] ?? null,
      kernel_release: os['kernel-release'] ?? null,
      kernel_version: os['kernel-version'] ?? null,
      machine: os.machine ?? null,
    };
    printRecords([rec], ['pretty_name', 'kernel_release', 'machine'], { json: args.json });
  },
});

main(cmd);
