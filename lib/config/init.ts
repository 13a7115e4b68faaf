/**
 * `pim-config init`: the starter tree, every built-in file that does not exist
 * yet, as an editable file (config 0644, scripts 0755: a user edits them).
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../core/fs.ts';
import { configDir } from '../core/paths.ts';
import { DEFAULT_FILES } from './defaults.ts';
import { SUBDIRS } from './tree.ts';
import { loadRuntimeConfig } from './runtime.ts';
import { entryNames, loadCatalog, resolveEntry } from './catalog.ts';
import { checkProfileRefs } from './profile.ts';

/**
 * Check every config file there is: pim.yml, and every profile and ISO entry
 * merged over its `default` (profiles with the files they name). Throws the
 * first config error (exit 78, FILE:LINE).
 */
export async function checkConfig(): Promise<void> {
  await loadRuntimeConfig();
  for (const kind of ['profiles', 'isos'] as const) {
    const cat = await loadCatalog(kind);
    for (const n of entryNames(cat)) {
      const r = resolveEntry(cat, n);
      if (kind === 'profiles') checkProfileRefs(r);
    }
  }
}

/**
 * Write the starter tree: every built-in file that does not exist yet.
 * Existing files are never overwritten. The config there is checked first:
 * a broken file is a config error and nothing is written. Returns what was
 * written and skipped.
 */
export async function initTree(): Promise<{ written: string[]; skipped: string[] }> {
  await checkConfig();
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
