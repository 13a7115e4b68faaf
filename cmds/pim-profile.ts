/**
 * pim-profile: installation profiles (profiles.d/*.yml merged over `default`).
 *   list [--json] [-q]         one line per profile: name, distro, iso, files
 *   show NAME [--json]         the merged profile, as YAML or JSON
 *   show NAME --explain        each value with the file:line it came from
 */
import { defineCommand } from 'citty';
import { VERSION } from '../lib/cli/command.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { catalogCompleter } from '../lib/cli/catalog-names.ts';
import { loadCatalog, entryNames, resolveEntry } from '../lib/config/catalog.ts';
import { printRecords } from '../lib/cli/output.ts';
import { showEntry } from '../lib/config/show.ts';

const list = defineCommand({
  meta: { name: 'list', description: 'One line per profile: name, distro, iso, the files that define it.' },
  args: { ...jsonArgs, ...quietArgs },
  async run({ args }) {
    const cat = await loadCatalog('profiles');
    const recs = entryNames(cat).map((n) => {
      const r = resolveEntry(cat, n);
      return { name: n, distro: r.value.distro ?? null, iso: r.value.iso ?? null, files: r.files.join(',') };
    });
    printRecords(recs, ['distro', 'iso', 'files'], { json: args.json, quiet: args.quiet });
  },
});

const show = defineCommand({
  meta: {
    name: 'show',
    description: 'A profile merged over "default" (YAML, --json, or --explain: where each value came from).',
  },
  args: {
    name: {
      type: 'positional',
      required: true,
      valueHint: 'NAME',
      description: 'a profile (pim-profile list)',
      complete: catalogCompleter('profiles', () => import('../lib/config/defaults.ts')),
    },
    ...jsonArgs,
    explain: { type: 'boolean', description: 'one line per value: key, value, the FILE:LINE it came from' },
  },
  async run({ args }) {
    const { loadProfile } = await import('../lib/config/profile.ts');
    await showEntry(await loadProfile(args.name), { json: args.json, explain: args.explain });
  },
});

export default defineCommand({
  meta: {
    name: 'pim-profile',
    version: VERSION,
    description: 'List installation profiles, or show one merged over "default".',
    details: `
Profiles live in ~/.config/pim/profiles.d/*.yml, each file a mapping of profile names to
settings, on top of pim's built-in "default". Every profile merges over "default":
mappings recurse, lists replace. --explain prints one line per value: the key path, the
value as JSON, and where it came from (FILE:LINE, or builtin:...).`,
    examples: [
      'pim-profile list',
      'pim-profile show dev',
      'pim-profile show dev --explain',
      'pim-profile show dev --json | jq -r .hostname',
    ],
  },
  subCommands: { list, show },
});
