/**
 * pim-iso: the ISO catalog (isos.d/*.yml over pim's built-in entries) and
 * the downloaded ISOs in ~/.cache/pim/isos.
 *   list [--json] [-q]                 one line per entry: name, state, verified, size, url
 *   show NAME [--json]                 the merged entry, its path and state
 *   add NAME --url URL (--checksum C | --checksum-url URL | --insecure)
 *   download NAME... [--insecure]      resume into NAME.iso.part; rename after it verifies
 *   verify NAME...                     hash (cached by size and mtime) and compare
 *   path NAME                          print the ISO's path (exit 66 if not downloaded)
 *   rm NAME... [--entry]               delete the downloaded files (and the isos.d/NAME.yml entry)
 */
import { defineCmd, main } from '../lib/cli/command.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { jsonArgs, quietArgs } from '../lib/cli/args.ts';
import { writeOut, type Rec } from '../lib/cli/output.ts';

export const cmd = defineCmd({
  name: 'pim-iso',
  summary: 'Manage installation ISOs: catalog, download (resumable), verify.',
  usage: 'list | show NAME | add NAME --url URL (--checksum SUM | --checksum-url URL | --insecure) | download NAME... | verify NAME... | path NAME | rm NAME...',
  description: `
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
ISOs are kept private: the directory is 0700, its files 0600. verify caches its hash keyed by size and mtime, so a second verify
is instant. Output is one line per ISO (NAME, then fields, tab-separated) or --json.`,
  examples: [
    'pim-iso list',
    'pim-iso download debian-netinst-amd64',
    'pim-iso add mine --url https://example.org/mine.iso --checksum sha256:0123...',
    'qemu-system-x86_64 -cdrom "$(pim-iso path debian-netinst-amd64)" ...',
  ],
  args: {
    ...jsonArgs,
    ...quietArgs,
    url: { type: 'string', description: 'add: the ISO URL (http or https)', valueHint: 'URL' },
    checksum: { type: 'string', description: 'add: pinned checksum, sha256:HEX or sha512:HEX', valueHint: 'SUM' },
    checksumUrl: { type: 'string', description: 'add: URL of a SUMS file listing the ISO', valueHint: 'URL' },
    filename: { type: 'string', description: 'add: the name to look up in the SUMS file (default: from the URL)', valueHint: 'NAME' },
    insecure: { type: 'boolean', description: 'add/download: allow an entry without a checksum (marked unverified)' },
    entry: { type: 'boolean', description: 'rm: also remove the isos.d/NAME.yml entry written by add' },
  },
  positionals: { min: 1 },
  async run({ args, positionals }) {
    const [sub, ...names] = positionals;
    const store = await import('../lib/install/iso-store.ts');
    const { printJson, printRecords } = await import('../lib/cli/output.ts');
    names.forEach(store.checkIsoName);
    const one = () => {
      if (names.length !== 1) throw new PimError(EXIT.USAGE, `pim-iso ${sub} takes one NAME`);
      return names[0]!;
    };
    const some = () => {
      if (names.length === 0) throw new PimError(EXIT.USAGE, `pim-iso ${sub} needs at least one NAME; see pim-iso list`);
      return names;
    };
    switch (sub) {
      case 'list':
        if (names.length) throw new PimError(EXIT.USAGE, 'pim-iso list takes no NAME; use pim-iso show NAME');
        printRecords(await store.listIsos(), ['state', 'verified', 'size', 'url'], { json: args.json, quiet: args.quiet });
        return 0;
      case 'show': {
        const out = await store.showIso(one());
        if (args.json) printJson(out);
        else {
          const { yamlLib } = await import('../lib/config/yaml.ts');
          writeOut((await yamlLib()).stringify(out));
        }
        return 0;
      }
      case 'add': {
        const r = await store.addEntry(one(), { url: args.url, checksum: args.checksum, checksumUrl: args.checksumUrl, filename: args.filename, insecure: args.insecure });
        writeOut(`${r.name}\t${r.file}\n`);
        return 0;
      }
      case 'download':
        return download(store, some(), Boolean(args.insecure));
      case 'verify': {
        const { log } = await import('../lib/core/log.ts');
        let code = 0;
        const recs: Rec[] = [];
        for await (const r of store.verifyIsos(some())) {
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
      }
      case 'path':
        writeOut((await store.isoPath(one())) + '\n');
        return 0;
      case 'rm':
        for (const name of some()) {
          for (const r of await store.removeIso(name, { entry: args.entry })) writeOut(`${r.name}\t${r.path}\n`);
        }
        return 0;
      default:
        throw new PimError(EXIT.USAGE, `unknown subcommand "${sub}"; use list, show, add, download, verify, path or rm`);
    }
  },
});

type Store = typeof import('../lib/install/iso-store.ts');

/** Download NAMEs one after another: a line per ISO on stdout, progress and events on stderr. */
async function download(store: Store, names: string[], insecure: boolean): Promise<number> {
  const { log } = await import('../lib/core/log.ts');
  const { progressReporter } = await import('../lib/install/download.ts');
  const { trapSignals, Interrupted } = await import('../lib/core/signals.ts');
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
      const { isoFiles, statOrNull } = await import('../lib/install/iso.ts');
      const name = current || names[0]!;
      const part = isoFiles(name).part;
      log.warn(statOrNull(part) ? `${name}: interrupted; ${part} is kept, run pim-iso download ${name} again to resume` : `${name}: interrupted`);
      return e.status;
    }
    throw e;
  } finally {
    trap.dispose();
  }
}

main(cmd);
