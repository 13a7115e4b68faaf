/**
 * pim-ip: the guest's network addresses, from the guest agent.
 * One line per address: NAME IFACE ADDRESS/PREFIX FAMILY MAC. Loopback is
 * left out unless --all. Exit 69 when the agent does not answer in time.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION } from '../lib/cli/command.ts';
import { jsonArgs, timeoutArgs } from '../lib/cli/args.ts';
import { gaQuery } from '../lib/vm/connect.ts';
import { printRecords } from '../lib/cli/output.ts';

/** VM names from the runtime dir, loaded at TAB time only */
const vmNames = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeVmNames);

interface GaIface {
  name: string;
  'hardware-address'?: string;
  'ip-addresses'?: Array<{ 'ip-address': string; 'ip-address-type': 'ipv4' | 'ipv6'; prefix: number }>;
}

export function addressRecords(name: string, ifaces: GaIface[], all = false) {
  const out: Array<{
    name: string;
    iface: string;
    address: string;
    prefix: number;
    family: string;
    mac: string | null;
  }> = [];
  for (const i of ifaces) {
    if (!all && i.name === 'lo') continue;
    for (const a of i['ip-addresses'] ?? []) {
      if (!all && a['ip-address-type'] === 'ipv6' && a['ip-address'].startsWith('fe80')) continue;
      out.push({
        name,
        iface: i.name,
        address: a['ip-address'],
        prefix: a.prefix,
        family: a['ip-address-type'],
        mac: i['hardware-address'] ?? null,
      });
    }
  }
  return out;
}

export default defineCommand({
  meta: {
    name: 'pim-ip',
    version: VERSION,
    description: "Show a VM's IP addresses (from the guest agent).",
    details: `
One line per address: NAME IFACE ADDRESS/PREFIX FAMILY MAC (--json: the address and the
prefix apart). Under user networking (pim-run's default) the guest's address, 10.0.2.15,
is not reachable from the host: SSH goes through the forwarded port that pim-ps shows.
The address of a --bridged VM is on the bridge's network.`,
    examples: [
      'pim-ip dev',
      'pim-ip dev | awk \'$4=="ipv4" {print $3}\'',
      'pim-ip dev --json | jq -r \'select(.family=="ipv4").address\'',
    ],
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the VM', complete: vmNames },
    ...jsonArgs,
    all: { type: 'boolean', alias: 'a', description: 'include loopback and link-local addresses' },
    ...timeoutArgs(5, 'for the guest agent'),
  },
  async run({ args }) {
    const name = args.name;
    const ifaces = await gaQuery<GaIface[]>(name, 'guest-network-get-interfaces', args.timeout, 5);
    const recs = addressRecords(name, ifaces, args.all).map((r) => ({
      ...r,
      address: args.json ? r.address : `${r.address}/${r.prefix}`,
    }));
    printRecords(recs, ['iface', 'address', 'family', 'mac'], { json: args.json });
  },
});
