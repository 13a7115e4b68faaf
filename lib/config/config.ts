/**
 * pim's configuration, shared by every command. The tree under
 * $XDG_CONFIG_HOME/pim (one constant per name below):
 *
 *   pim.yml        runtime config (serve.port, serve.bind)
 *   isos.d/*.yml   ISO catalog: NAME -> {url, checksum | checksum_url, ...}
 *   profiles.d/*.yml installation profiles: NAME -> {hostname, packages, ...}
 *   preseeds.d/    templates: PROFILE.cfg.* (preseed), PROFILE.user-data.*,
 *                  PROFILE.meta-data.* (Ubuntu autoinstall, nocloud-net)
 *   installs.d/    late-command scripts, fetched by the installer
 *   scripts.d/     provisioning scripts, run over SSH after the install
 *
 * Built-in defaults (defaults/, embedded in config-defaults.ts) come first;
 * user files are read in name order and merge over them. Every entry merges
 * over the `default` entry of its kind. A file named after a profile falls
 * back to the `default` one. Broken YAML, a wrong type for a known key, or a
 * missing referenced file is a PimError (exit 78) naming file:line.
 *
 * yaml is imported lazily: the loaders are async.
 */
import * as fs from 'node:fs';
import { writeFileAtomic } from '../core/fs.ts';

export { writeFileAtomic };
import { join } from 'node:path';
import { cacheDir, configDir } from '../core/paths.ts';
import { EXIT, PimError } from '../core/exit.ts';
import { nameProblem } from '../core/names.ts';
import { FORBIDDEN_KEYS, isPlainObject, mergeExplain, type Origins, type Plain } from './merge.ts';
import { DEFAULT_FILES } from './defaults.ts';

export const PIM_YML = 'pim.yml';
export const SUBDIRS = ['isos.d', 'profiles.d', 'preseeds.d', 'installs.d', 'scripts.d'] as const;
export type Subdir = (typeof SUBDIRS)[number];
export const isoDir = () => join(cacheDir(), 'isos');
export const subdir = (d: Subdir) => join(configDir(), d);

/** Every directory pim reads or writes for config and ISOs. */
export function configPaths(): Record<string, string> {
  const out: Record<string, string> = { config: configDir(), 'pim.yml': join(configDir(), PIM_YML) };
  for (const d of SUBDIRS) out[d] = subdir(d);
  out.isos = isoDir();
  return out;
}

export const configError = (where: string, msg: string) => new PimError(EXIT.CONFIG, `${where}: ${msg}`);

// ---------------------------------------------------------------- schema

type Ty = 'string' | 'number' | 'boolean' | 'string|number' | 'string[]' | 'object';
type Schema = { [k: string]: Ty | Schema };

export const PROFILE_SCHEMA: Schema = {
  distro: 'string', iso: 'string', hostname: 'string', domain: 'string', locale: 'string', keyboard: 'string',
  timezone: 'string', username: 'string', fullname: 'string', password: 'string', password_hash: 'string',
  mirror: 'string', packages: 'string[]', ssh_keys: 'string[]', installs: 'string[]', scripts: 'string[]',
  preseed: 'string', user_data: 'string', mem: 'string|number', cpus: 'number', disk_size: 'string|number', vars: 'object',
};
export const ISO_SCHEMA: Schema = {
  url: 'string', checksum: 'string', checksum_url: 'string', filename: 'string', insecure: 'boolean',
  distro: 'string', arch: 'string', version: 'string', description: 'string',
};
export const PIM_SCHEMA: Schema = { serve: { port: 'number', bind: 'string' } };
/** Kinds whose unknown keys are refused (profiles keep them: templates may use them). */
const STRICT = new Set(['isos', 'pim']);

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (isPlainObject(v)) return 'a mapping';
  return `a ${typeof v}`;
}

