/**
 * pim-config: pim's configuration tree. One citty subcommand each:
 *   init   write an editable starter tree (only missing files; never overwrites)
 *   show   print the merged config (pim.yml, every profile, every ISO) as YAML or --json
 *   path   print the directories: name, then path (or --json)
 * A broken config exits 78 with file:line and prints nothing on stdout.
 */
import { defineCommand } from 'citty';
import { VERSION } from '../lib/cli/command.ts';
import { writeOut } from '../lib/cli/output.ts';
import { jsonArgs } from '../lib/cli/args.ts';

const init = defineCommand({
  meta: {
    name: 'init',
    description: 'Write a starter config tree: only files that are missing; stdout lists those written.',
  },
  async run() {
    const { log } = await import('../lib/core/log.ts');
    const { initTree } = await import('../lib/config/init.ts');
    const { configDir } = await import('../lib/core/paths.ts');
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
    const { loadRuntimeConfig } = await import('../lib/config/runtime.ts');
    const { loadCatalog, entryNames, resolveEntry } = await import('../lib/config/catalog.ts');
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
    const { printJsonOrYaml } = await import('../lib/config/show.ts');
    await printJsonOrYaml(out, args.json);
  },
});

const path = defineCommand({
  meta: { name: 'path', description: 'Print the config directories: NAME<TAB>PATH (or --json).' },
  args: { ...jsonArgs },
  async run({ args }) {
    const { printJson, printRecords } = await import('../lib/cli/output.ts');
    const { configPaths } = await import('../lib/config/tree.ts');
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
