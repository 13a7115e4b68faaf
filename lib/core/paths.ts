/**
 * Where pim keeps things. Config, data and cache follow XDG; runtime state
 * lives in $XDG_RUNTIME_DIR/pim (or a private /tmp/pim-$UID), one file per
 * concern, each name a constant below.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { chmodSync, lstatSync, mkdirSync, type Stats } from 'node:fs';
import { EXIT, PimError } from './exit.ts';

const home = () => process.env.HOME || homedir();

export const configDir = () => join(process.env.XDG_CONFIG_HOME || join(home(), '.config'), 'pim');
export const dataDir = () => join(process.env.XDG_DATA_HOME || join(home(), '.local', 'share'), 'pim');
export const imagesDir = () => join(dataDir(), 'images');
export const cacheDir = () => join(process.env.XDG_CACHE_HOME || join(home(), '.cache'), 'pim');
/** pim-build's store of finished, read-only builds: one directory per build */
export const buildsDir = () => join(dataDir(), 'builds');
/** logs that outlive what they log (pim-build's build logs) */
export const stateDir = () => join(process.env.XDG_STATE_HOME || join(home(), '.local', 'state'), 'pim');

/**
 * File names in the image store (imagesDir), the build registry (buildsDir,
 * one directory per build) and what pim-deploy keeps: one constant each, as
 * RUNTIME_EXT below is for the runtime dir.
 */
export const STORE_FILES = {
  /** a build's record, in its directory */
  buildRecord: 'build.json',
  /** a build's log, in its directory */
  buildLog: 'build.log',
  /** UEFI vars that belong to a disk: NAME.efivars.fd beside NAME.qcow2 (a libvirt volume's: VOLUME.efivars.fd) */
  efivars: '.efivars.fd',
  /** a store image's vars from before it was replaced (pim-build's refresh keeps them once) */
  prevEfivars: '.prev.efivars.fd',
  /** a libvirt domain's definition from before pim-deploy upgraded it */
  prevXml: '.prev.xml',
} as const;

/** The UEFI vars file of `base` (a disk's name or path, a volume): BASE.efivars.fd. */
export const efivarsOf = (base: string) => base + STORE_FILES.efivars;

/** The runtime directory path (not created). */
export function runtimeDirPath(): string {
  if (process.env.XDG_RUNTIME_DIR) return join(process.env.XDG_RUNTIME_DIR, 'pim');
  const uid = process.getuid?.() ?? 0;
  return `/tmp/pim-${uid}`;
}

/** File names in the runtime dir: one constant per kind of state. */
export const RUNTIME_EXT = {
  qmp: '.qmp',
  ga: '.ga',
  serial: '.serial',
  pid: '.pid',
  log: '.log',
  meta: '.json',
  lock: '.lock',
  /** a copy of the image's UEFI vars, for a --snapshot run (the image's own stay untouched) */
  efivars: STORE_FILES.efivars,
  /** a --clone run's disk: a throwaway overlay of the image, removed when the VM is gone */
  clone: '.clone.qcow2',
  /** a directory for what a start needs only until QEMU has it (kboot's initrd and FIFO) */
  stage: '.stage',
  /** a private directory for pim-ssh and pim-cp: the ssh config, the pinned known_hosts, the control sockets (lib/guest/reach.ts) */
  ssh: '.ssh',
} as const;

export type VmFiles = { -readonly [K in keyof typeof RUNTIME_EXT]: string };

/** The runtime file names of VM `name` in `dir`. The name must be checked already (see lib/vm/ref.ts). */
export function vmFiles(name: string, dir: string): VmFiles {
  const out = {} as VmFiles;
  for (const [k, ext] of Object.entries(RUNTIME_EXT)) out[k as keyof VmFiles] = join(dir, name + ext);
  return out;
}

/** sun_path holds 108 bytes on Linux, 104 on macOS, including the NUL. */
export const SOCKET_PATH_MAX = process.platform === 'darwin' ? 104 : 108;

export function checkSocketPath(p: string): string {
  if (Buffer.byteLength(p) >= SOCKET_PATH_MAX) {
    throw new PimError(
      EXIT.CANTCREAT,
      `socket path is ${Buffer.byteLength(p)} bytes, over the ${SOCKET_PATH_MAX - 1}-byte limit: ${p}; use a shorter VM name or a shorter XDG_RUNTIME_DIR`,
    );
  }
  return p;
}

/**
 * Make sure the runtime dir exists, is a real directory, belongs to us and is
 * private (0700). Returns its path. Refuses a dir owned by another user.
 */
export function ensureRuntimeDir(): string {
  const dir = runtimeDirPath();
  const uid = process.getuid?.();
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') {
      throw new PimError(
        EXIT.CANTCREAT,
        `cannot create runtime dir ${dir}: its parent does not exist; check XDG_RUNTIME_DIR`,
      );
    }
    if (err.code !== 'EEXIST') throw new PimError(EXIT.CANTCREAT, `cannot create runtime dir ${dir}: ${err.message}`);
  }
  checkRuntimeDir(dir, lstatSync(dir), uid);
  return dir;
}

/**
 * A runtime dir is trusted only when it is a real directory of ours that no
 * one else could write to. One that was group- or world-writable may hold
 * files (symlinks to a victim's files) that others planted: refused, never
 * "fixed" by a chmod that would keep what they put there. Group/other read
 * or search bits alone are tightened to 0700.
 */
function checkRuntimeDir(dir: string, st: Stats, uid: number | undefined): void {
  const problem = runtimeDirProblem(dir, st, uid);
  if (problem) throw problem;
  if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
}

/** Why the runtime dir `dir` (its lstat `st`) cannot be trusted, or null: read-only, for pim doctor too. */
export function runtimeDirProblem(dir: string, st: Stats, uid: number | undefined): PimError | null {
  if (!st.isDirectory())
    return new PimError(EXIT.CANTCREAT, `runtime dir ${dir} is not a directory; remove it and try again`);
  if (uid !== undefined && st.uid !== uid) {
    return new PimError(
      EXIT.NOPERM,
      `runtime dir ${dir} is owned by uid ${st.uid}, not you (uid ${uid}); remove it or set XDG_RUNTIME_DIR`,
    );
  }
  if ((st.mode & 0o022) !== 0) {
    return new PimError(
      EXIT.NOPERM,
      `runtime dir ${dir} is writable by others (mode ${(st.mode & 0o777).toString(8)}), so its files cannot be trusted; stop its VMs, remove it (rm -r ${dir}) and run again`,
    );
  }
  return null;
}

/** The runtime dir if it exists and is ours; null if there is none yet (nothing runs). */
export function existingRuntimeDir(): string | null {
  const dir = runtimeDirPath();
  let st: Stats;
  try {
    st = lstatSync(dir);
  } catch {
    return null;
  }
  checkRuntimeDir(dir, st, process.getuid?.());
  return dir;
}
