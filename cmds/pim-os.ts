/**
 * pim-os: the guest OS, from the guest agent (guest-get-osinfo):
 * NAME PRETTY-NAME KERNEL-RELEASE MACHINE.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION } from '../lib/cli/command.ts';
import { jsonArgs, timeoutArgs } from '../lib/cli/args.ts';
import { gaQuery } from '../lib/vm/connect.ts';
import { printRecords } from '../lib/cli/output.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

export default defineCommand({
  meta: {
    name: 'pim-os',
    version: VERSION,
    description: "Show a VM's guest OS (from the guest agent).",
    examples: ['pim-os dev', 'pim-os dev --json | jq -r .kernel_release'],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    ...jsonArgs,
    ...timeoutArgs(5, 'for the guest agent'),
  },
  async run({ args }) {
    const name = args.name;
    const os = await gaQuery<Record<string, string | undefined>>(name, 'guest-get-osinfo', args.timeout, 5);
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
