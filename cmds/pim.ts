/**
 * pim: the umbrella. `pim <sub> args...` runs `pim-<sub> args...` the way git
 * runs git-<sub>: first from pim's own directory, then from PATH, so
 * third-party `pim-*` executables are found too. It becomes the command
 * (execve), so the command's exit status and signals are its own; where
 * Node has no execve it runs it as a child, forwards signals and passes the
 * status through (128+signal when it was killed).
 *
 * `pim --help` lists the commands with the one-line summaries that
 * build.mjs wrote to commands.json (beside pim.cjs) from each command's
 * `meta.description`; a third-party `pim-*` shows its path.
 */
import * as fs from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { realpathSync } from 'node:fs';
import { defineCommand } from 'citty';
import { helpColor, node, renderHelp, VERSION, type Words } from '../lib/cli/command.ts';
import { writeOut } from '../lib/cli/output.ts';
import { EXIT, PimError } from '../lib/core/exit.ts';
import { becomeOrRun } from '../lib/core/proc.ts';

/** The manifest build.mjs writes beside the executables: command name -> summary. */
export const MANIFEST = 'commands.json';

function ownDir(): string {
  try {
    return dirname(realpathSync(process.argv[1]!));
  } catch {
    return dirname(process.argv[1]!);
  }
}

function isExec(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

const isOwn = (exe: string) => {
  try {
    return dirname(realpathSync(exe)) === ownDir();
  } catch {
    return false;
  }
};

/** Where `pim-<sub>` lives: pim's own dir (with or without .cjs), then PATH. */
export function findSub(sub: string): string | null {
  const own = ownDir();
  for (const c of [join(own, `pim-${sub}.cjs`), join(own, `pim-${sub}`)]) if (isExec(c)) return c;
  for (const d of (process.env.PATH ?? '').split(delimiter)) {
    if (d && isExec(join(d, `pim-${sub}`))) return join(d, `pim-${sub}`);
  }
  return null;
}

/** Every `pim-*` command: pim's own, then those on PATH. */
export function listSubs(): Map<string, string> {
  const found = new Map<string, string>();
  const scan = (d: string, strip: boolean) => {
    let names: string[] = [];
    try {
      names = fs.readdirSync(d);
    } catch {
      return;
    }
    for (const f of names.sort()) {
      const m = /^pim-([a-z0-9][a-z0-9-]*)(\.cjs)?$/.exec(f);
      if (!m || (m[2] && !strip)) continue;
      if (!found.has(m[1]!) && isExec(join(d, f))) found.set(m[1]!, join(d, f));
    }
  };
  scan(ownDir(), true);
  for (const d of (process.env.PATH ?? '').split(delimiter)) if (d) scan(d, false);
  return found;
}

/** The summaries of pim's own commands (empty when the manifest is missing or broken). */
function manifest(): Record<string, string> {
  try {
    const m = JSON.parse(fs.readFileSync(join(ownDir(), MANIFEST), 'utf8')) as unknown;
    return m && typeof m === 'object' ? (m as Record<string, string>) : {};
  } catch {
    return {};
  }
}

/** name, summary: pim's own commands with their summaries, the others with their path. */
export function commandList(): Array<[string, string]> {
  const own = manifest();
  return [...listSubs()].map(([s, p]) => [s, isOwn(p) ? (own[`pim-${s}`] ?? '') : p]);
}

/**
 * `pim complete -- COMMAND WORDS...`: what `pim-COMMAND complete -- WORDS...`
 * answers. Asked only of pim's own commands: a third-party pim-* on PATH may
 * not know `complete` and would run for real; its words get file completion
 * (`:0`). `pim help <TAB>` completes a command name.
 */
async function completeAfter(words: string[]): Promise<string> {
  const [sub, ...rest] = words as [string, ...string[]];
  if (sub === 'help') {
    if (rest.length !== 1) return ':4\n';
    return (
      commandList()
        .filter(([s]) => s.startsWith(rest[0]!))
        .map(([s, d]) => (d ? `${s}\t${d}\n` : `${s}\n`))
        .join('') + ':4\n'
    );
  }
  const exe = /^[a-z0-9][a-z0-9-]*$/.test(sub) ? findSub(sub) : null;
  if (!exe || !isOwn(exe)) return ':0\n';
  const { spawnSync } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  const [cmd, args] = exe.endsWith('.cjs') ? [process.execPath, [exe]] : [exe, []];
  const r = spawnSync(cmd, [...args, 'complete', '--', ...rest], {
    stdio: ['ignore', 'pipe', 'ignore'],
    encoding: 'utf8',
  });
  return r.status === 0 ? r.stdout : ':4\n';
}

/** Become `exe` (Node 22.15+), else run it as a child; the status passes through. */
async function runSub(exe: string, argv: string[]): Promise<number> {
  // a bundled command runs on this Node; its signals, terminal and status are its own
  if (exe.endsWith('.cjs')) return becomeOrRun(process.execPath, [exe, ...argv], { what: exe });
  return becomeOrRun(exe, argv);
}

const pim = defineCommand({
  meta: {
    name: 'pim',
    version: VERSION,
    description: 'pim, the Product Image Manager: small executables to build and run QEMU VMs.',
    usage: '<command> [args...]',
    details:
      "`pim <command>` runs `pim-<command>` (from pim's directory, then PATH); `pim help <command>` shows its help.",
    examples: ['pim run dev', 'pim ps --json', 'pim help stop'],
    dispatch: { list: commandList, complete: completeAfter },
  },
  async run({ data }) {
    let [sub, ...argv] = (data as Words).rest as [string, ...string[]];
    if (sub === 'help') {
      if (!argv.length) {
        writeOut(await renderHelp(await node(pim), { color: helpColor() }));
        return EXIT.OK;
      }
      [sub, argv] = [argv[0]!, ['--help']];
    }
    if (!/^[a-z0-9][a-z0-9-]*$/.test(sub))
      throw new PimError(EXIT.USAGE, `${JSON.stringify(sub)} is not a command name; see pim --help`);
    const exe = findSub(sub);
    if (!exe)
      throw new PimError(EXIT.USAGE, `no command ${sub} (no pim-${sub} in pim's directory or on PATH); see pim --help`);
    return runSub(exe, argv);
  },
});
export default pim;
