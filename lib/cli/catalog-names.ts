/**
 * Profile, ISO and VM definition names for completion, without YAML: a line scan of the
 * built-in catalog and of ~/.config/pim/{profiles,isos,vms}.d/*.yml. No parser
 * and no cache to go stale: the scan of a few small files takes about a
 * millisecond at TAB time, and a broken file costs nothing here (the
 * command itself says what is wrong with it).
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { configDir } from '../core/paths.ts';
import { nameProblem } from '../core/names.ts';
import { readRegular } from '../core/fs.ts';
import type { Completer } from './command.ts';

/** The top-level keys of a YAML mapping, by a line scan: `name:` (or a quoted name) at the start of a line. */
export function yamlTopKeys(text: string): string[] {
  const keys: string[] = [];
  for (const m of text.matchAll(
    /^(?:"([^"\n]+)"|'([^'\n]+)'|([^\s#'"\-?:{}[\],&*!|>%@`][^:\n]*?))[ \t]*:(?:[ \t]|$)/gm,
  )) {
    const k = m[1] ?? m[2] ?? m[3]!;
    if (k !== '<<' && !nameProblem(k)) keys.push(k);
  }
  return keys;
}

/** Names in the built-in catalog text and in ~/.config/pim/KIND.d/*.yml. */
export function catalogNames(kind: 'profiles' | 'isos' | 'vms', builtin: string): string[] {
  const names = new Set(yamlTopKeys(builtin));
  const dir = join(configDir(), `${kind}.d`);
  let files: string[] = [];
  try {
    files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f) && !f.startsWith('.'));
  } catch {
    /* no user catalog */
  }
  // regular files only (never blocking on a FIFO at TAB time), the first MB
  for (const f of files) for (const k of yamlTopKeys(readRegular(join(dir, f)) ?? '')) names.add(k);
  if (kind !== 'profiles') names.delete('default');
  return [...names].sort();
}

/**
 * A completer of profile or ISO names. `defaults` loads the built-in config
 * files (lib/config/defaults.ts, a layer above this one: the command passes
 * it in, and it is loaded only at TAB time).
 */
export function catalogCompleter(
  kind: 'profiles' | 'isos' | 'vms',
  defaults: () => Promise<{ DEFAULT_FILES: Record<string, string> }>,
): Completer {
  const what = kind === 'isos' ? 'ISO' : kind === 'vms' ? 'VM definition' : 'profile';
  return async (complete) => {
    const builtin = (await defaults()).DEFAULT_FILES[`${kind}.d/default.yml`] ?? '';
    for (const n of catalogNames(kind, builtin)) complete(n, what);
  };
}
