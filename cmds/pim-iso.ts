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

type Iso = typeof import('../lib/install/iso.ts');

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
for the next run. verify caches its hash keyed by size and mtime, so a second verify
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
    const iso = await import('../lib/install/iso.ts');
    const m = await import('../lib/install/iso-ops.ts');
    names.forEach(m.checkIsoName);
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
        return m.list(iso, args);
      case 'show':
        return m.show(iso, one(), args);
      case 'add':
        return m.add(iso, one(), args);
      case 'download':
        return m.download(iso, some(), args);
      case 'verify':
        return m.verify(iso, some(), args);
      case 'path':
        return m.path(iso, one());
      case 'rm':
        return m.rm(iso, some(), args);
      default:
        throw new PimError(EXIT.USAGE, `unknown subcommand "${sub}"; use list, show, add, download, verify, path or rm`);
    }
  },
});

export type { Iso };
main(cmd);
