/** pim.yml, the runtime config: serve.port and serve.bind, and vars, over the built-in defaults. */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { configDir } from '../core/paths.ts';
import { isPlainObject, mergeExplain, type Origins } from './merge.ts';
import { DEFAULT_FILES } from './defaults.ts';
import { configError, PIM_YML } from './tree.ts';
import { at, parseYaml, readYamlFile, type YamlFile } from './yaml.ts';
import { checkSchema, PIM_SCHEMA, typeName } from './schema.ts';

export interface RuntimeConfig {
  serve: { port: number; bind: string };
  /** variables for VM definitions' qemu_args (${vars.NAME}), under an entry's own */
  vars?: Record<string, unknown>;
  /** pim-build's remote cache (lib/oci/cache.ts) */
  build?: { remote_cache?: { ref?: string; insecure?: boolean; push?: boolean; creds_env?: string } };
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
  const { value, origins } = mergeExplain(
    layers.map((f) => ({ value: f.value, label: (p: string[]) => at(f, p) })),
    PIM_YML,
  );
  return { value: value as unknown as RuntimeConfig, origins };
}
