/**
 * Catalogs: profiles.d/*.yml, isos.d/*.yml, vms.d/*.yml and targets.d/*.yml, each a mapping of entry names
 * to entries. Built-in defaults (defaults/, embedded in defaults.ts) come
 * first; user files are read in name order and merge over them. Every entry
 * merges over the `default` entry of its kind.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { nameProblem } from '../core/names.ts';
import { isPlainObject, mergeExplain, type Origins, type Plain } from './merge.ts';
import { DEFAULT_FILES } from './defaults.ts';
import { configError, subdir } from './tree.ts';
import { at, parseYaml, readYamlFile, type YamlFile } from './yaml.ts';
import { checkSchema, ISO_SCHEMA, PROFILE_SCHEMA, TARGET_SCHEMA, typeName, VM_SCHEMA, type Schema } from './schema.ts';

export type Kind = 'profiles' | 'isos' | 'vms' | 'targets';
const KIND_SCHEMA: Record<Kind, Schema> = {
  profiles: PROFILE_SCHEMA,
  isos: ISO_SCHEMA,
  vms: VM_SCHEMA,
  targets: TARGET_SCHEMA,
};
/** Kinds whose unknown keys are refused (profiles keep them: templates may use them). */
const STRICT: Record<Kind, boolean> = { profiles: false, isos: true, vms: true, targets: true };
const KIND_WORD: Record<Kind, string> = {
  profiles: 'profile',
  isos: 'ISO',
  vms: 'VM definition',
  targets: 'deploy target',
};
const KIND_CMD: Record<Kind, string> = {
  profiles: 'pim-profile list',
  isos: 'pim-iso list',
  vms: 'pim-vm list',
  targets: 'pim-deploy targets',
};

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

/** User files of a config subdir with a YAML extension, sorted by name. */
export function yamlFilesIn(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw configError(dir, `cannot read: ${(e as Error).message}`);
  }
  return names
    .filter((n) => /\.ya?ml$/.test(n) && !n.startsWith('.'))
    .sort()
    .map((n) => join(dir, n));
}

export async function loadCatalog(kind: Kind): Promise<Catalog> {
  const files: YamlFile[] = [await parseYaml(DEFAULT_FILES[`${kind}.d/default.yml`]!, `builtin:${kind}.d/default.yml`)];
  for (const p of yamlFilesIn(subdir(`${kind}.d`))) files.push(await readYamlFile(p));
  const layers = new Map<string, Layer[]>();
  for (const f of files) {
    if (f.value === null || f.value === undefined) continue;
    if (!isPlainObject(f.value))
      throw configError(
        at(f, []),
        `must be a mapping of ${KIND_WORD[kind]} names to entries, not ${typeName(f.value)}`,
      );
    for (const [name, value] of Object.entries(f.value)) {
      const why = nameProblem(name);
      if (why) throw configError(at(f, [name]), `bad ${KIND_WORD[kind]} name ${JSON.stringify(name)}: ${why}`);
      const v = value ?? {};
      if (!isPlainObject(v))
        throw configError(
          at(f, [name]),
          `${KIND_WORD[kind]} "${name}" must be a mapping of keys to values, not ${typeName(v)}`,
        );
      checkSchema(v, KIND_SCHEMA[kind], STRICT[kind], (p) => at(f, [name, ...p]));
      const list = layers.get(name) ?? [];
      list.push({ name, value: v, file: f });
      layers.set(name, list);
    }
  }
  return { kind, layers };
}

export function entryNames(c: Catalog): string[] {
  return [...c.layers.keys()].filter((n) => c.kind === 'profiles' || n !== 'default').sort();
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
