/**
 * The frame every executable runs in. A command is a citty definition
 * (`defineCommand({ meta, args, subCommands, run })`); `main(cmd)` runs it:
 *
 * - argv is split on the first `--` before citty sees it (citty would take
 *   `--help` after `--` as a help request and mix the words after it into
 *   `args._`); the words after it reach `run` untouched, as `data.rest`, for
 *   commands whose meta declares `passthrough`, and are a usage error otherwise;
 * - the words are walked down citty's `subCommands` to the leaf, and checked
 *   against the leaf's args: an unknown flag (citty ignores them), a flag
 *   without its value, a bad enum value, too few or too many positionals are
 *   exit 64 in one line;
 * - a string flag declared `repeatable: true` keeps every value
 *   (`data.repeated.NAME`; citty keeps only the last in `args.NAME`);
 * - `--help` prints usage to stdout (renderHelp, below), `--version` prints
 *   `NAME VERSION`;
 * - the leaf runs through citty's `runCommand` (its parseArgs fills `args`);
 *   what `run` returns is the exit status; an error becomes one line on
 *   stderr with a code from the exit table, and a closed stdout (EPIPE) ends
 *   the process quietly;
 * - `CMD complete zsh|bash|fish` and `CMD complete -- WORDS` are answered by
 *   ./complete.ts (loaded only then) and never run the command.
 *
 * What citty has no field for lives beside its own fields, once per command:
 * `meta.usage/details/examples/passthrough/dispatch` (declared below) and, on
 * an arg, `repeatable`, `variadic`, `complete` and `path` (ArgExtras).
 */
import { runCommand } from 'citty';
import pkg from '../../package.json' with { type: 'json' };
import { EXIT, PimError } from '../core/exit.ts';
import { prog } from '../core/prog.ts';
import { stdoutIsTTY, stdoutStreamUsed, writeOut } from './output.ts';

/** pim's version (package.json), every command's `meta.version`. */
export const VERSION: string = pkg.version;

export * from './tree.ts';
import {
  findSub,
  flagTable,
  isFlag,
  kebab,
  node,
  optionDefs,
  positionalDefs,
  subcommandRows,
  takesValue,
  type AnyCommand,
  type Node,
  type PimArg,
  type Words,
} from './tree.ts';

const usageError = (msg: string) => new PimError(EXIT.USAGE, msg);

export type Parsed =
  | { kind: 'run'; node: Node; head: string[]; words: Words }
  | { kind: 'help'; node: Node }
  | { kind: 'version'; node: Node };

const isHelp = (w: string) => w === '-h' || w === '--help';

/**
 * Check one command's words (before `--`) against its args: throws a usage
 * error, or returns the positionals and repeated values. Stops at the first
 * positional when `stopAt` (a command with subcommands, a dispatcher).
 */
function scan(
  n: Node,
  words: string[],
  stopAt: boolean,
): { positionals: string[]; repeated: Record<string, string[]>; stop: number } {
  const table = flagTable(n.args);
  const positionals: string[] = [];
  const repeated: Record<string, string[]> = {};
  const see = `see ${n.name} --help`;
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    if (!isFlag(w)) {
      if (stopAt) return { positionals, repeated, stop: i };
      positionals.push(w);
      continue;
    }
    const long = w.startsWith('--');
    const body = w.slice(long ? 2 : 1);
    const eq = body.indexOf('=');
    const flagName = eq >= 0 ? body.slice(0, eq) : body;
    if (!long && flagName.length > 1 && !table.has(flagName)) {
      // bundled short flags like -qa: each must be a known boolean
      for (const c of flagName) {
        const f = table.get(c);
        if (!f || f.value) throw usageError(`unknown option -${c}; ${see}`);
      }
      continue;
    }
    const f = table.get(flagName);
    if (!f) throw usageError(`unknown option ${long ? '--' : '-'}${flagName}; ${see}`);
    if (!f.value) continue;
    let value: string;
    if (eq >= 0) value = body.slice(eq + 1);
    else if (i + 1 < words.length) value = words[++i]!;
    else throw usageError(`option ${w} needs a value; ${see}`);
    if (f.def.type === 'enum' && !(f.def.options ?? []).includes(value)) {
      throw usageError(
        `--${kebab(f.key)} must be one of ${(f.def.options ?? []).join(', ')}, not ${JSON.stringify(value)}`,
      );
    }
    if (f.def.repeatable) (repeated[f.key] ??= []).push(value);
  }
  return { positionals, repeated, stop: words.length };
}

/** Which subcommands a command has, for messages: "list, show or rm". */
const subList = (n: Node) => {
  const names = Object.keys(n.subs ?? {});
  return names.length > 1 ? `${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}` : (names[0] ?? '');
};

