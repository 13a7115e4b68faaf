/**
 * pim-iso: the ISO catalog (isos.d/*.yml over pim's built-in entries) and
 * the downloaded ISOs in ~/.cache/pim/isos. One citty subcommand each:
 *   list [--json] [-q]                 one line per entry: name, state, verified, size, url
 *   show NAME [--json]                 the merged entry, its path and state
 *   add NAME --url URL (--checksum C | --checksum-url URL | --insecure)
 *   download NAME... [--insecure]      resume into NAME.iso.part; rename after it verifies
 *   verify NAME... [--json] [-q]       hash (cached by size and mtime) and compare
 *   path NAME                          print the ISO's path (exit 66 if not downloaded)
 *   rm NAME... [--entry]               delete the downloaded files (and the isos.d/NAME.yml entry)
 * The work is lib/install/iso-store.ts; this file parses, calls it, prints.
 */
import { defineCommand } from 'citty';
import { VERSION, type Words } from '../lib/cli/command.ts';
import { EXIT } from '../lib/core/exit.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { catalogCompleter } from '../lib/cli/catalog-names.ts';
import { writeOut, type Rec, printRecords } from '../lib/cli/output.ts';
import { printJsonOrYaml } from '../lib/config/show.ts';
import { progressReporter } from '../lib/install/download.ts';
import { trapSignals, Interrupted } from '../lib/core/signals.ts';
import { isoFiles, statOrNull } from '../lib/install/iso.ts';

/** The catalog, checked names first (every subcommand that takes a NAME). */
async function store(...names: string[]) {
  const s = await import('../lib/install/iso-store.ts');
  names.forEach(s.checkIsoName);
  return s;
}

const isoNames = catalogCompleter('isos', () => import('../lib/config/defaults.ts'));
const isoArg = {
  type: 'positional',
  required: true,
  valueHint: 'NAME',
  description: 'an ISO of the catalog (pim-iso list)',
  complete: isoNames,
} as const;
const isosArg = { ...isoArg, variadic: true, description: 'ISOs of the catalog (pim-iso list)' } as const;

const list = defineCommand({
  meta: { name: 'list', description: 'One line per catalog entry: name, state, verified, size, url.' },
  args: { ...jsonArgs, ...quietArgs },
  async run({ args }) {
    const s = await store();
    printRecords(await s.listIsos(), ['state', 'verified', 'size', 'url', 'kind'], {
      json: args.json,
      quiet: args.quiet,
    });
  },
});

const show = defineCommand({
  meta: { name: 'show', description: 'The merged entry, its path and its state (YAML, or --json).' },
  args: { name: isoArg, ...jsonArgs },
  async run({ args }) {
    const out = await (await store(args.name)).showIso(args.name);
    await printJsonOrYaml(out, args.json);
  },
});

const add = defineCommand({
  meta: {
    name: 'add',
    description: 'Add an entry to isos.d/NAME.yml: a URL and how to check it.',
    usage:
      'NAME --url URL|PATH (--checksum SUM | --checksum-url URL | --insecure) [--filename NAME] [--kind iso|image] [--copy]',
  },
  args: {
    name: { type: 'positional', required: true, valueHint: 'NAME', description: 'the new entry' },
    url: {
      type: 'string',
      description: 'the ISO URL (http or https), or a local file (file:///path, or a path)',
      valueHint: 'URL|PATH',
    },
    copy: { type: 'boolean', description: 'a local file: copy it into the cache (default: used in place)' },
    checksum: { type: 'string', description: 'pinned checksum, sha256:HEX or sha512:HEX', valueHint: 'SUM' },
    checksumUrl: { type: 'string', description: 'URL of a SUMS file listing the ISO', valueHint: 'URL' },
    filename: {
      type: 'string',
      description: 'the name to look up in the SUMS file (default: from the URL)',
      valueHint: 'NAME',
    },
    insecure: { type: 'boolean', description: 'allow an entry without a checksum (marked unverified)' },
    kind: {
      type: 'enum',
      options: ['iso', 'image'],
      description: "iso (an installer), or image (a cloud image for pim-build's builder: cloud-init)",
      default: 'iso',
    },
  },
  async run({ args }) {
    const r = await (await store(args.name)).addEntry(args.name, {
      url: args.url,
      checksum: args.checksum,
      checksumUrl: args.checksumUrl,
      filename: args.filename,
      insecure: args.insecure,
      kind: args.kind as 'iso' | 'image',
      copy: args.copy,
    });
    writeOut(`${r.name}\t${r.file}\n`);
  },
});

const download = defineCommand({
  meta: { name: 'download', description: 'Download ISOs (resumable), verify them, print NAME downloaded PATH.' },
  args: {
    names: isosArg,
    insecure: { type: 'boolean', description: 'allow an entry without a checksum (marked unverified)' },
  },
  async run({ args, data }) {
    const names = (data as Words).positionals;
    return runDownload(await store(...names), names, Boolean(args.insecure));
  },
});

