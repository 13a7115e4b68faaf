/**
 * Host directories shared with a guest: virtiofs where virtiofsd is
 * available, 9p (QEMU's built-in virtio-9p, `-virtfs`) otherwise. 9p needs
 * nothing on the host; virtiofs needs one virtiofsd per share and guest RAM
 * in a shared memfd. Debian 12 has no Rust virtiofsd package, but its
 * qemu-system-common ships QEMU 7.2's C virtiofsd (/usr/lib/qemu/virtiofsd),
 * which needs root: tested here as root; the Rust one's arguments are untested.
 */
import * as fs from 'node:fs';
import { qemuOpt } from './argv.ts';
import { EXIT, PimError } from '../core/exit.ts';
import { findExecutable } from '../core/which.ts';
import { checkAborted } from '../core/signals.ts';
import { run } from '../core/run.ts';

export type ShareFs = '9p' | 'virtiofs';

/** A host directory shared with a guest, and the tag the guest mounts it by. */
export interface Share {
  dir: string;
  tag: string;
}

/**
 * A --share argument: DIR[:TAG]. The tag defaults to the directory's base
 * name, cleaned, made unique among `used` (to which it is added). A missing
 * directory is exit 66, a bad or repeated tag 64.
 */
export function parseShare(spec: string, used: Set<string>): Share {
  const { resolve, basename } = process.getBuiltinModule('node:path') as typeof import('node:path');
  let dir = spec;
  let tag: string | undefined;
  const colon = spec.lastIndexOf(':');
  if (colon > 0 && /^[A-Za-z0-9_.-]+$/.test(spec.slice(colon + 1))) {
    dir = spec.slice(0, colon);
    tag = spec.slice(colon + 1);
  }
  dir = resolve(dir);
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new PimError(EXIT.NOINPUT, `share ${dir} does not exist`);
  }
  if (!st.isDirectory()) throw new PimError(EXIT.NOINPUT, `share ${dir} is not a directory`);
  if (!tag) {
    const base =
      basename(dir)
        .replace(/[^A-Za-z0-9_.-]/g, '_')
        .slice(0, 31) || 'root';
    tag = base;
    for (let i = 2; used.has(tag); i++) tag = `${base}${i}`;
  }
  if (tag.length > 31) throw new PimError(EXIT.USAGE, `share tag ${tag} is longer than 31 characters`);
  if (used.has(tag))
    throw new PimError(EXIT.USAGE, `share tag ${tag} is used twice; give each --share its own DIR:TAG`);
  used.add(tag);
  return { dir, tag };
}

export const VIRTIOFSD_PATHS = ['/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd', '/usr/lib/virtiofsd'];

/** virtiofsd: PIM_VIRTIOFSD, else on PATH, else in the usual libexec places; null when there is none. */
export function findVirtiofsd(): string | null {
  if (process.env.PIM_VIRTIOFSD) return process.env.PIM_VIRTIOFSD;
  return findExecutable('virtiofsd', VIRTIOFSD_PATHS);
}

