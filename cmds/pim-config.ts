/**
 * pim-config: pim's configuration tree. One citty subcommand each:
 *   init   write an editable starter tree (only missing files; never overwrites)
 *   show   print the merged config (pim.yml, every profile, every ISO) as YAML or --json
 *   path   print the directories: name, then path (or --json)
 * A broken config exits 78 with file:line and prints nothing on stdout.
 */
import { defineCommand } from 'citty';
import { VERSION } from '../lib/cli/command.ts';
import { writeOut, printJson, printRecords } from '../lib/cli/output.ts';
import { jsonArgs } from '../lib/cli/args.ts';
import { configDir } from '../lib/core/paths.ts';
import { loadRuntimeConfig } from '../lib/config/runtime.ts';
import { loadCatalog, entryNames, resolveEntry } from '../lib/config/catalog.ts';
import { printJsonOrYaml } from '../lib/config/show.ts';
import { configPaths } from '../lib/config/tree.ts';

const init = defineCommand({
  meta: {
    name: 'init',
    description: 'Write a starter config tree: only files that are missing; stdout lists those written.',
  },
  async run() {
    const { log } = await import('../lib/core/log.ts');
    const { initTree } = await import('../lib/config/init.ts');
    const { written, skipped } = await initTree();
    for (const s of skipped) log.info(`exists, left alone: ${s}`);
    for (const w of written) writeOut(w + '\n');
    if (!written.length) log.info(`nothing to write: every starter file already exists in ${configDir()}`);
  },
});

const show = defineCommand({
  meta: {
    name: 'show',
    description: 'Print the merged config: pim.yml, every profile and every ISO (YAML, or --json).',
  },
  args: { ...jsonArgs },
  async run({ args }) {
    const { checkProfileRefs } = await import('../lib/config/profile.ts');
    const rt = await loadRuntimeConfig();
    const out: Record<string, unknown> = { pim: rt.value, profiles: {}, isos: {} };
    for (const kind of ['profiles', 'isos'] as const) {
      const cat = await loadCatalog(kind);
      for (const n of entryNames(cat)) {
        const r = resolveEntry(cat, n);
        if (kind === 'profiles') checkProfileRefs(r);
        (out[kind] as Record<string, unknown>)[n] = r.value;
      }
    }
    await printJsonOrYaml(out, args.json);
  },
});

const path = defineCommand({
  meta: { name: 'path', description: 'Print the config directories: NAME<TAB>PATH (or --json).' },
  args: { ...jsonArgs },
  async run({ args }) {
    const paths = configPaths();
    if (args.json) printJson(paths);
    else
      printRecords(
        Object.entries(paths).map(([name, path]) => ({ name, path })),
        ['path'],
      );
  },
});

export default defineCommand({
  meta: {
    name: 'pim-config',
    version: VERSION,
    description: 'Show, locate or initialise pim configuration (~/.config/pim).',
    details: `
init writes pim.yml, isos.d/, profiles.d/, preseeds.d/, installs.d/ and scripts.d/ with the
built-in defaults as editable files. Files that already exist are left alone and listed as
"exists" on stderr; stdout gets the files that were written. The config already there is
checked first: a broken file exits 78 naming FILE:LINE, and nothing is written.
show prints the merged configuration: pim.yml over the built-in defaults, and every
profile and ISO entry merged over its "default". With --json, one JSON object.
path prints each directory as "NAME<TAB>PATH" (config, pim.yml, isos.d, ..., isos).`,
    examples: [
      'pim-config init',
      'pim-config show --json | jq .profiles.default',
      'cd "$(pim-config path | awk \'$1=="config"{print $2}\')"',
    ],
  },
  subCommands: { init, show, path },
});
