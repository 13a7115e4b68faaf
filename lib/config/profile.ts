/**
 * Profiles (profiles.d/*.yml merged over `default`) and the files named after
 * them: preseeds.d/PROFILE.cfg.*, installs.d/PROFILE.sh, ... A file named
 * after a profile falls back to the `default` one, then to pim's built-in.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_FILES } from './defaults.ts';
import { configError, subdir, type Subdir } from './tree.ts';
import { loadCatalog, resolveEntry, type Resolved } from './catalog.ts';
import { answerProfile } from './answers.ts';
import { run } from '../core/run.ts';
import { configDir } from '../core/paths.ts';

/** Profile keys that name files, and the subdir each lives in. */
export const FILE_REFS: Record<string, Subdir> = {
  installs: 'installs.d',
  scripts: 'scripts.d',
  preseed: 'preseeds.d',
  user_data: 'preseeds.d',
  sources: 'sources.d',
  env_hook: 'hooks.d',
};

function fileNameProblem(n: string): string | null {
  if (!n || n.includes('/') || n.includes('\\') || n.includes('\0') || n.startsWith('.'))
    return 'a file name has no "/" and does not start with "."';
  return null;
}

/** Check that every file a profile names exists (exit 78 naming where it was set). */
export function checkProfileRefs(p: Resolved): void {
  for (const [key, dir] of Object.entries(FILE_REFS)) {
    const v = p.value[key];
    const list = typeof v === 'string' ? [v] : Array.isArray(v) ? (v as string[]) : [];
    list.forEach((f, i) => {
      const where = p.origins[key] ?? p.origins[`${key}.${i}`] ?? 'profile';
      const bad = fileNameProblem(f);
      if (bad) throw configError(where, `${key}: bad file name ${JSON.stringify(f)}: ${bad}`);
      if (!fs.existsSync(join(subdir(dir), f)) && DEFAULT_FILES[`${dir}/${f}`] === undefined) {
        throw configError(
          where,
          `${key}: ${dir}/${f} does not exist (looked in ${subdir(dir)}); create it or fix the profile`,
        );
      }
    });
  }
}

/**
 * A profile merged over `default`, with the files it names checked, as the
 * templates see it (lib/config/answers.ts): a plain `password` hashed, pim's
 * required packages first in `packages`.
 */
export async function loadProfile(name: string): Promise<Resolved> {
  const p = resolveEntry(await loadCatalog('profiles'), name);
  checkProfileRefs(p);
  return answerProfile(p);
}

export interface FoundFile {
  /** a path on disk, or null for a built-in file */
  path: string | null;
  /** "preseeds.d/dev.cfg.eta" or "builtin:preseeds.d/default.cfg.eta" */
  label: string;
  /** the file's name within its subdir */
  name: string;
}

/** Find DIR/NAME (exact) or, with `anyExt`, DIR/NAME.* in the user dir, then built-in. */
function findIn(dir: Subdir, base: string, anyExt: boolean): FoundFile | null {
  let names: string[] = [];
  try {
    names = fs.readdirSync(subdir(dir)).sort();
  } catch {
    /* no user dir */
  }
  const match = (n: string) => n === base || (anyExt && n.startsWith(base + '.'));
  const hit = names.find(match);
  if (hit) return { path: join(subdir(dir), hit), label: `${dir}/${hit}`, name: hit };
  const b = Object.keys(DEFAULT_FILES)
    .sort()
    .find((k) => k.startsWith(dir + '/') && match(k.slice(dir.length + 1)));
  if (b) return { path: null, label: `builtin:${b}`, name: b.slice(dir.length + 1) };
  return null;
}

/**
 * The file for a profile: DIR/PROFILE+SUFFIX, falling back to DIR/default+SUFFIX
 * (user dir first, then built-in). With anyExt, any extension after SUFFIX
 * matches (preseeds.d/dev.cfg.eta, .erb, ...).
 */
export function profileFile(dir: Subdir, profile: string, suffix: string, anyExt = false): FoundFile | null {
  return (
    findIn(dir, profile + suffix, anyExt) ?? (profile === 'default' ? null : findIn(dir, 'default' + suffix, anyExt))
  );
}

/** Exact file in a subdir (user, then built-in), or null. */
export function namedFile(dir: Subdir, name: string): FoundFile | null {
  return fileNameProblem(name) ? null : findIn(dir, name, false);
}

export function readFound(f: FoundFile): string {
  return f.path === null ? DEFAULT_FILES[f.label.slice('builtin:'.length)]! : fs.readFileSync(f.path, 'utf8');
}

/** The most an env_hook may take, and print. */
const HOOK_TIMEOUT_MS = 30_000;
const HOOK_MAX_BYTES = 1 << 20;

/**
 * A profile whose env_hook (an executable in hooks.d, as qqmgr's env_hook) has
 * run: each `KEY=VALUE` line it prints is set in `vars` over the profile's own
 * (blank lines and `#` comments are skipped), for the templates to use. The
 * hook runs with no shell, in the config dir, with PIM_PROFILE set; a hook
 * that fails, hangs past 30 s or prints anything else is a config error (78)
 * naming it. Without env_hook the profile is returned as it is.
 */
export async function withEnvHook(p: Resolved): Promise<Resolved> {
  const name = p.value.env_hook;
  if (typeof name !== 'string') return p;
  const where = p.origins.env_hook ?? `profile "${p.name}"`;
  const f = namedFile('hooks.d', name);
  if (!f || f.path === null) throw configError(where, `env_hook: hooks.d/${name} does not exist`);
  try {
    fs.accessSync(f.path, fs.constants.X_OK);
  } catch {
    throw configError(where, `env_hook: ${f.path} is not executable; chmod +x it`);
  }
  const r = await run(f.path, [], { cwd: configDir(), env: { PIM_PROFILE: p.name }, timeoutMs: HOOK_TIMEOUT_MS });
  const last = (r.stderr.trim().split('\n').pop() ?? '').slice(0, 200);
  if (r.timedOut) throw configError(where, `env_hook ${f.label} did not finish within ${HOOK_TIMEOUT_MS / 1000} s`);
  if (r.code !== 0)
    throw configError(where, `env_hook ${f.label} failed with status ${r.code}${last ? `: ${last}` : ''}`);
  if (r.stdout.length > HOOK_MAX_BYTES) throw configError(where, `env_hook ${f.label} printed more than 1 MiB`);
  const vars: Record<string, string> = {};
  r.stdout.split('\n').forEach((line, i) => {
    if (!line.trim() || line.startsWith('#')) return;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m)
      throw configError(
        `${f.label}:stdout:${i + 1}`,
        `env_hook lines are KEY=VALUE, not ${JSON.stringify(line.slice(0, 80))}`,
      );
    vars[m[1]!] = m[2]!;
  });
  const own =
    p.value.vars && typeof p.value.vars === 'object' && !Array.isArray(p.value.vars)
      ? (p.value.vars as Record<string, unknown>)
      : {};
  const origins = { ...p.origins };
  for (const k of Object.keys(vars)) origins[`vars.${k}`] = `${f.label} (env_hook)`;
  return { ...p, value: { ...p.value, vars: { ...own, ...vars } }, origins };
}