/** QEMU's own C virtiofsd (up to QEMU 7.2) takes `-o source=DIR`; the Rust one `--shared-dir DIR`. */
export async function isLegacyVirtiofsd(bin: string): Promise<boolean> {
  const r = await run(bin, ['--version'], { timeoutMs: 5_000 });
  return /virtiofsd version .*\(|QEMU/i.test(`${r.stdout}${r.stderr}`);
}

/** Which filesystem shares use: the flag, else virtiofs when virtiofsd exists, else 9p. */
export function chooseShareFs(requested: string | undefined): { fs: ShareFs; virtiofsd: string | null } {
  const vfsd = findVirtiofsd();
  if (requested === '9p') return { fs: '9p', virtiofsd: null };
  if (requested === 'virtiofs') {
    if (!vfsd)
      throw new PimError(
        EXIT.UNAVAILABLE,
        'virtiofs needs virtiofsd, which was not found on PATH or in /usr/libexec; install it or use --fs 9p',
      );
    return { fs: 'virtiofs', virtiofsd: vfsd };
  }
  return vfsd ? { fs: 'virtiofs', virtiofsd: vfsd } : { fs: '9p', virtiofsd: null };
}

/** QEMU arguments for 9p shares (virtio-9p-pci through -virtfs). Paths are comma-escaped by qemuOpt. */
export function ninepArgs(shares: Share[]): string[] {
  const a: string[] = [];
  shares.forEach((s, i) => {
    a.push('-virtfs', qemuOpt('local', { path: s.dir, mount_tag: s.tag, security_model: 'none', id: `fs${i}` }));
  });
  return a;
}

/** QEMU arguments for virtiofs shares: one vhost-user-fs device per virtiofsd socket, RAM in a shared memfd. */
export function virtiofsArgs(shares: Array<Share & { socket: string }>, mem: string): string[] {
  if (!shares.length) return [];
  const a = [
    '-object',
    qemuOpt('memory-backend-memfd', { id: 'pimmem', size: mem, share: true }),
    '-numa',
    'node,memdev=pimmem',
  ];
  shares.forEach((s, i) => {
    a.push('-chardev', qemuOpt('socket', { id: `vfs${i}`, path: s.socket }));
    a.push('-device', qemuOpt('vhost-user-fs-pci', { chardev: `vfs${i}`, tag: s.tag, 'queue-size': 1024 }));
  });
  return a;
}

/** Running virtiofsds, one per share, with the socket QEMU connects to. */
export interface Virtiofsds {
  shares: Array<Share & { socket: string; pid: number }>;
  /** stop them all (each one's process group): for a start that is undone before QEMU has connected */
  stop(): void;
}

/**
 * Start one virtiofsd per share (each exits when QEMU disconnects) and wait
 * for each socket to appear (watched, bounded by timeoutMs). When one fails,
 * or `signal` aborts (Ctrl-C), the ones started are stopped and the error (or
 * the signal's Interrupted) is thrown: no virtiofsd is left behind.
 *
 * virtiofsd is started with node:child_process, not lib/core/run.ts: it is
 * a daemon that outlives this process (a headless VM keeps its shares), so
 * it is detached in its own process group with no stdio to collect.
 */
export async function startVirtiofsd(
  bin: string,
  shares: Share[],
  socketBase: string,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<Virtiofsds> {
  const { spawn } = await import('node:child_process');
  const started: Array<Share & { socket: string; pid: number }> = [];
  const stop = () => {
    for (const s of started) {
      try {
        process.kill(-s.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
  };
  try {
    checkAborted(opts.signal);
    const legacy = await isLegacyVirtiofsd(bin);
    for (const [i, s] of shares.entries()) {
      checkAborted(opts.signal);
      const socket = `${socketBase}.vfs${i}.sock`;
      fs.rmSync(socket, { force: true });
      const args = legacy
        ? [`--socket-path=${socket}`, '-o', `source=${s.dir}`, '-o', 'cache=auto']
        : [`--socket-path=${socket}`, `--shared-dir=${s.dir}`, '--cache=auto', '--sandbox=none'];
      const child = spawn(bin, args, { stdio: 'ignore', detached: true });
      child.unref();
      child.once('error', () => {}); // a missing binary ends as an exit below
      if (child.pid) started.push({ ...s, socket, pid: child.pid });
      await socketUp(child, socket, s.dir, opts.timeoutMs ?? 10_000, opts.signal);
    }
  } catch (e) {
    stop();
    throw e;
  }
  return { shares: started, stop };
}

/** Until virtiofsd's socket appears (watched), bounded; its exit or the signal end the wait with an error. */
async function socketUp(
  child: import('node:child_process').ChildProcess,
  socket: string,
  dir: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<void> {
  const { dirname, basename } = await import('node:path');
  return new Promise<void>((resolve, reject) => {
    const done = (err?: Error) => {
      w.close();
      clearTimeout(t);
      child.removeListener('exit', onExit);
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const onExit = (c: number | null) =>
      done(new PimError(EXIT.UNAVAILABLE, `virtiofsd exited (status ${c}) sharing ${dir}; try --fs 9p`));
    const onAbort = () => done(signal!.reason as Error);
    const w = fs.watch(dirname(socket), (_e, f) => {
      if (f === basename(socket) && fs.existsSync(socket)) done();
    });
    const t = setTimeout(
      () => done(new PimError(EXIT.TEMPFAIL, `virtiofsd did not open ${socket} within ${timeoutMs / 1000} s`)),
      timeoutMs,
    );
    child.once('exit', onExit);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (child.exitCode !== null || child.signalCode !== null) onExit(child.exitCode);
    else if (signal?.aborted) onAbort();
    else if (fs.existsSync(socket)) done();
  });
}
