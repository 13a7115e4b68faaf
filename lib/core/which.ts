/** Finding executables: on PATH, or among well-known places. One place for every PATH lookup. */
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Is `p` an executable regular file? */
export function isExecutable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** The PATH directories, in order. */
export const pathDirs = (): string[] => (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).filter(Boolean);

/** The first `cmd` on PATH (a name with a '/' is checked as it is), or null. */
export function which(cmd: string): string | null {
  if (cmd.includes('/')) return isExecutable(cmd) ? cmd : null;
  for (const d of pathDirs()) {
    const p = join(d, cmd);
    if (isExecutable(p)) return p;
  }
  return null;
}

/** `cmd` on PATH, else the first of `places` that is executable, or null. */
export function findExecutable(cmd: string, places: readonly string[] = []): string | null {
  return which(cmd) ?? places.find(isExecutable) ?? null;
}