/** Walk argv down the subcommands to the leaf and check its words. Throws usage errors (64). */
export async function parseArgv(root: AnyCommand, argv: string[]): Promise<Parsed> {
  let n = await node(root);
  if (n.meta.dispatch) {
    // the dispatcher's own flags come before the command's name; `--` ends them
    let i = 0;
    while (i < argv.length && argv[i] !== '--' && isFlag(argv[i]!)) i++;
    const own = argv.slice(0, i);
    if (own.some(isHelp)) return { kind: 'help', node: n };
    if (own.includes('--version')) return { kind: 'version', node: n };
    scan(n, own, false);
    const words = argv.slice(argv[i] === '--' ? i + 1 : i);
    if (!words.length) return { kind: 'help', node: n };
    return { kind: 'run', node: n, head: own, words: { positionals: [words[0]!], rest: words, repeated: {} } };
  }
  const dd = argv.indexOf('--');
  let head = dd >= 0 ? argv.slice(0, dd) : argv;
  const rest = dd >= 0 ? argv.slice(dd + 1) : [];
  while (n.subs) {
    // the flags before the subcommand's name are this command's own
    const first = head.findIndex((w) => !isFlag(w));
    const own = first >= 0 ? head.slice(0, first) : head;
    if (own.some(isHelp)) return { kind: 'help', node: n };
    if (own.includes('--version')) return { kind: 'version', node: n };
    const { stop } = scan(n, head, true);
    if (stop >= head.length) throw usageError(`a subcommand is needed: ${subList(n)}; see ${n.name} --help`);
    const word = head[stop]!;
    const sub = await findSub(n, word);
    if (!sub) {
      if (head.slice(stop).some(isHelp)) return { kind: 'help', node: n };
      throw usageError(`unknown subcommand ${JSON.stringify(word)}; use ${subList(n)} (see ${n.name} --help)`);
    }
    n = sub;
    head = head.slice(stop + 1);
  }
  // the leaf: --help wins over every other complaint
  if (head.some(isHelp)) return { kind: 'help', node: n };
  if (head.includes('--version') && !flagTable(n.args).has('version')) return { kind: 'version', node: n };
  if (dd >= 0 && !n.meta.passthrough) throw usageError(`${n.name} takes no words after "--"; see ${n.name} --help`);
  const { positionals, repeated } = scan(n, head, false);
  const { min, max } = positionalDefs(n.args);
  if (positionals.length < min) throw usageError(`missing argument; usage: ${n.name} ${usageLine(n)}`);
  if (positionals.length > max)
    throw usageError(`too many arguments (${positionals.slice(max).join(' ')}); usage: ${n.name} ${usageLine(n)}`);
  return { kind: 'run', node: n, head, words: { positionals, rest, repeated } };
}

// --- help --------------------------------------------------------------------
//
// pim renders --help itself, from the same citty definition (meta, args,
// subCommands), instead of post-processing citty's renderUsage: that one
// decides on colour once at import time from NO_COLOR=1/CI/TEST only (so a
// pipe gets ANSI codes), prints camelCase flag names (`--sshPort=<ssh_port>`),
// and has no place for examples, details or exit codes. Rewriting its output
// with regexes would be the fragile patching the tab scripts need, again.

export const EXIT_LINE =
  'Exit codes: 0 ok, 64 usage, 65 bad data, 66 missing input, 69 unavailable, 70 internal, 73 cannot create, 75 busy/timed out, 77 permission, 78 bad config.';

/** No colour when stdout is not a terminal, NO_COLOR is set, or TERM=dumb. */
export function helpColor(): boolean {
  if (process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== '') return false;
  if (process.env.TERM === 'dumb') return false;
  return stdoutIsTTY();
}

const posName = (key: string, d: PimArg) => d.valueHint ?? key.toUpperCase();

/** `NAME [options]`, `COMMAND [options]`, `NAME... [options] [-- qemu args]`, made from the args. */
export function usageLine(n: Node): string {
  if (n.meta.usage) return n.meta.usage;
  const parts: string[] = [];
  if (n.subs) parts.push('COMMAND [options]');
  for (const [k, d] of positionalDefs(n.args).defs) {
    const w = posName(k, d) + (d.variadic ? '...' : '');
    parts.push(d.required !== false && d.default === undefined ? w : `[${w}]`);
  }
  if (!n.subs && Object.values(n.args).some((d) => d.type !== 'positional')) parts.push('[options]');
  if (n.meta.passthrough) parts.push(`[-- ${n.meta.passthrough}]`);
  return parts.join(' ');
}

function table(rows: Array<[string, string]>): string[] {
  const w = Math.max(...rows.map(([a]) => a.length));
  return rows.map(([a, b]) => (b ? `  ${a.padEnd(w)}  ${b}` : `  ${a}`).trimEnd());
}

/** A command's positional arguments that have a description: the word shown, the text. */
export function argumentRows(n: Node): Array<[string, string]> {
  return positionalDefs(n.args)
    .defs.filter(([, d]) => d.description)
    .map(([k, d]) => [posName(k, d) + (d.variadic ? '...' : ''), d.description ?? '']);
}

