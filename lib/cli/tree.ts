/**
 * The model of a command that both lib/cli/command.ts (parsing argv, help)
 * and lib/cli/complete.ts (answering TAB) walk: citty's definitions with
 * pim's extras, the nodes of the subcommand tree, and the tables of flags
 * and positionals made from a command's args. No I/O here.
 */
import type { ArgDef, ArgsDef, CommandDef, CommandMeta } from 'citty';
import { prog } from '../core/prog.ts';

declare module 'citty' {
  interface CommandMeta {
    /** the usage line after the command's name (default: made from its args) */
    usage?: string;
    /** paragraphs after the one-line description in --help */
    details?: string;
    /** command lines shown under "Examples:" (each runs as written) */
    examples?: string[];
    /** the command takes words after `--`, untouched (what they are: "qemu args") */
    passthrough?: string;
    /**
     * The command runs other commands (the umbrella): its first positional word
     * names one, and that word and every word after it (`--` too) are the run's,
     * unchecked, in `data.rest`.
     */
    dispatch?: Dispatch;
  }
}

export interface Dispatch {
  /** the commands it can run: name, one-line summary (listed in --help, completed at TAB) */
  list(): Array<[string, string]>;
  /** the completion answer for the words after the command's name (`pim stop w<TAB>`) */
  complete(words: string[]): Promise<string> | string;
}

/**
 * Adds completion candidates: a value and its description (may be ''). A
 * positional's completer is also given the positional words before it (a
 * snapshot tag completes from the VM named before it).
 */
export type Completer = (
  complete: (value: string, description: string) => void,
  positionals?: readonly string[],
) => void | Promise<void>;

/**
 * A completer whose module loads at TAB time only: a command that imports it
 * statically pays for nothing at start-up (lib/vm/complete.ts would bring the
 * image store and the logger with it).
 */
export function lazyCompleter(load: () => Promise<Completer>): Completer {
  return async (complete, positionals) => (await load())(complete, positionals);
}

/** What an arg may declare besides citty's fields. */
export interface ArgExtras {
  /** a string flag that may be given several times: every value in `data.repeated[key]` */
  repeatable?: boolean;
  /** a positional that takes any number of words (all are in `data.positionals`) */
  variadic?: boolean;
  /** candidates at TAB time (VM names, ISO names, ...) */
  complete?: Completer;
  /** the shell completes paths here: files (when no candidate matches) or directories */
  path?: 'file' | 'dir';
  /**
   * scp-style words (pim-cp): a local path or [USER@]NAME:path. The candidates
   * (VM names) complete as `NAME:` with no space after it, and a word that is
   * already remote (a ':' before any '/') gets no host file names.
   */
  remote?: boolean;
}
export type PimArg = ArgDef & ArgExtras;

/** What the frame hands `run` besides citty's `args`, as citty's `context.data`. */
export interface Words {
  /** the positional words (before `--`), in order */
  positionals: string[];
  /** the words after `--`, untouched (or, for a dispatcher, the command and its words) */
  rest: string[];
  /** every value of each `repeatable` flag, in order */
  repeated: Record<string, string[]>;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyCommand = CommandDef<any>;

type Resolvable<T> = T | Promise<T> | (() => T) | (() => Promise<T>);
export const resolve = async <T>(v: Resolvable<T>): Promise<T> =>
  typeof v === 'function' ? await (v as () => T | Promise<T>)() : await v;

/** A command's meta, args and subcommands, resolved (citty allows functions and promises). */
export interface Node {
  cmd: AnyCommand;
  meta: CommandMeta;
  args: ArgsDef;
  subs: Record<string, AnyCommand> | null;
  /** its name as typed: `pim-iso download` */
  name: string;
}

export async function node(cmd: AnyCommand, parent?: Node, word?: string): Promise<Node> {
  const meta = (await resolve(cmd.meta ?? {})) ?? {};
  const args = ((await resolve(cmd.args ?? {})) ?? {}) as ArgsDef;
  const subs = cmd.subCommands ? ((await resolve(cmd.subCommands)) as Record<string, AnyCommand>) : null;
  const name = parent ? `${parent.name} ${word ?? meta.name}` : (meta.name ?? prog());
  return { cmd, meta, args, subs: subs && Object.keys(subs).length ? subs : null, name };
}

/** A subcommand by name or alias. */
export async function findSub(n: Node, word: string): Promise<Node | null> {
  if (!n.subs) return null;
  if (Object.hasOwn(n.subs, word)) return node(n.subs[word]!, n, word);
  for (const [k, c] of Object.entries(n.subs)) {
    const m = await resolve(c.meta ?? {});
    const al = m?.alias === undefined ? [] : Array.isArray(m.alias) ? m.alias : [m.alias];
    if (al.includes(word)) return node(c, n, k);
  }
  return null;
}

export const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
export const aliasesOf = (def: ArgDef): string[] =>
  'alias' in def && def.alias ? (Array.isArray(def.alias) ? def.alias : [def.alias]) : [];
export const takesValue = (def: ArgDef) => def.type === 'string' || def.type === 'enum';

export interface Flag {
  key: string;
  def: PimArg;
  value: boolean;
}

/** Every spelling of every flag: camelCase, kebab-case, --no-X for booleans, aliases. */
export function flagTable(args: ArgsDef): Map<string, Flag> {
  const m = new Map<string, Flag>();
  for (const [key, def] of Object.entries(args)) {
    if (def.type === 'positional') continue;
    const f = { key, def: def as PimArg, value: takesValue(def) };
    m.set(key, f);
    m.set(kebab(key), f);
    if (!f.value) m.set(`no-${kebab(key)}`, f);
    for (const a of aliasesOf(def)) m.set(a, f);
  }
  return m;
}

/** The positional args, in order, with the counts they allow. */
export function positionalDefs(args: ArgsDef): { defs: Array<[string, PimArg]>; min: number; max: number } {
  const defs = Object.entries(args).filter(([, d]) => d.type === 'positional') as Array<[string, PimArg]>;
  const required = (d: PimArg) => d.required !== false && d.default === undefined;
  let min = 0;
  for (const [, d] of defs) if (required(d)) min++;
  const max = defs.some(([, d]) => d.variadic) ? Infinity : defs.length;
  return { defs, min, max };
}

/** A word that is a flag (not `-`, not a negative number). */
/** A command's options (not its positionals): the arg's key, its definition, its flags (-a aliases, then --long). */
export function optionDefs(args: ArgsDef): Array<{ key: string; def: PimArg; long: string; short: string[] }> {
  return (Object.entries(args) as Array<[string, PimArg]>)
    .filter(([, d]) => d.type !== 'positional')
    .map(([key, def]) => ({ key, def, long: `--${kebab(key)}`, short: aliasesOf(def).map((a) => `-${a}`) }));
}

/** A command's subcommands that are not hidden: name, summary. */
export async function subcommandRows(n: Node): Promise<Array<[string, string]>> {
  const rows: Array<[string, string]> = [];
  for (const [k, c] of Object.entries(n.subs ?? {})) {
    const m = await resolve(c.meta ?? {});
    if (!m?.hidden) rows.push([k, m?.description ?? '']);
  }
  return rows;
}

export const isFlag = (w: string) => w.length > 1 && w.startsWith('-') && !/^-\d/.test(w);