function typeOk(t: Ty, v: unknown): boolean {
  switch (t) {
    case 'string': return typeof v === 'string';
    case 'number': return typeof v === 'number' && Number.isFinite(v);
    case 'boolean': return typeof v === 'boolean';
    case 'string|number': return typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v));
    case 'string[]': return Array.isArray(v) && v.every((x) => typeof x === 'string');
    case 'object': return isPlainObject(v);
  }
}

/** Check `v` against `schema`; `at(path)` names file:line for an error. */
export function checkSchema(v: Plain, schema: Schema, strict: boolean, at: (path: string[]) => string, prefix: string[] = []): void {
  for (const [k, val] of Object.entries(v)) {
    const path = [...prefix, k];
    const t = schema[k];
    if (t === undefined) {
      if (strict) throw configError(at(path), `unknown key "${path.join('.')}"; known keys: ${Object.keys(schema).join(', ')}`);
      continue;
    }
    if (typeof t === 'string') {
      if (!typeOk(t, val)) throw configError(at(path), `"${path.join('.')}" must be ${t === 'string[]' ? 'a list of strings' : t === 'object' ? 'a mapping' : `a ${t.replace('|', ' or ')}`}, not ${typeName(val)}`);
    } else {
      if (!isPlainObject(val)) throw configError(at(path), `"${path.join('.')}" must be a mapping, not ${typeName(val)}`);
      checkSchema(val, t, strict, at, path);
    }
  }
}

// ---------------------------------------------------------------- YAML files

/** A parsed YAML file: its value and a way to find the line of a key path. */
export interface YamlFile {
  /** shown in messages: a path, or "builtin:profiles.d/default.yml" */
  label: string;
  value: unknown;
  lineOf(path: string[]): number | undefined;
}

/** The yaml module (bundled as CommonJS: its exports may sit under `default`). */
export async function yamlLib(): Promise<typeof import('yaml')> {
  const m = (await import('yaml')) as typeof import('yaml') & { default?: typeof import('yaml') };
  return m.default && 'parseDocument' in m.default ? m.default : m;
}

export async function parseYaml(text: string, label: string): Promise<YamlFile> {
  const YAML = await yamlLib();
  const lc = new YAML.LineCounter();
  const doc = YAML.parseDocument(text, { lineCounter: lc, prettyErrors: true, uniqueKeys: true });
  const err = doc.errors[0];
  if (err) {
    const line = err.linePos?.[0]?.line;
    const msg = err.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    throw configError(line ? `${label}:${line}` : label, `${msg}; fix the YAML`);
  }
  // refuse __proto__ & co. and non-scalar keys before converting to JS
  const walk = (node: unknown): void => {
    if (YAML.isMap(node)) {
      for (const pair of node.items) {
        const key = pair.key;
        const kv = YAML.isScalar(key) ? key.value : undefined;
        const line = YAML.isNode(key) && key.range ? lc.linePos(key.range[0]).line : undefined;
        const where = line ? `${label}:${line}` : label;
        if (typeof kv !== 'string' && typeof kv !== 'number') throw configError(where, 'keys must be plain strings');
        if (FORBIDDEN_KEYS.has(String(kv))) throw configError(where, `the key "${kv}" is not allowed; rename or remove it`);
        walk(pair.value);
      }
    } else if (YAML.isSeq(node)) node.items.forEach(walk);
  };
  walk(doc.contents);
  const value = doc.toJS({ maxAliasCount: 100 });
  return {
    label,
    value: value ?? {},
    lineOf(path) {
      for (let n = path.length; n > 0; n--) {
        const node = doc.getIn(path.slice(0, n), true);
        // the key's own line is nicer than the value's: find the pair
        const parent = n > 1 ? doc.getIn(path.slice(0, n - 1), true) : doc.contents;
        if (YAML.isMap(parent)) {
          const pair = parent.items.find((p) => YAML.isScalar(p.key) && String(p.key.value) === path[n - 1]);
          if (pair && YAML.isNode(pair.key) && pair.key.range) return lc.linePos(pair.key.range[0]).line;
        }
        if (YAML.isNode(node) && node.range) return lc.linePos(node.range[0]).line;
      }
      return undefined;
    },
  };
}

