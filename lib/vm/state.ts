/**
 * A VM is the set of files named after it in the runtime dir. This module
 * reads them: metadata, pidfile, liveness, and clean-up of what a dead VM
 * left behind. It never trusts a pid whose command line is not that VM's QEMU.
 */
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { RUNTIME_EXT, vmFiles, type VmFiles } from '../core/paths.ts';
import { isOurProcess, lockHeld, readPidfile } from '../core/proc.ts';
import { qemuEscape } from '../qemu/argv.ts';
import { nameProblem } from '../core/names.ts';
import { EXIT, PimError } from '../core/exit.ts';
import { writeFileAtomic } from '../core/fs.ts';

export interface VmMeta {
  name: string;
  kind: 'run' | 'kboot';
  image: string;
  pid: number | null;
  ssh_port: number | null;
  bridged: boolean;
  root: boolean; // QEMU runs as root (through sudo)
  agent: boolean; // a guest-agent channel exists
  accel: string;
  mem: string;
  cpus: number;
  snapshot: boolean;
  owner: { uid: number; user: string };
  started: string; // ISO time
}

export type VmState = 'running' | 'starting' | 'stale' | 'absent';

export interface VmInfo {
  name: string;
  state: VmState;
  pid: number | null;
  meta: VmMeta | null;
  files: VmFiles;
}

export function readMeta(files: VmFiles): VmMeta | null {
  try {
    return JSON.parse(readFileSync(files.meta, 'utf8')) as VmMeta;
  } catch {
    return null;
  }
}

/** Atomic: written to a temp file and renamed, so readers never see half a file. */
export function writeMeta(files: VmFiles, meta: VmMeta): void {
  writeFileAtomic(files.meta, JSON.stringify(meta, null, 2) + '\n', 0o600);
}

/** The marker that identifies this VM's QEMU in its command line. */
export const qemuMarker = (files: VmFiles) => qemuEscape(files.qmp);

export async function vmInfo(name: string, dir?: string): Promise<VmInfo> {
  const files = vmFiles(name, dir);
  const meta = readMeta(files);
  const pid = readPidfile(files.pid) ?? meta?.pid ?? null;
  if (pid !== null && isOurProcess(pid, qemuMarker(files))) return { name, state: 'running', pid, meta, files };
  const present = meta !== null || existsSync(files.pid) || existsSync(files.qmp);
  if (await lockHeld(files.lock)) return { name, state: 'starting', pid: null, meta, files };
  return { name, state: present ? 'stale' : 'absent', pid: null, meta, files };
}

/** Remove what a dead VM left behind (keeps the log for a post-mortem). */
export function cleanupFiles(files: VmFiles): void {
  for (const k of ['qmp', 'ga', 'serial', 'pid', 'meta'] as const) rmSync(files[k], { force: true });
}

/** Names that have runtime state in `dir`. */
export function runtimeNames(dir: string): string[] {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  const names = new Set<string>();
  for (const f of entries) {
    for (const ext of [RUNTIME_EXT.meta, RUNTIME_EXT.pid, RUNTIME_EXT.qmp]) {
      if (f.endsWith(ext)) {
        const n = f.slice(0, -ext.length);
        if (!nameProblem(n)) names.add(n);
      }
    }
  }
  return [...names].sort();
}

/** Every VM in the runtime dir; stale ones are cleaned up as they are found. */
export async function listVms(dir: string, opts: { keepStale?: boolean } = {}): Promise<VmInfo[]> {
  const infos = await Promise.all(runtimeNames(dir).map((n) => vmInfo(n, dir)));
  const out: VmInfo[] = [];
  for (const i of infos) {
    if (i.state === 'stale' && !opts.keepStale) cleanupFiles(i.files);
    else if (i.state !== 'absent') out.push(i);
  }
  return out;
}

/** A running VM or an error that says so (exit 69); stale files are cleaned. */
export async function requireRunning(name: string, dir: string): Promise<VmInfo> {
  const info = await vmInfo(name, dir);
  if (info.state === 'running') return info;
  if (info.state === 'stale') cleanupFiles(info.files);
  if (info.state === 'starting') throw new PimError(EXIT.TEMPFAIL, `${name} is still starting; try again in a moment`);
  throw new PimError(EXIT.UNAVAILABLE, `${name} is not running; start it with pim-run ${name}`);
}

export const logTail = (file: string, n = 10): string[] => {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean).slice(-n);
  } catch {
    return [];
  }
};
