/**
 * The frame every executable runs in: argv is split on `--` before citty
 * parses it (words after `--` pass through untouched), unknown flags are a
 * usage error, `--help` prints usage to stdout, errors become one line on
 * stderr with a code from the exit table, EPIPE exits quietly, and
 * `CMD complete <shell>|-- ...` is answered by @bomb.sh/tab without running
 * the command.
 */
import { parseArgs, type ArgsDef, type ParsedArgs } from 'citty';
import { EXIT, PimError } from '../core/exit.ts';
import { prog } from '../core/prog.ts';
import { stdoutStreamUsed, writeOut } from './output.ts';

export interface Ctx<A extends ArgsDef> {
  args: ParsedArgs<A>;
  /** positional words (before `--`) */
  positionals: string[];
  /** words after `--`, untouched */
  rest: string[];
}

export type Completer = (complete: (value: string, description: string) => void) => void | Promise<void>;

export interface CmdSpec<A extends ArgsDef> {
  name: string;
  /** one-line summary */
  summary: string;
  /** `NAME [options]` part of the usage line */
  usage: string;
  /** longer description paragraphs */
  description?: string;
  examples?: string[];
  args: A;
  /** minimum / maximum number of positional words */
  positionals?: { min?: number; max?: number };
  /** accepts `-- words` */
  passthrough?: boolean;
  /** completion of positional words, e.g. VM names */
  completePositional?: Completer;
  /** completion of option values */
  completeOptions?: Record<string, Completer>;
  run(ctx: Ctx<A>): Promise<number | void> | number | void;
}

export function defineCmd<const A extends ArgsDef>(spec: CmdSpec<A>): CmdSpec<A> {
  return spec;
}

export function renderHelp(spec: CmdSpec<ArgsDef>): string {
  const lines = [`Usage: ${spec.name} ${spec.usage}`, '', spec.summary];
  if (spec.description) lines.push('', spec.description.trim());
  const opts: Array<[string, string]> = [];
  for (const [k, def] of Object.entries(spec.args)) {
    if (def.type === 'positional') continue;
    const aliases = 'alias' in def && def.alias ? (Array.isArray(def.alias) ? def.alias : [def.alias]) : [];
    let flag = [...aliases.map((a) => `-${a}`), `--${kebab(k)}`].join(', ');
    if (def.type === 'string' || def.type === 'enum') flag += ` ${def.valueHint ?? (def.type === 'enum' ? (def.options ?? []).join('|') : 'VALUE')}`;
    const dflt = def.default !== undefined && def.type !== 'boolean' ? ` (default: ${def.default})` : '';
    opts.push([flag, (def.description ?? '') + dflt]);
  }
  opts.push(['-h, --help', 'show this help']);
  const w = Math.max(...opts.map(([f]) => f.length));
  lines.push('', 'Options:', ...opts.map(([f, d]) => `  ${f.padEnd(w)}  ${d}`));
  if (spec.examples?.length) lines.push('', 'Examples:', ...spec.examples.map((e) => `  ${e}`));
  lines.push('', 'Exit codes: 0 ok, 64 usage, 65 bad data, 66 missing input, 69 unavailable, 70 internal, 73 cannot create, 75 busy/timed out, 77 permission, 78 bad config.');
  return lines.join('\n') + '\n';
}

const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());

/** Known flag spellings for a spec: name -> takes a value? */
function flagTable(args: ArgsDef): Map<string, { value: boolean; key: string }> {
  const m = new Map<string, { value: boolean; key: string }>();
  for (const [k, def] of Object.entries(args)) {
    if (def.type === 'positional') continue;
    const value = def.type === 'string' || def.type === 'enum';
    m.set(k, { value, key: k });
    m.set(kebab(k), { value, key: k });
    if (!value) m.set(`no-${kebab(k)}`, { value: false, key: k });
    const aliases = 'alias' in def && def.alias ? (Array.isArray(def.alias) ? def.alias : [def.alias]) : [];
    for (const a of aliases) m.set(a, { value, key: k });
  }
  return m;
}