/** A command's options as --help and the man page show them: the flags, the value's name, the text. */
export function optionRows(n: Node): Array<{ flags: string[]; value: string | null; text: string }> {
  const rows: Array<{ flags: string[]; value: string | null; text: string }> = [];
  for (const { def: d, long, short } of optionDefs(n.args)) {
    const value = takesValue(d) ? (d.valueHint ?? (d.type === 'enum' ? (d.options ?? []).join('|') : 'VALUE')) : null;
    const notes = [
      d.repeatable ? 'repeatable' : '',
      d.default !== undefined && d.type !== 'boolean' ? `default: ${d.default}` : '',
    ].filter(Boolean);
    rows.push({
      flags: [...short, long],
      value,
      text: (d.description ?? '') + (notes.length ? ` (${notes.join('; ')})` : ''),
    });
  }
  rows.push({ flags: ['-h', '--help'], value: null, text: 'show this help' });
  if (!n.name.includes(' ')) rows.push({ flags: ['--version'], value: null, text: 'print the version' });
  return rows;
}

/** A command's subcommands (or, for the umbrella, the commands it runs): name, summary. */
export async function commandRows(n: Node): Promise<Array<[string, string]>> {
  const cmds = await subcommandRows(n);
  if (n.meta.dispatch) cmds.push(...n.meta.dispatch.list());
  return cmds;
}

export async function renderHelp(n: Node, opts: { color?: boolean } = {}): Promise<string> {
  const h = (s: string) => (opts.color ? `\x1b[1m${s}\x1b[22m` : s);
  const lines = [`${h('Usage:')} ${n.name} ${usageLine(n)}`.trimEnd(), ''];
  if (n.meta.description) lines.push(n.meta.description);
  if (n.meta.details) lines.push('', n.meta.details.trim());
  const pos = argumentRows(n);
  if (pos.length) lines.push('', h('Arguments:'), ...table(pos));
  const opt = optionRows(n).map((r): [string, string] => [r.flags.join(', ') + (r.value ? ` ${r.value}` : ''), r.text]);
  lines.push('', h('Options:'), ...table(opt));
  const cmds = await commandRows(n);
  if (cmds.length)
    lines.push('', h('Commands:'), ...table(cmds), '', `"${n.name} COMMAND --help" shows a command's options.`);
  if (n.meta.examples?.length) lines.push('', h('Examples:'), ...n.meta.examples.map((e) => `  ${e}`));
  lines.push('', EXIT_LINE);
  return lines.join('\n') + '\n';
}

// --- running -----------------------------------------------------------------

/** Exit once stdout has drained (pipes are asynchronous on some platforms). */
export function exitAfterFlush(code: number): void {
  process.exitCode = code;
  if (!stdoutStreamUsed() || process.stdout.writableLength === 0) process.exit(code);
  process.stdout.write('', () => process.exit(code));
}

const stripAnsi = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, '');

/** A PimError, also one thrown by dist/complete.cjs (its own copy of the class). */
const isPimError = (e: unknown): e is PimError =>
  e instanceof PimError || (e instanceof Error && e.name === 'PimError' && typeof (e as PimError).code === 'number');

export function reportError(e: unknown): number {
  if (isPimError(e)) {
    process.stderr.write(`${prog()}: ${e.message}\n`);
    return e.code;
  }
  if (e instanceof Error && e.name === 'Interrupted') {
    // lib/core/signals.ts: the work was undone; exit as the shell expects (SIGINT: 130)
    const st = (e as Error & { status: number }).status;
    process.stderr.write(`${prog()}: ${e.message}; stopped what was started\n`);
    return st;
  }
  if (e instanceof Error && e.name === 'CLIError') {
    // citty's own complaints (its parseArgs, its subcommand lookup): usage errors, without its colours
    process.stderr.write(`${prog()}: ${stripAnsi(e.message).replace(/\s+/g, ' ').trim()}; see ${prog()} --help\n`);
    return EXIT.USAGE;
  }
  const err = e as Error;
  process.stderr.write(`${prog()}: internal error: ${err?.stack ?? String(e)}\n`);
  return EXIT.SOFTWARE;
}

const SHELLS = ['zsh', 'bash', 'fish', 'powershell'];

/** Parse argv and run the leaf with citty's runCommand; returns the exit status. */
export async function runArgv(cmd: AnyCommand, argv: string[]): Promise<number> {
  const p = await parseArgv(cmd, argv);
  if (p.kind === 'help') {
    writeOut(await renderHelp(p.node, { color: helpColor() }));
    return EXIT.OK;
  }
  if (p.kind === 'version') {
    writeOut(`${p.node.name.split(' ')[0]} ${p.node.meta.version ?? VERSION}\n`);
    return EXIT.OK;
  }
  const { result } = await runCommand(p.node.cmd, { rawArgs: p.head, data: p.words });
  return typeof result === 'number' ? result : EXIT.OK;
}

/** Run an executable: build.mjs's entry for every cmds/*.ts calls this with its default export. */
export function main(cmd: AnyCommand, argv = process.argv.slice(2)): void {
  const done = (p: Promise<number | void>) =>
    p.then(
      (code) => exitAfterFlush(typeof code === 'number' ? code : 0),
      (e) => exitAfterFlush(reportError(e)),
    );
  if (argv[0] === 'complete' && (argv[1] === '--' || SHELLS.includes(argv[1] ?? ''))) {
    done(import('./complete.ts').then((m) => m.completion(cmd, argv.slice(1))));
    return;
  }
  done(runArgv(cmd, argv));
}
