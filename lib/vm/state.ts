/**
 * A VM is the set of files named after it in the runtime dir. This module
 * reads them: metadata, pidfile, liveness, and clean-up of what a dead VM
 * left behind. It never trusts a pid whose command line is not that VM's QEMU,
 * and it opens only regular files, never blocking (a FIFO planted in the
 * runtime dir is ignored).
 */
import { closeSync, fstatSync, readSync, readdirSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { RUNTIME_EXT, type VmFiles } from '../core/paths.ts';
import { isOurProcess, readPidfile } from '../core/proc.ts';
import { lockHeld } from '../core/lock.ts';
import { qemuEscape, type PortForward } from '../qemu/argv.ts';
import { fieldHint, nameProblem } from '../core/names.ts';
import { EXIT, PimError } from '../core/exit.ts';
import { exists, openRegular, readRegular, writeFileAtomic } from '../core/fs.ts';
import { knownRef, type VmRef } from './ref.ts';

export interface VmMeta {
  name: string;
  kind: 'run' | 'kboot' | 'build';
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
  /** the disk is a throwaway overlay of `image` (pim-run --clone), which this VM does not lock */
  clone?: boolean;
  owner: { uid: number; user: string };
  started: string; // ISO time
  /** user-mode port forwards besides SSH (pim-run --forward, pim-forward); absent: none */
  forwards?: PortForward[];
  /** who logs in over SSH (pim-ssh, pim-cp): a build's ssh_user; absent: PIM_SSH_USER, else root */
  ssh_user?: string;
  /** the private key to log in with: the user's own key that a build installed; absent: PIM_SSH_KEY, else OpenSSH's defaults */
  ssh_key?: string;
}

export type VmState = 'running' | 'starting' | 'stale' | 'absent';

export interface VmInfo extends VmRef {
  state: VmState;
  pid: number | null;
  meta: VmMeta | null;
}

/** A VM whose QEMU is alive. */
export interface RunningVm extends VmInfo {
  state: 'running';
  pid: number;
}

export function readMeta(files: VmFiles): VmMeta | null {
  const text = readRegular(files.meta);
  if (text === null) return null;
  try {
    const m = JSON.parse(text) as VmMeta;
    return m && typeof m === 'object' ? m : null;
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

export async function vmInfo(ref: VmRef): Promise<VmInfo> {
  const { files } = ref;
  const meta = readMeta(files);
  const pid = readPidfile(files.pid) ?? meta?.pid ?? null;
  if (pid !== null && isOurProcess(pid, qemuMarker(files))) return { ...ref, state: 'running', pid, meta };
  const present = meta !== null || exists(files.pid) || exists(files.qmp);
  if (await lockHeld(files.lock)) return { ...ref, state: 'starting', pid: null, meta };
  return { ...ref, state: present ? 'stale' : 'absent', pid: null, meta };
}

/** Remove what a dead VM left behind (keeps the log for a post-mortem). */
export function cleanupFiles(files: VmFiles): void {
  for (const k of ['qmp', 'ga', 'serial', 'pid', 'meta', 'efivars', 'clone'] as const)
    rmSync(files[k], { force: true });
  // virtiofsd's sockets for pim-run --share: NAME.vfsN.sock
  const { dir, base } = { dir: dirname(files.qmp), base: basename(files.qmp, RUNTIME_EXT.qmp) };
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    /* no runtime dir */
  }
  for (const f of names)
    if (f.startsWith(`${base}.vfs`) && /^\.vfs\d+\.sock$/.test(f.slice(base.length)))
      rmSync(join(dir, f), { force: true });
  // directories of the VM's own (rmSync does not follow a symlink planted in their place: it removes the link)
  rmSync(files.stage, { recursive: true, force: true });
  rmSync(files.ssh, { recursive: true, force: true });
}

/** Names that have a file ending in one of `exts` in `dir` (valid names only), sorted. */
function namesWith(dir: string, exts: string[]): string[] {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  const names = new Set<string>();
  for (const f of entries) {
    for (const ext of exts) {
      if (f.endsWith(ext)) {
        const n = f.slice(0, -ext.length);
        if (!nameProblem(n)) names.add(n);
      }
    }
  }
  return [...names].sort();
}

/** Names that have runtime state in `dir`. */
export const runtimeNames = (dir: string): string[] =>
  namesWith(dir, [RUNTIME_EXT.meta, RUNTIME_EXT.pid, RUNTIME_EXT.qmp]);

/** Names whose log (NAME.log) is in `dir`: logs outlive their VMs, for a post-mortem (pim-ps --all). */
export const loggedNames = (dir: string): string[] => namesWith(dir, [RUNTIME_EXT.log]);

/** Every VM in the runtime dir; stale ones are cleaned up as they are found. */
export async function listVms(dir: string, opts: { keepStale?: boolean } = {}): Promise<VmInfo[]> {
  const infos = await Promise.all(runtimeNames(dir).map((n) => vmInfo(knownRef(n, dir))));
  const out: VmInfo[] = [];
  for (const i of infos) {
    if (i.state === 'stale' && !opts.keepStale) cleanupFiles(i.files);
    else if (i.state !== 'absent') out.push(i);
  }
  return out;
}

/** A running VM or an error that says so (exit 69); stale files are cleaned. */
export async function requireRunning(ref: VmRef): Promise<RunningVm> {
  const info = await vmInfo(ref);
  if (info.state === 'running') return info as RunningVm;
  if (info.state === 'stale') cleanupFiles(info.files);
  if (info.state === 'starting')
    throw new PimError(EXIT.TEMPFAIL, `${ref.name} is still starting; try again in a moment`);
  throw new PimError(
    EXIT.UNAVAILABLE,
    `${ref.name} is not running; see pim-ps for the VMs that are${fieldHint(ref.name)}`,
  );
}

/** The last `n` lines of a log (a regular file; at most its last 256 KiB are read). */
export function logTail(file: string, n = 10): string[] {
  const fd = openRegular(file);
  if (fd === null) return [];
  try {
    const size = fstatSync(fd).size;
    const len = Math.min(size, 256 * 1024);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    return buf.toString('utf8').split('\n').filter(Boolean).slice(-n);
  } catch {
    return [];
  } finally {
    closeSync(fd);
  }
}