/** Split argv at the first `--`, check flags, and parse. Throws usage errors. */
export function parseArgv<A extends ArgsDef>(spec: CmdSpec<A>, argv: string[]): Ctx<A> | 'help' {
  const dd = argv.indexOf('--');
  const head = dd >= 0 ? argv.slice(0, dd) : argv;
  const rest = dd >= 0 ? argv.slice(dd + 1) : [];
  if (dd >= 0 && !spec.passthrough) throw new PimError(EXIT.USAGE, `${spec.name} takes no words after "--"; see ${spec.name} --help`);
  const table = flagTable(spec.args);
  const positionals: string[] = [];
  for (let i = 0; i < head.length; i++) {
    const w = head[i]!;
    if (w === '-h' || w === '--help') return 'help';
    if (w.length > 1 && w.startsWith('-') && !/^-\d/.test(w)) {
      const long = w.startsWith('--');
      const body = w.slice(long ? 2 : 1);
      const [flagName, inline] = body.includes('=') ? [body.slice(0, body.indexOf('=')), true] : [body, false];
      if (!long && flagName.length > 1 && !table.has(flagName)) {
        // bundled short flags like -qa: each must be a known boolean
        for (const c of flagName) {
          const f = table.get(c);
          if (!f || f.value) throw new PimError(EXIT.USAGE, `unknown option -${c}; see ${spec.name} --help`);
        }
        continue;
      }
      const f = table.get(flagName);
      if (!f) throw new PimError(EXIT.USAGE, `unknown option ${long ? '--' : '-'}${flagName}; see ${spec.name} --help`);
      let value: string | undefined;
      if (f.value && !inline) {
        if (i + 1 >= head.length) throw new PimError(EXIT.USAGE, `option ${w} needs a value; see ${spec.name} --help`);
        value = head[++i];
      } else if (f.value) value = body.slice(body.indexOf('=') + 1);
      const def = spec.args[f.key];
      if (def?.type === 'enum' && value !== undefined && !(def.options ?? []).includes(value)) {
        throw new PimError(EXIT.USAGE, `--${kebab(f.key)} must be one of ${(def.options ?? []).join(', ')}, not ${JSON.stringify(value)}`);
      }
      continue;
    }
    positionals.push(w);
  }
  const pmin = spec.positionals?.min ?? 0;
  const pmax = spec.positionals?.max ?? Infinity;
  if (positionals.length < pmin) throw new PimError(EXIT.USAGE, `missing argument; usage: ${spec.name} ${spec.usage}`);
  if (positionals.length > pmax) throw new PimError(EXIT.USAGE, `too many arguments (${positionals.slice(pmax).join(' ')}); usage: ${spec.name} ${spec.usage}`);
  let args: ParsedArgs<A>;
  try {
    args = parseArgs(head, spec.args) as ParsedArgs<A>;
  } catch (e) {
    // citty's own complaints (a missing positional, a bad enum value) are usage errors, without its colours
    if ((e as Error)?.name === 'CLIError') throw new PimError(EXIT.USAGE, `${(e as Error).message.replace(/\x1b\[[0-9;]*m/g, '')}; see ${spec.name} --help`);
    throw e;
  }
  for (const [k, def] of Object.entries(spec.args)) {
    if (def.type === 'enum' && args[k] !== undefined && !(def.options ?? []).includes(String(args[k]))) {
      throw new PimError(EXIT.USAGE, `--${kebab(k)} must be one of ${(def.options ?? []).join(', ')}, not ${JSON.stringify(String(args[k]))}`);
    }
  }
  return { args, positionals, rest };
}

/** Exit once stdout has drained (pipes are asynchronous on some platforms). */
export function exitAfterFlush(code: number): void {
  process.exitCode = code;
  if (!stdoutStreamUsed() || process.stdout.writableLength === 0) process.exit(code);
  process.stdout.write('', () => process.exit(code));
}

export function reportError(e: unknown): number {
  if (e instanceof PimError) {
    process.stderr.write(`${prog()}: ${e.message}\n`);
    return e.code;
  }
  if (e instanceof Error && e.name === 'Interrupted') {
    // lib/core/signals.ts: the work was undone; exit as the shell expects (SIGINT: 130)
    const st = (e as Error & { status: number }).status;
    process.stderr.write(`${prog()}: ${e.message}; stopped what was started\n`);
    return st;
  }
  const err = e as Error;
  process.stderr.write(`${prog()}: internal error: ${err?.stack ?? String(e)}\n`);
  return EXIT.SOFTWARE;
}

