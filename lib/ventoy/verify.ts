/**
 * pim-ventoy verify: every ISO on the stick hashed again (sha256) and
 * compared with its NAME.iso.sha256 sidecar. An ISO without a sidecar is
 * reported as such (pim did not add it) but is not a failure; a mismatch is.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { readSidecar, sha256Of, SIDECAR } from './add.ts';
import type { OpenStick } from './stick.ts';

export type VerifyResult = {
  /** the ISO's path on the stick */
  name: string;
  status: 'ok' | 'mismatch' | 'no-sidecar';
  sha256: string | null;
  expected: string | null;
};

/** The .iso files on the mounted stick, outside /ventoy. */
export function isoFilesOn(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, rel: string, depth: number) => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name));
    } catch {
      return;
    }
    for (const e of ents) {
      const r = `${rel}/${e.name}`;
      if (e.isDirectory()) {
        if (depth < 8 && r.toLowerCase() !== '/ventoy' && !e.name.startsWith('.'))
          walk(join(dir, e.name), r, depth + 1);
      } else if (e.isFile() && /\.iso$/i.test(e.name)) out.push(r);
    }
  };
  walk(root, '', 0);
  return out;
}

export async function* verifyStick(s: OpenStick, signal?: AbortSignal): AsyncGenerator<VerifyResult> {
  for (const rel of isoFilesOn(s.root)) {
    const abs = join(s.root, rel);
    const expected = readSidecar(abs + SIDECAR);
    if (!expected) {
      yield { name: rel, status: 'no-sidecar', sha256: null, expected: null };
      continue;
    }
    const sha256 = await sha256Of(abs, signal);
    yield { name: rel, status: sha256 === expected ? 'ok' : 'mismatch', sha256, expected };
  }
}
