/**
 * Shell completion, loaded only for `CMD complete ...`; it never runs a command.
 * build.mjs makes it a file of its own, dist/complete.cjs, shared by every
 * executable (with @bomb.sh/tab in it, it would cost each start-up ~1 ms).
 *
 * `CMD complete zsh|bash|fish` prints the script that @bomb.sh/tab writes
 * (the bash one with pim's fixes, each checked: see patchBash). At TAB time
 * the script runs `CMD complete -- WORD... CURRENT` and reads tab's answer
 * format: one `value<TAB>description` line per candidate (no TAB when there
 * is no description: zsh's _describe shows an empty one as a stray `--`),
 * then `:DIRECTIVE` (4: no file completion; 0: the shell may complete file
 * names when no candidate matches; 16: directories only).
 *
 * pim answers that request itself, from the citty definition: tab's own
 * parser (`t.parse`) does not know `--`, counts a root command's positionals
 * from one, looks a flag up in every subcommand at once, and always answers
 * "no files", which pim had to work around option by option. Walking the
 * same tree that parses argv (./command.ts) gets subcommands, flags that take
 * a value, `--fs=` and variadic positionals right in one place.
 */
import {
  findSub,
  flagTable,
  isFlag,
  node,
  optionDefs,
  positionalDefs,
  subcommandRows,
  type AnyCommand,
  type Completer,
  type Node,
  type PimArg,
} from './tree.ts';
import { writeOut } from './output.ts';
import { EXIT, PimError } from '../core/exit.ts';

export const DIRECTIVE = { files: 0, noSpace: 2, noFiles: 4, dirs: 16 } as const;

export async function completion(cmd: AnyCommand, argv: string[]): Promise<void> {
  const root = await node(cmd);
  if (argv[0] === '--') writeOut(await answer(root, argv.slice(1)));
  else writeOut(await shellScript(root.name, argv[0]!));
}

type Cand = [string, string];

const format = (cands: Cand[], cur: string, directive: number): string => {
  const seen = new Set<string>();
  let out = '';
  for (const [v, d] of cands) {
    if (!v.startsWith(cur) || seen.has(v)) continue;
    seen.add(v);
    out += d ? `${v}\t${d.replace(/[\t\n]/g, ' ')}\n` : `${v}\n`;
  }
  return `${out}:${directive}\n`;
};

async function collect(c: Completer | undefined, positionals: readonly string[] = []): Promise<Cand[]> {
  const out: Cand[] = [];
  if (c) await c((v, d) => out.push([v, d]), positionals);
  return out;
}

/** What an arg's value completes to: its candidates, and whether paths may follow. */
async function valuesOf(
  def: PimArg,
  positionals: readonly string[] = [],
): Promise<{ cands: Cand[]; directive: number }> {
  const cands =
    def.type === 'enum'
      ? (def.options ?? []).map((o): Cand => [String(o), ''])
      : await collect(def.complete, positionals);
  const directive = def.path === 'dir' ? DIRECTIVE.dirs : def.path === 'file' ? DIRECTIVE.files : DIRECTIVE.noFiles;
  return { cands, directive };
}

/** The answer to `complete -- WORD... CURRENT` (CURRENT may be ''). */
export async function answer(root: Node, words: string[]): Promise<string> {
  const cur = words.length ? words[words.length - 1]! : '';
  const before = words.slice(0, -1);
  let n = root;
  let table = flagTable(n.args);
  const seen: string[] = []; // positionals seen by the current command
  for (let i = 0; i < before.length; i++) {
    const w = before[i]!;
    if (n.meta.dispatch && !isFlag(w)) return n.meta.dispatch.complete(words.slice(i));
    if (w === '--') return format([], '', n.meta.passthrough ? DIRECTIVE.files : DIRECTIVE.noFiles);
    if (isFlag(w)) {
      const body = w.replace(/^--?/, '');
      if (!body.includes('=') && table.get(body)?.value) i++;
      continue;
    }
    if (n.subs) {
      const sub = await findSub(n, w);
      if (!sub) return format([], '', DIRECTIVE.noFiles);
      n = sub;
      table = flagTable(n.args);
      seen.length = 0;
      continue;
    }
    seen.push(w);
  }
  // the value of a flag: `--fs <TAB>`, `--fs=<TAB>`, or bash's split `--fs = <TAB>`
  const prev = before[before.length - 1];
  const valueFlag = (w: string | undefined) =>
    w && isFlag(w) && !w.includes('=') ? table.get(w.replace(/^--?/, '')) : undefined;
  let f = valueFlag(prev);
  if (prev === '=' && before.length >= 2) f = valueFlag(before[before.length - 2]);
  if (f?.value) {
    const { cands, directive } = await valuesOf(f.def);
    return format(cands, cur, directive);
  }
  if (isFlag(cur) && cur.includes('=')) {
    const g = table.get(cur.slice(0, cur.indexOf('=')).replace(/^--?/, ''));
    if (!g?.value) return format([], '', DIRECTIVE.noFiles);
    const { cands, directive } = await valuesOf(g.def);
    return format(cands, cur.slice(cur.indexOf('=') + 1), directive);
  }
  if (cur.startsWith('-')) {
    const cands: Cand[] = [];
    for (const { def, long, short } of optionDefs(n.args)) {
      cands.push([long, def.description ?? '']);
      if (!cur.startsWith('--')) for (const a of short) cands.push([a, def.description ?? '']);
    }
    cands.push(['--help', 'show the help']);
    return format(cands, cur, DIRECTIVE.noFiles);
  }
  if (n.meta.dispatch) return format(n.meta.dispatch.list(), cur, DIRECTIVE.noFiles);
  if (n.subs) {
    const cands: Cand[] = await subcommandRows(n);
    return format(cands, cur, DIRECTIVE.noFiles);
  }
  const { defs } = positionalDefs(n.args);
  const last = defs[defs.length - 1];
  const def = seen.length < defs.length ? defs[seen.length]![1] : last?.[1].variadic ? last[1] : undefined;
  if (!def) return format([], '', DIRECTIVE.noFiles);
  if (def.remote) return remoteWord(def, seen, cur);
  const { cands, directive } = await valuesOf(def, seen);
  return format(cands, cur, directive);
}