async function completion(spec: CmdSpec<ArgsDef>, argv: string[]): Promise<void> {
  const { default: t } = await import('@bomb.sh/tab');
  const none = () => undefined;
  for (const [k, def] of Object.entries(spec.args)) {
    if (def.type === 'positional') continue;
    const alias = 'alias' in def && def.alias ? (Array.isArray(def.alias) ? def.alias[0] : def.alias) : undefined;
    const handler = spec.completeOptions?.[k];
    const flag = kebab(k);
    // tab takes an option without a handler for a boolean: give every option
    // that takes a value a handler (enum values, or none), so that the word
    // after `--timeout` is not completed as a VM name
    let h: Completer | undefined = handler;
    if (!h && def.type === 'enum') h = (complete) => (def.options ?? []).forEach((o) => complete(String(o), ''));
    if (!h && def.type === 'string') h = none;
    if (h) {
      const hh = h;
      const f = function (complete: (v: string, d: string) => void) {
        return hh(complete);
      };
      if (alias) t.option(flag, def.description ?? '', f as never, alias);
      else t.option(flag, def.description ?? '', f as never);
    } else if (alias) t.option(flag, def.description ?? '', alias);
    else t.option(flag, def.description ?? '');
  }
  if (spec.completePositional) {
    const cp = spec.completePositional;
    t.argument('name', (complete) => void cp(complete), (spec.positionals?.max ?? Infinity) > 1);
  }
  const shell = argv[0];
  if (shell === '--') {
    const words = argv.slice(1);
    // tab's handlers are synchronous: resolve async completers first
    if (spec.completePositional) {
      // tab counts positionals from 1 for a root command (`pim-console web1 <TAB>`
      // would offer names again) and cannot see `--`: count them here
      const table = flagTable(spec.args);
      let n = 0;
      let afterDd = false;
      const before = words.slice(0, -1);
      for (let i = 0; i < before.length; i++) {
        const w = before[i]!;
        if (w === '--') {
          afterDd = true;
          break;
        }
        if (w.length > 1 && w.startsWith('-') && !/^-\d/.test(w)) {
          const body = w.replace(/^--?/, '');
          if (!body.includes('=') && table.get(body)?.value) i++;
          continue;
        }
        n++;
      }
      const vals: Array<[string, string]> = [];
      if (!afterDd && n < (spec.positionals?.max ?? Infinity)) await spec.completePositional((v, d) => vals.push([v, d]));
      t.arguments.get('name')!.handler = (complete) => vals.forEach(([v, d]) => complete(v, d));
    }
    t.parse(words);
  } else if (shell) {
    // tab prints the script with console.log: catch it and fix it up
    const out: string[] = [];
    const log = console.log;
    console.log = (...a: unknown[]) => void out.push(a.join(' '));
    try {
      t.setup(spec.name, spec.name, shell);
    } finally {
      console.log = log;
    }
    let script = out.join('\n') + '\n';
    if (shell === 'bash') {
      // 1. `readonly ShellCompDirective...=N` at top level: the second script
      //    sourced into one shell (or the same one twice) fails with
      //    "readonly variable". Use the numbers instead.
      const dirs = new Map<string, string>();
      script = script.replace(/^readonly (ShellCompDirective\w+)=(\d+)\n/gm, (_m, k: string, v: string) => (dirs.set(k, v), ''));
      script = script.replace(/\$(ShellCompDirective\w+)/g, (m, k: string) => dirs.get(k) ?? m);
      script = script.replace(/^# Define shell completion directives\n\n/m, '');
      // 2. _get_comp_words_by_ref needs the bash-completion package; and the
      //    words were joined unquoted and eval'ed (a word like $(cmd) ran, words
      //    after the cursor were sent). Pass the words up to the cursor as
      //    arguments instead.
      script = script.replace(
        /^ {4}local cur prev words cword\n[^]*?out=\$\(eval "\$requestComp" 2>\/dev\/null\)\n/m,
        [
          '    local cur prev words cword',
          '    if declare -F _get_comp_words_by_ref >/dev/null 2>&1; then',
          '        _get_comp_words_by_ref -n "=:" cur prev words cword',
          '    else',
          '        words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; cur=${COMP_WORDS[COMP_CWORD]-}',
          '    fi',
          '',
          '    local out directive',
          '    # the words before the cursor and the current one (maybe empty), each one argument',
          `    out=$(${spec.name} complete -- "\${words[@]:1:cword-1}" "$cur" 2>/dev/null)`,
          '',
        ].join('\n'),
      );
    }
    writeOut(script);
  }
}

/** Run an executable: the `main()` of every cmds/*.ts file. */
export function main<A extends ArgsDef>(spec: CmdSpec<A>, argv = process.argv.slice(2)): void {
  if (argv[0] === 'complete' && (argv[1] === '--' || ['zsh', 'bash', 'fish', 'powershell'].includes(argv[1] ?? ''))) {
    completion(spec as unknown as CmdSpec<ArgsDef>, argv.slice(1)).then(
      () => exitAfterFlush(0),
      (e) => exitAfterFlush(reportError(e)),
    );
    return;
  }
  let ctx: Ctx<A> | 'help';
  try {
    ctx = parseArgv(spec, argv);
  } catch (e) {
    exitAfterFlush(reportError(e));
    return;
  }
  if (ctx === 'help') {
    writeOut(renderHelp(spec as unknown as CmdSpec<ArgsDef>));
    exitAfterFlush(0);
    return;
  }
  Promise.resolve()
    .then(() => spec.run(ctx as Ctx<A>))
    .then(
      (code) => exitAfterFlush(typeof code === 'number' ? code : 0),
      (e) => exitAfterFlush(reportError(e)),
    );
}
