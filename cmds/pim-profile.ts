/**
 * pim-profile: installation profiles (profiles.d/*.yml merged over `default`).
 *   list                       one line per profile: name, distro, iso, files
 *   show NAME [--json]         the merged profile, as YAML or JSON
 *   show NAME --explain        each value with the file:line it came from
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { writeOut } from '../lib/cli/output.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';

export const cmd = defineCmd({
  name: 'pim-profile',
  summary: 'List installation profiles, or show one merged over "default".',
  usage: 'list [--json] [-q] | show NAME [--json] [--explain]',
  description: `
Profiles live in ~/.config/pim/profiles.d/*.yml, each file a mapping of profile names to
settings, on top of pim's built-in "default". Every profile merges over "default":
mappings recurse, lists replace. --explain prints one line per value: the key path, the
value as JSON, and where it came from (FILE:LINE, or builtin:...).`,
  examples: ['pim-profile list', 'pim-profile show dev', 'pim-profile show dev --explain', 'pim-profile show dev --json | jq -r .hostname'],
  args: {
    ...jsonArgs,
    ...quietArgs,
    explain: { type: 'boolean', description: 'show where each value came from' },
  },
  positionals: { min: 1, max: 2 },
  async run({ args, positionals }) {
    const [sub, name] = positionals;
    const { loadCatalog, entryNames, resolveEntry } = await import('../lib/config/catalog.ts');
    const { loadProfile } = await import('../lib/config/profile.ts');
    const { printJson, printRecords } = await import('../lib/cli/output.ts');
    if (sub === 'list') {
      if (name !== undefined) throw new PimError(EXIT.USAGE, 'pim-profile list takes no NAME; use pim-profile show NAME');
      const cat = await loadCatalog('profiles');
      const recs = entryNames(cat).map((n) => {
        const r = resolveEntry(cat, n);
        return { name: n, distro: r.value.distro ?? null, iso: r.value.iso ?? null, files: r.files.join(',') };
      });
      printRecords(recs, ['distro', 'iso', 'files'], { json: args.json, quiet: args.quiet });
      return;
    }
    if (sub === 'show') {
      if (name === undefined) throw new PimError(EXIT.USAGE, 'missing profile NAME; usage: pim-profile show NAME');
      const p = await loadProfile(name);
      if (args.explain) {
        const { leafOrigins } = await import('../lib/config/merge.ts');
        const keys = Object.keys(leafOrigins(p.value, '')); // in the merged value's order
        const recs = keys.map((key) => ({ name: key, value: JSON.stringify(getPath(p.value, key)), from: p.origins[key] ?? '-' }));
        printRecords(recs, ['value', 'from'], { json: args.json });
      } else if (args.json) printJson(p.value);
      else {
        const { yamlLib } = await import('../lib/config/yaml.ts');
        writeOut((await yamlLib()).stringify(p.value));
      }
      return;
    }
    throw new PimError(EXIT.USAGE, `unknown subcommand "${sub}"; use list or show`);
  },
});

function getPath(v: unknown, dotted: string): unknown {
  if (dotted === '') return v;
  return dotted.split('.').reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), v);
}

main(cmd);