/**
 * An scp-style word (ArgExtras.remote): `[USER@]NAME:path` or a local path. A
 * remote word gets nothing (the guest's files are not listed, and the host's
 * must not be offered); otherwise the VM names complete as `[USER@]NAME:`
 * with no space after them (more of the word follows), and host paths as usual.
 */
async function remoteWord(def: PimArg, seen: readonly string[], cur: string): Promise<string> {
  const colon = cur.indexOf(':');
  const slash = cur.indexOf('/');
  if (colon >= 0 && (slash < 0 || colon < slash)) return format([], '', DIRECTIVE.noFiles);
  const at = /^[^/]*@/.exec(cur)?.[0] ?? '';
  const cands = (await collect(def.complete, seen)).map(([v, d]): Cand => [`${at}${v}:`, d]);
  const hit = cands.some(([v]) => v.startsWith(cur));
  return format(cands, cur, hit ? DIRECTIVE.files | DIRECTIVE.noSpace : DIRECTIVE.files);
}

// --- the scripts -------------------------------------------------------------

/** A patch to tab's generated script that must apply: a new tab version that changes the text fails here, not silently. */
function must(script: string, re: RegExp, to: string | ((...m: string[]) => string), what: string): string {
  const hits = [...script.matchAll(new RegExp(re.source, re.flags.includes('g') ? re.flags : re.flags + 'g'))].length;
  if (!hits)
    throw new PimError(
      EXIT.SOFTWARE,
      `tab's bash script changed: the fix "${what}" no longer applies; update patchBash in lib/cli/complete.ts`,
    );
  return typeof to === 'string' ? script.replace(re, to) : script.replace(re, to as (...m: string[]) => string);
}

/**
 * Fixes to tab's bash script. Each must apply (else it throws, and
 * build.mjs, which runs every executable's `complete bash` once, fails):
 * 1. `readonly ShellCompDirective...=N` at top level: the second script
 *    sourced into one shell (or one sourced twice) failed with "readonly
 *    variable". The numbers are used instead.
 * 2. `_get_comp_words_by_ref` needs the bash-completion package, and the
 *    words were joined unquoted and eval'ed (a word like $(cmd) ran at TAB
 *    time; words after the cursor were sent). The words up to the cursor are
 *    passed as arguments instead, with COMP_WORDS when bash-completion is absent.
 * 3. `complete -F` without `-o default`: an answer that allows files (pim-run
 *    ./di<TAB>, pim-kboot --kernel <TAB>) got nothing. With it, bash completes
 *    file names when no candidate matches, and the script's own `compopt +o
 *    default` turns that off for answers that say "no files".
 */
