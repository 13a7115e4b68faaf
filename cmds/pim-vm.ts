/**
 * pim-vm: VM definitions (vms.d/*.yml merged over `default`, lib/config/vms.ts).
 *   list [--json] [-q]         one line per definition: name, image, mem, cpus, net, files
 *   show NAME [--json]         the merged definition, as YAML or JSON
 *   show NAME --explain        each value with the FILE:LINE it came from
 * pim-run NAME boots a defined VM.
 */
import { defineCommand } from 'citty';
import { VERSION } from '../lib/cli/command.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { catalogCompleter } from '../lib/cli/catalog-names.ts';

const list = defineCommand({
  meta: { name: 'list', description: 'One line per VM definition: name, image, mem, cpus, net, the files that define it.' },
  args: { ...jsonArgs, ...quietArgs },
  async run({ args }) {
    const { entryNames } = await import('../lib/config/catalog.ts');
    const { loadVmCatalog, definition } = await import('../lib/config/vms.ts');
    const { printRecords } = await import('../lib/cli/output.ts');
    const cat = await loadVmCatalog();
    const recs = entryNames(cat).map((n) => {
      const d = definition(cat, n);
      return { name: n, image: d.image ?? null, mem: d.mem ?? null, cpus: d.cpus ?? null, net: d.net ?? null, files: d.resolved.files.join(',') };
    });
    printRecords(recs, ['image', 'mem', 'cpus', 'net', 'files'], { json: args.json, quiet: args.quiet });
  },
});

const show = defineCommand({
  meta: { name: 'show', description: 'A VM definition merged over "default" (YAML, --json, or --explain: where each value came from).' },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'a VM definition (pim-vm list)', complete: catalogCompleter('vms', () => import('../lib/config/defaults.ts')) },
    ...jsonArgs,
    explain: { type: 'boolean', description: 'one line per value: key, value, the FILE:LINE it came from' },
  },
  async run({ args }) {
    const { loadVmCatalog } = await import('../lib/config/vms.ts');
    const { resolveEntry } = await import('../lib/config/catalog.ts');
    const { showEntry } = await import('../lib/config/show.ts');
    // 64 for a bad name, 66 for none
    await showEntry(resolveEntry(await loadVmCatalog(), args.name), { json: args.json, explain: args.explain });
  },
});

export default defineCommand({
  meta: {
    name: 'pim-vm',
    version: VERSION,
    description: 'List VM definitions, or show one merged over "default"; pim-run NAME boots one.',
    details: `
VM definitions live in ~/.config/pim/vms.d/*.yml, each file a mapping of VM names to
settings, merged over "default" (mappings recurse, lists replace): image (a store image's
name, a path relative to the file, or build:PROFILE), mem, cpus, net (user or bridged),
bridge, ssh_port, ports (forwards, as pim-run --forward), firmware (bios or uefi),
snapshot, accel, qemu_args and vars. qemu_args may use \${vars.X} (the entry's vars, then
pim.yml's), \${vm.name}, \${vm.mem}, \${vm.cpus}, \${vm.ssh_port}, \${image.NAME} (a store
image's path) and \${runtime}; $$ is a literal $. An undefined variable is exit 78 at the
FILE:LINE of its string. pim-run NAME boots a defined VM; its flags override the
definition, and words after -- come after qemu_args. --explain prints one line per value:
the key path, the value as JSON, and where it came from.`,
    examples: ['pim-vm list', 'pim-vm show web', 'pim-vm show web --explain', 'pim-vm show web --json | jq -r .image'],
  },
  subCommands: { list, show },
});
