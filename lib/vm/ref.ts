/**
 * One reference to a VM, made once: its name (checked here, exit 64 for a bad
 * one, nothing created), the runtime dir and the names of its files. Every
 * layer below the commands takes a VmRef, so a name is checked once and its
 * file names are built once.
 */
import { checkName } from '../core/names.ts';
import { ensureRuntimeDir, vmFiles, type VmFiles } from '../core/paths.ts';

export interface VmRef {
  readonly name: string;
  /** the runtime dir that holds its files */
  readonly dir: string;
  readonly files: VmFiles;
}

/** A reference to VM `name` in `dir` (default: the runtime dir, created private if missing). */
export function vmRef(name: string, dir?: string): VmRef {
  checkName(name);
  const d = dir ?? ensureRuntimeDir();
  return { name, dir: d, files: vmFiles(name, d) };
}

/** A reference for a name already known to be good (found in the runtime dir). */
export function knownRef(name: string, dir: string): VmRef {
  return { name, dir, files: vmFiles(name, dir) };
}
