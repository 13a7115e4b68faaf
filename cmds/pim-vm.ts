/**
 * pim-vm: VM definitions (vms.d/*.yml merged over `default`, lib/config/vms.ts).
 *   list [--json] [-q]         one line per definition: name, image, mem, cpus, net, files
 *   show NAME [--json]         the merged definition, as YAML or JSON
 *   show NAME --explain        each value with the FILE:LINE it came from
 *   clone SRC NEW              a copy of a stopped VM's disk, or an overlay of a build, as a new store image
 *   resize NAME SIZE           qemu-img resize of a stopped VM's disk in the store
 * pim-run NAME boots a defined VM.
 */
import { defineCommand } from 'citty';
import { lazyCompleter, VERSION } from '../lib/cli/command.ts';
import { writeOut, printRecords } from '../lib/cli/output.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { catalogCompleter } from '../lib/cli/catalog-names.ts';
import { entryNames, resolveEntry } from '../lib/config/catalog.ts';
import { loadVmCatalog, definition } from '../lib/config/vms.ts';
import { showEntry } from '../lib/config/show.ts';

const list = defineCommand({
  meta: {
    name: 'list',
    description: 'One line per VM definition: name, image, mem, cpus, net, the files that define it.',
  },
  args: { ...jsonArgs, ...quietArgs },
  async run({ args }) {
    const cat = await loadVmCatalog();
    const recs = entryNames(cat).map((n) => {
      const d = definition(cat, n);
      return {
        name: n,
        image: d.image ?? null,
        mem: d.mem ?? null,
        cpus: d.cpus ?? null,
        net: d.net ?? null,
        files: d.resolved.files.join(','),
      };
    });
    printRecords(recs, ['image', 'mem', 'cpus', 'net', 'files'], { json: args.json, quiet: args.quiet });
  },
});

const show = defineCommand({
  meta: {
    name: 'show',
    description: 'A VM definition merged over "default" (YAML, --json, or --explain: where each value came from).',
  },
  args: {
    name: {
      type: 'positional',
      required: true,
      valueHint: 'NAME',
      description: 'a VM definition (pim-vm list)',
      complete: catalogCompleter('vms', () => import('../lib/config/defaults.ts')),
    },
    ...jsonArgs,
    explain: { type: 'boolean', description: 'one line per value: key, value, the FILE:LINE it came from' },
  },
  async run({ args }) {
    // 64 for a bad name, 66 for none
    await showEntry(resolveEntry(await loadVmCatalog(), args.name), { json: args.json, explain: args.explain });
  },
});

const images = lazyCompleter(async () => (await import('../lib/vm/complete.ts')).completeImages);

const clone = defineCommand({
  meta: {
    name: 'clone',
    description:
      "A new store image NEW from SRC: a copy of a stopped VM's disk, or an overlay of a build; prints its path.",
    details: `
SRC is an image in the store (its name), the path of one, or a build (its id, or a profile
name: its newest build). A disk is copied (reflinked where the filesystem can), with its UEFI
vars; a build gets a qcow2 overlay, so the build stays as it is. The new image boots with
pim-run NEW. A disk that a running VM holds is refused (exit 75: stop that VM, or boot a
throwaway copy with pim-run SRC --clone); an existing NEW is exit 73.`,
  },
  args: {
    src: {
      type: 'positional',
      required: true,
      valueHint: 'SRC',
      description: 'an image in the store, a path, or a build (id or profile)',
      complete: images,
      path: 'file',
    },
    new: { type: 'positional', required: true, valueHint: 'NEW', description: "the new image's name" },
  },
  async run({ args }) {
    const { cloneImage } = await import('../lib/vm/clone.ts');
    writeOut((await cloneImage(args.src, args.new)) + '\n');
  },
});

const resize = defineCommand({
  meta: {
    name: 'resize',
    description: "Resize a stopped VM's disk in the store (qemu-img resize); prints the path and the new size.",
    details: `
SIZE is the new size (20G) or a growth (+5G). The guest's partitions and filesystems are
not grown: do that in the guest (growpart, resize2fs; cloud-init's growpart does it at boot).
A running VM's disk is refused (exit 75: stop it first); so is a stored build (exit 65:
builds are never changed; pim-vm clone it to a new name and resize that); a shrink that
qemu-img refuses is exit 65.`,
  },
  args: {
    name: {
      type: 'positional',
      required: true,
      valueHint: 'NAME',
      description: 'an image in the store, or the path of one',
      complete: images,
      path: 'file',
    },
    size: {
      type: 'positional',
      required: true,
      valueHint: 'SIZE',
      description: 'the new size (20G) or a growth (+5G)',
    },
  },
  async run({ args }) {
    const { resizeImage } = await import('../lib/vm/clone.ts');
    const r = await resizeImage(args.name, args.size);
    writeOut(`${r.path}\t${r.bytes}\n`);
  },
});

export default defineCommand({
  meta: {
    name: 'pim-vm',
    version: VERSION,
    description:
      'List VM definitions, or show one merged over "default"; clone or resize a stopped VM\'s disk; pim-run NAME boots one.',
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
    examples: [
      'pim-vm list',
      'pim-vm show web',
      'pim-vm show web --explain',
      'pim-vm show web --json | jq -r .image',
      'pim-stop dev && pim-vm clone dev dev2',
      'pim-vm resize dev2 +1G',
    ],
  },
  subCommands: { list, show, clone, resize },
});