const verify = defineCommand({
  meta: {
    name: 'verify',
    description: 'Hash downloaded ISOs (cached by size and mtime) and compare; 65 on a mismatch.',
  },
  args: { names: isosArg, ...jsonArgs, ...quietArgs },
  async run({ args, data }) {
    const names = (data as Words).positionals;
    const s = await store(...names);
    const { log } = await import('../lib/core/log.ts');
    let code = 0;
    const recs: Rec[] = [];
    for await (const r of s.verifyIsos(names)) {
      if (r.status === 'mismatch') {
        log.error(`${r.name}: checksum mismatch: expected ${r.expected}, got ${r.checksum}`);
        code = EXIT.DATAERR;
      }
      const rec = { name: r.name, status: r.status, checksum: r.checksum, how: r.how };
      if (args.json) recs.push(rec);
      else printRecords([rec], ['status', 'checksum', 'how'], { plain: true, quiet: args.quiet });
    }
    if (args.json) printRecords(recs, [], { json: true });
    return code;
  },
});

const path = defineCommand({
  meta: { name: 'path', description: "Print a downloaded ISO's path (66 when it is not downloaded)." },
  args: { name: isoArg },
  async run({ args }) {
    writeOut((await (await store(args.name)).isoPath(args.name)) + '\n');
  },
});

const rm = defineCommand({
  meta: { name: 'rm', description: 'Delete downloaded ISOs (and, with --entry, their isos.d/NAME.yml).' },
  args: {
    names: isosArg,
    entry: { type: 'boolean', description: 'also remove the isos.d/NAME.yml entry written by add' },
  },
  async run({ args, data }) {
    const names = (data as Words).positionals;
    const s = await store(...names);
    for (const name of names) {
      for (const r of await s.removeIso(name, { entry: args.entry })) writeOut(`${r.name}\t${r.path}\n`);
    }
  },
});

export default defineCommand({
  meta: {
    name: 'pim-iso',
    version: VERSION,
    description: 'Manage installation ISOs: catalog, download (resumable), verify.',
    details: `
The catalog is pim's built-in entries (current Debian and Ubuntu server ISOs) plus
~/.config/pim/isos.d/*.yml; each entry merges over an entry named "default" if there is one.
A checksum is pinned in the entry (checksum: sha256:HEX or sha512:HEX) or read from a
SUMS file (checksum_url:). An entry with neither is refused unless --insecure is given,
and is then marked "unverified".
download resumes over HTTP Range into NAME.iso.part and renames it to NAME.iso only after
it verifies; a mismatch deletes the part file and exits 65. Ctrl-C keeps the part file
for the next run. A cut connection, or one that sends nothing for PIM_DOWNLOAD_STALL
seconds (default 30), is resumed three times, then exits 69. A full disk exits 73 at
once and keeps the part file. A second download of an ISO that is downloading exits 75.
A local file (url: file:///path; pim-iso add takes a plain path too) is verified the same
way and then used in place (the cache holds a symlink to it; pim-iso rm removes only the
link), or copied into the cache with add --copy (copy: true).
ISOs are kept private: the directory is 0700, its files 0600. verify caches its hash keyed by size and mtime, so a second verify
is instant. Output is one line per ISO (NAME, then fields, tab-separated) or --json.`,
    examples: [
      'pim-iso list',
      'pim-iso download debian-netinst-amd64',
      'pim-iso add mine --url https://example.org/mine.iso --checksum-url https://example.org/SHA256SUMS',
      'pim-iso add local --url ~/Downloads/debian-12.iso --checksum sha256:HEX',
      'qemu-system-x86_64 -cdrom "$(pim-iso path debian-netinst-amd64)" ...',
    ],
  },
  subCommands: { list, show, add, download, verify, path, rm },
});

type Store = typeof import('../lib/install/iso-store.ts');

/** Download NAMEs one after another: a line per ISO on stdout, progress and events on stderr. */
async function runDownload(store: Store, names: string[], insecure: boolean): Promise<number> {
  const { log } = await import('../lib/core/log.ts');
  const trap = trapSignals();
  let current = '';
  let bar: ReturnType<typeof progressReporter> | null = null;
  const endBar = () => {
    bar?.end();
    bar = null;
  };
  try {
    const results = store.downloadIsos(names, {
      insecure,
      signal: trap.signal,
      onProgress: (p) => bar?.update(p),
      onEvent: (e) => {
        current = e.name;
        switch (e.type) {
          case 'start':
            log.info(`${e.name}: ${e.resumeAt ? `resuming at ${e.resumeAt} bytes` : 'downloading'} ${e.url}`);
            bar = progressReporter(`pim-iso: ${e.name}`);
            break;
          case 'retry':
            log.warn(`${e.name}: connection cut (${e.error.message}); resuming, attempt ${e.attempt + 1}`);
            break;
          case 'restart':
            log.warn(`${e.name}: ${e.why}; downloading from the start`);
            break;
          case 'verifying':
            endBar();
            log.info(`${e.name}: verifying ${e.algo}`);
            break;
          case 'unverified':
            endBar();
            log.warn(`${e.name}: no checksum: ${e.path} is unverified`);
            break;
          case 'cached':
            log.info(`${e.name}: already downloaded and verified: ${e.path}`);
            break;
        }
      },
    });
    for await (const r of results) {
      endBar();
      writeOut(`${r.name}\tdownloaded\t${r.path}\n`);
    }
    return 0;
  } catch (e) {
    endBar();
    if (e instanceof Interrupted) {
      const name = current || names[0]!;
      const part = isoFiles(name).part;
      log.warn(
        statOrNull(part)
          ? `${name}: interrupted; ${part} is kept, run pim-iso download ${name} again to resume`
          : `${name}: interrupted`,
      );
      return e.status;
    }
    throw e;
  } finally {
    trap.dispose();
  }
}