export async function readYamlFile(path: string): Promise<YamlFile> {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    throw configError(path, `cannot read: ${(e as Error).message}`);
  }
  return parseYaml(text, path);
}

/** User files of a config subdir with a YAML extension, sorted by name. */
function yamlFilesIn(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw configError(dir, `cannot read: ${(e as Error).message}`);
  }
  return names.filter((n) => /\.ya?ml$/.test(n) && !n.startsWith('.')).sort().map((n) => join(dir, n));
}

// ---------------------------------------------------------------- catalogs

export type Kind = 'profiles' | 'isos';
const KIND_SCHEMA: Record<Kind, Schema> = { profiles: PROFILE_SCHEMA, isos: ISO_SCHEMA };
const KIND_WORD: Record<Kind, string> = { profiles: 'profile', isos: 'ISO' };
const KIND_CMD: Record<Kind, string> = { profiles: 'pim-profile list', isos: 'pim-iso list' };

/** One definition of an entry, in one file. */
export interface Layer {
  name: string;
  value: Plain;
  file: YamlFile;
}

export interface Catalog {
  kind: Kind;
  /** entry name -> its definitions, builtin first, then user files in order */
  layers: Map<string, Layer[]>;
}

export const at = (f: YamlFile, path: string[]) => {
  const line = f.lineOf(path);
  return line ? `${f.label}:${line}` : f.label;
};

export async function loadCatalog(kind: Kind): Promise<Catalog> {
  const files: YamlFile[] = [await parseYaml(DEFAULT_FILES[`${kind}.d/default.yml`]!, `builtin:${kind}.d/default.yml`)];
  for (const p of yamlFilesIn(subdir(`${kind}.d`))) files.push(await readYamlFile(p));
  const layers = new Map<string, Layer[]>();
  for (const f of files) {
    if (f.value === null || f.value === undefined) continue;
    if (!isPlainObject(f.value)) throw configError(at(f, []), `must be a mapping of ${KIND_WORD[kind]} names to entries, not ${typeName(f.value)}`);
    for (const [name, value] of Object.entries(f.value)) {
      const why = nameProblem(name);
      if (why) throw configError(at(f, [name]), `bad ${KIND_WORD[kind]} name ${JSON.stringify(name)}: ${why}`);
      const v = value ?? {};
      if (!isPlainObject(v)) throw configError(at(f, [name]), `${KIND_WORD[kind]} "${name}" must be a mapping of keys to values, not ${typeName(v)}`);
      checkSchema(v, KIND_SCHEMA[kind], STRICT.has(kind), (p) => at(f, [name, ...p]));
      const list = layers.get(name) ?? [];
      list.push({ name, value: v, file: f });
      layers.set(name, list);
    }
  }
  return { kind, layers };
}

export function entryNames(c: Catalog): string[] {
  return [...c.layers.keys()].filter((n) => c.kind !== 'isos' || n !== 'default').sort();
}

export interface Resolved {
  name: string;
  value: Plain;
  /** dotted key path -> "file:line" it came from */
  origins: Origins;
  /** the files that define this entry (or default) */
  files: string[];
}

/** Merge an entry over `default`. Unknown names exit 66. */
export function resolveEntry(c: Catalog, name: string): Resolved {
  const why = nameProblem(name);
  if (why) throw new PimError(EXIT.USAGE, `bad ${KIND_WORD[c.kind]} name ${JSON.stringify(name)}: ${why}`);
  const own = c.layers.get(name);
  if (!own) throw new PimError(EXIT.NOINPUT, `no ${KIND_WORD[c.kind]} named "${name}"; see ${KIND_CMD[c.kind]}`);
  const layers = name === 'default' ? own : [...(c.layers.get('default') ?? []), ...own];
  const { value, origins } = mergeExplain(
    layers.map((l) => ({ value: l.value, label: (p: string[]) => at(l.file, [l.name, ...p]) })),
    `${KIND_WORD[c.kind]} "${name}"`,
  );
  return { name, value, origins, files: [...new Set(layers.map((l) => l.file.label))] };
}

