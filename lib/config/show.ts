/**
 * pim-profile show and pim-vm show: an entry merged over `default`, as YAML,
 * as JSON, or with --explain one record per value: its key path, the value as
 * JSON, and the FILE:LINE (or builtin:...) it came from.
 */
import { printJson, printRecords, writeOut } from '../cli/output.ts';
import type { Resolved } from './catalog.ts';
import { leafOrigins } from './merge.ts';
import { yamlLib } from './yaml.ts';

export async function showEntry(r: Resolved, o: { json?: boolean; explain?: boolean }): Promise<void> {
  if (o.explain) {
    const keys = Object.keys(leafOrigins(r.value, '')); // in the merged value's order
    const recs = keys.map((key) => ({
      name: key,
      value: JSON.stringify(getPath(r.value, key)),
      from: r.origins[key] ?? '-',
    }));
    printRecords(recs, ['value', 'from'], { json: o.json });
  } else await printJsonOrYaml(r.value, o.json);
}

/** A value on stdout: JSON with --json, else YAML (pim-profile, pim-vm, pim-config and pim-iso show). */
export async function printJsonOrYaml(v: unknown, json?: boolean): Promise<void> {
  if (json) return printJson(v);
  writeOut((await yamlLib()).stringify(v));
}

function getPath(v: unknown, dotted: string): unknown {
  if (dotted === '') return v;
  return dotted
    .split('.')
    .reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), v);
}