export function patchBash(script: string, name: string): string {
  const dirs = new Map<string, string>();
  let s = must(
    script,
    /^readonly (ShellCompDirective\w+)=(\d+)\n/gm,
    (_m, k, v) => (dirs.set(k!, v!), ''),
    'no readonly globals',
  );
  s = must(
    s,
    /\$(ShellCompDirective\w+)/g,
    (m, k) => dirs.get(k!) ?? m,
    'directive numbers in place of readonly globals',
  );
  s = s.replace(/^# Define shell completion directives\n\n/m, ''); // a comment left without its lines: cosmetic, may go
  s = must(
    s,
    /^ {4}local cur prev words cword\n[\s\S]*?out=\$\(eval "\$requestComp" 2>\/dev\/null\)\n/m,
    [
      '    local cur prev words cword',
      '    if declare -F _get_comp_words_by_ref >/dev/null 2>&1; then',
      '        _get_comp_words_by_ref -n "=:@" cur prev words cword',
      '    else',
      '        words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; cur=${COMP_WORDS[COMP_CWORD]-}',
      "        # bash splits words at ':' and '@' (COMP_WORDBREAKS): join USER @ NAME : path back into one word",
      '        local __pim_i __pim_x __pim_sp __pim_rest=${COMP_LINE-}',
      '        local -a __pim_w=()',
      '        for ((__pim_i = 0; ${#__pim_rest} && __pim_i <= COMP_CWORD && __pim_i < ${#COMP_WORDS[@]}; __pim_i++)); do',
      '            __pim_x=${COMP_WORDS[__pim_i]}',
      '            __pim_sp=${__pim_rest%%[![:space:]]*}; __pim_rest=${__pim_rest#"$__pim_sp"}; __pim_rest=${__pim_rest#"$__pim_x"}',
      '            if ((__pim_i > 0)) && [ -z "$__pim_sp" ] && { [[ ${__pim_x:0:1} == [:@] ]] || [[ ${__pim_w[-1]: -1} == [:@] ]]; }; then',
      '                __pim_w[-1]+=$__pim_x',
      '            else',
      '                __pim_w+=("$__pim_x")',
      '            fi',
      '        done',
      '        if ((${#__pim_w[@]})); then words=("${__pim_w[@]}"); cword=$((${#__pim_w[@]} - 1)); cur=${__pim_w[cword]}; fi',
      '    fi',
      '',
      '    local out directive',
      '    # the words before the cursor and the current one (maybe empty), each one argument',
      `    out=$(${name} complete -- "\${words[@]:1:cword-1}" "$cur" 2>/dev/null)`,
      '',
    ].join('\n'),
    'words as arguments, no eval',
  );
  s = must(s, /^complete -F (\S+) (\S+)$/m, 'complete -o default -F $1 $2', 'file names when the answer allows them');
  s = must(
    s,
    /^( {4}COMPREPLY=\( \$\(compgen -W "\$\{completions\[\*\]\}" -- "\$cur"\) \)\n)/m,
    (_m, line) =>
      line +
      [
        "    # readline replaces only the end of the word, after its last ':' or from its last '@' (COMP_WORDBREAKS): drop what comes before",
        '    local __pim_p=${cur%"${COMP_WORDS[COMP_CWORD]-}"}',
        '    __pim_p=${__pim_p%@}',
        '    if [ -n "$__pim_p" ] && [ "$__pim_p" != "$cur" ]; then COMPREPLY=("${COMPREPLY[@]#"$__pim_p"}"); fi',
        '',
      ].join('\n'),
    "candidates with ':' or '@' in them",
  );
  // and what must be gone whatever tab writes next
  for (const [bad, why] of [
    [/^readonly /m, 'a readonly global'],
    [/eval "\$requestComp"/, 'eval of the words'],
    [/\$ShellCompDirective/, 'a directive variable'],
  ] as const) {
    if (bad.test(s))
      throw new PimError(
        EXIT.SOFTWARE,
        `tab's bash script still has ${why} after pim's fixes; update patchBash in lib/cli/complete.ts`,
      );
  }
  return s;
}

/**
 * The fix to tab's zsh script: it meant to escape a ':' in a candidate for
 * _describe (where ':' starts the description) with `${comp//:/\:}`, but
 * zsh takes that backslash as quoting, so `pim-cp pim<TAB>` completed
 * `pim-demo` and dropped the colon. Must apply (like patchBash).
 */
export function patchZsh(script: string): string {
  return must(script, /comp=\$\{comp\/\/:\/\\:\}/, 'comp=${comp//:/\\\\:}', "a ':' in a candidate kept");
}

/** The completion script for NAME in SHELL, as tab writes it (bash and zsh: with pim's fixes). */
export async function shellScript(name: string, shell: string): Promise<string> {
  const { default: t } = await import('@bomb.sh/tab');
  // tab prints the script with console.log: catch it
  const out: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]) => void out.push(a.join(' '));
  try {
    t.setup(name, name, shell);
  } finally {
    console.log = log;
  }
  const script = out.join('\n') + '\n';
  if (!script.includes(`${name} complete --`))
    throw new PimError(
      EXIT.SOFTWARE,
      `tab's ${shell} script does not call "${name} complete --"; update lib/cli/complete.ts`,
    );
  return shell === 'bash' ? patchBash(script, name) : shell === 'zsh' ? patchZsh(script) : script;
}