// ---------------------------------------------------------------- profiles

/** Profile keys that name files, and the subdir each lives in. */
export const FILE_REFS: Record<string, Subdir> = { installs: 'installs.d', scripts: 'scripts.d', preseed: 'preseeds.d', user_data: 'preseeds.d' };

function fileNameProblem(n: string): string | null {
  if (!n || n.includes('/') || n.includes('\\') || n.includes('\0') || n.startsWith('.')) return 'a file name has no "/" and does not start with "."';
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
        throw configError(where, `${key}: ${dir}/${f} does not exist (looked in ${subdir(dir)}); create it or fix the profile`);
      }
    });
  }
}

export async function loadProfile(name: string): Promise<Resolved> {
  const p = resolveEntry(await loadCatalog('profiles'), name);
  checkProfileRefs(p);
  return p;
}

// ---------------------------------------------------------------- pim.yml

export interface RuntimeConfig {
  serve: { port: number; bind: string };
}

export async function loadRuntimeConfig(): Promise<{ value: RuntimeConfig; origins: Origins }> {
  const builtin = await parseYaml(DEFAULT_FILES[PIM_YML]!, `builtin:${PIM_YML}`);
  const layers: YamlFile[] = [builtin];
  const userPath = join(configDir(), PIM_YML);
  if (fs.existsSync(userPath)) layers.push(await readYamlFile(userPath));
  for (const f of layers) {
    if (f.value === null) f.value = {};
    if (!isPlainObject(f.value)) throw configError(at(f, []), `must be a mapping, not ${typeName(f.value)}`);
    checkSchema(f.value, PIM_SCHEMA, true, (p) => at(f, p));
  }
  const { value, origins } = mergeExplain(layers.map((f) => ({ value: f.value, label: (p: string[]) => at(f, p) })), PIM_YML);
  return { value: value as unknown as RuntimeConfig, origins };
}

// ---------------------------------------------------------------- files named after a profile

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
  const b = Object.keys(DEFAULT_FILES).sort().find((k) => k.startsWith(dir + '/') && match(k.slice(dir.length + 1)));
  if (b) return { path: null, label: `builtin:${b}`, name: b.slice(dir.length + 1) };
  return null;
}

/**
 * The file for a profile: DIR/PROFILE+SUFFIX, falling back to DIR/default+SUFFIX
 * (user dir first, then built-in). With anyExt, any extension after SUFFIX
 * matches (preseeds.d/dev.cfg.eta, .erb, ...).
 */
export function profileFile(dir: Subdir, profile: string, suffix: string, anyExt = false): FoundFile | null {
  return findIn(dir, profile + suffix, anyExt) ?? (profile === 'default' ? null : findIn(dir, 'default' + suffix, anyExt));
}

/** Exact file in a subdir (user, then built-in), or null. */
export function namedFile(dir: Subdir, name: string): FoundFile | null {
  return fileNameProblem(name) ? null : findIn(dir, name, false);
}

export function readFound(f: FoundFile): string {
  return f.path === null ? DEFAULT_FILES[f.label.slice('builtin:'.length)]! : fs.readFileSync(f.path, 'utf8');
}

// ---------------------------------------------------------------- init

/**
 * Write the starter tree: every built-in file that does not exist yet.
 * Existing files are never overwritten. Returns what was written and skipped.
 */
export function initTree(): { written: string[]; skipped: string[] } {
  const root = configDir();
  const written: string[] = [];
  const skipped: string[] = [];
  for (const d of SUBDIRS) fs.mkdirSync(join(root, d), { recursive: true });
  for (const [rel, content] of Object.entries(DEFAULT_FILES).sort()) {
    const dest = join(root, rel);
    if (fs.existsSync(dest)) {
      skipped.push(dest);
      continue;
    }
    writeFileAtomic(dest, content, rel.endsWith('.sh') ? 0o755 : 0o644, true);
    written.push(dest);
  }
  return { written, skipped };
}

