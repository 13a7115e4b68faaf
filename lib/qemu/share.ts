/**
 * Host directories shared with a guest: virtiofs where virtiofsd is
 * available, 9p (QEMU's built-in virtio-9p, `-virtfs`) otherwise. 9p needs
 * nothing on the host; virtiofs needs one virtiofsd per share and guest RAM
 * in a shared memfd. Debian 12 has no Rust virtiofsd package, but its
 * qemu-system-common ships QEMU 7.2's C virtiofsd (/usr/lib/qemu/virtiofsd),
 * which needs root: tested here as root; the Rust one's arguments are untested.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { qemuOpt } from './argv.ts';
import { EXIT, PimError } from '../core/exit.ts';
import type { Share } from '../kboot/guest.ts';

export type ShareFs = '9p' | 'virtiofs';

export const VIRTIOFSD_PATHS = ['/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd', '/usr/lib/virtiofsd'];

/** virtiofsd on PATH or in the usual libexec places; null when there is none. */
export function findVirtiofsd(): string | null {
  if (process.env.PIM_VIRTIOFSD) return process.env.PIM_VIRTIOFSD;
  const dirs = (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const p of [...dirs.map((d) => join(d, 'virtiofsd')), ...VIRTIOFSD_PATHS]) {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

/** QEMU's own C virtiofsd (up to QEMU 7.2) takes `-o source=DIR`; the Rust one `--shared-dir DIR`. */
export function isLegacyVirtiofsd(bin: string): boolean {
  const { spawnSync } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 5_000 });
  return /virtiofsd version .*\(|QEMU/i.test(`${r.stdout}${r.stderr}`);
}

/** Which filesystem shares use: the flag, else virtiofs when virtiofsd exists, else 9p. */
export function chooseShareFs(requested: string | undefined): { fs: ShareFs; virtiofsd: string | null } {
  const vfsd = findVirtiofsd();
  if (requested === '9p') return { fs: '9p', virtiofsd: null };
  if (requested === 'virtiofs') {
    if (!vfsd) throw new PimError(EXIT.UNAVAILABLE, 'virtiofs needs virtiofsd, which was not found on PATH or in /usr/libexec; install it or use --fs 9p');
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
  const a = ['-object', qemuOpt('memory-backend-memfd', { id: 'pimmem', size: mem, share: true }), '-numa', 'node,memdev=pimmem'];
  shares.forEach((s, i) => {
    a.push('-chardev', qemuOpt('socket', { id: `vfs${i}`, path: s.socket }));
    a.push('-device', qemuOpt('vhost-user-fs-pci', { chardev: `vfs${i}`, tag: s.tag, 'queue-size': 1024 }));
  });
  return a;
}

/**
 * Start one virtiofsd per share (they exit when QEMU disconnects) and wait
 * for each socket to appear (watched, bounded by timeoutMs).
 */
export async function startVirtiofsd(bin: string, shares: Share[], socketBase: string, timeoutMs = 10_000): Promise<Array<Share & { socket: string; pid: number }>> {
  const { spawn } = await import('node:child_process');
  const { dirname, basename } = await import('node:path');
  const out: Array<Share & { socket: string; pid: number }> = [];
  const legacy = isLegacyVirtiofsd(bin);
  for (const [i, s] of shares.entries()) {
    const socket = `${socketBase}.vfs${i}.sock`;
    fs.rmSync(socket, { force: true });
    const args = legacy ? [`--socket-path=${socket}`, '-o', `source=${s.dir}`, '-o', 'cache=auto'] : [`--socket-path=${socket}`, `--shared-dir=${s.dir}`, '--cache=auto', '--sandbox=none'];
    const child = spawn(bin, args, { stdio: 'ignore', detached: true });
    child.unref();
    await new Promise<void>((resolve, reject) => {
      const dir = dirname(socket);
      const done = (err?: Error) => {
        w.close();
        clearTimeout(t);
        child.removeAllListeners('exit');
        if (err) reject(err);
        else resolve();
      };
      const w = fs.watch(dir, (_e, f) => {
        if (f === basename(socket) && fs.existsSync(socket)) done();
      });
      const t = setTimeout(() => done(new PimError(EXIT.TEMPFAIL, `virtiofsd did not open ${socket} within ${timeoutMs / 1000} s`)), timeoutMs);
      child.once('exit', (c) => done(new PimError(EXIT.UNAVAILABLE, `virtiofsd exited (status ${c}) sharing ${s.dir}; try --fs 9p`)));
      if (fs.existsSync(socket)) done();
    });
    out.push({ ...s, socket, pid: child.pid! });
  }
  return out;
}
