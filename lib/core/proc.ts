/**
 * Processes and locks. A pid is alive when signal 0 succeeds or fails with
 * EPERM (alive, owned by root). A pid is only trusted as a VM's QEMU when its
 * command line names that VM's QMP socket: a recycled pid is never signalled.
 */
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { EXIT, PimError } from './exit.ts';

// node:net and node:crypto cost milliseconds to load: only the lock needs them.
const net = () => import('node:net');

export function isAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return !isZombie(pid);
}

/** A zombie has exited but is not reaped yet (some containers' pid 1 never reaps). */
function isZombie(pid: number): boolean {
  if (process.platform !== 'linux') return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  } catch {
    return false;
  }
}

export function readPidfile(file: string): number | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  const pid = Number.parseInt(text.trim(), 10);
  return Number.isInteger(pid) && pid > 0 ? pid : null;
}

/** The process's argv, or null when it cannot be read. */
export function processArgv(pid: number): string[] | null {
  if (process.platform === 'linux') {
    try {
      const raw = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
      return raw.split('\0').filter((s, i, a) => s !== '' || i < a.length - 1);
    } catch {
      return null;
    }
  }
  try {
    // macOS and others: no /proc. `ps` is slower but available everywhere.
    const { execFileSync } = require_cp();
    const out = execFileSync('ps', ['-o', 'command=', '-p', String(pid)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return out.trim() ? [out.trim()] : null;
  } catch {
    return null;
  }
}

function require_cp(): typeof import('node:child_process') {
  return process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
}

/** Is `pid` a live process whose command line mentions `marker` (e.g. its QMP socket path)? */
export function isOurProcess(pid: number, marker: string): boolean {
  if (!isAlive(pid)) return false;
  const argv = processArgv(pid);
  if (!argv) return false;
  return argv.some((a) => a.includes(marker));
}

/**
 * A lock that dies with its holder, so it is never stale. On Linux it is an
 * abstract unix socket (no file at all); elsewhere an O_EXCL file holding the
 * holder's pid, taken over when that pid is dead.
 */
export interface Lock {
  /** resolves once the lock is free for others */
  release(): Promise<void>;
}

/** FNV-1a, 64 bits as hex: a stable short name for a lock file path (no node:crypto to load). */
function fnv64(text: string): string {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(text)) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return h.toString(16).padStart(16, '0');
}

/** The lock's abstract socket name, without the leading NUL. */
export const lockName = (file: string) => `pim-lock-${fnv64(file)}`;

export async function acquireLock(file: string, what: string): Promise<Lock> {
  if (process.platform === 'linux') {
    const server = (await net()).createServer((c) => c.destroy());
    const addr = '\0' + lockName(file);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'EADDRINUSE') reject(new PimError(EXIT.TEMPFAIL, `${what} is busy: another pim command holds it; try again when it is done`));
        else reject(e);
      });
      server.listen(addr, () => resolve());
    });
    server.unref();
    return { release: () => new Promise<void>((resolve) => server.close(() => resolve())) };
  }
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(file, 'wx', 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return { release: async () => rmSync(file, { force: true }) };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const holder = readPidfile(file);
      if (holder && isAlive(holder)) throw new PimError(EXIT.TEMPFAIL, `${what} is busy: pid ${holder} holds it; try again when it is done`);
      rmSync(file, { force: true });
    }
  }
  throw new PimError(EXIT.TEMPFAIL, `${what} is busy; try again`);
}

/**
 * Is the lock held right now? (Does not take it.) On Linux the kernel lists
 * abstract sockets in /proc/net/unix as "@name": one read, no
 * connection (pim-ps asks this for every entry that has no live QEMU).
 */
export async function lockHeld(file: string): Promise<boolean> {
  if (process.platform === 'linux') {
    const name = lockName(file);
    try {
      const table = readFileSync('/proc/net/unix', 'latin1');
      // libuv binds the whole sun_path, so the name is listed padded with NULs, shown as '@'
      return table.includes(` @${name}\n`) || table.includes(` @${name}@`);
    } catch {
      const { createConnection } = await net();
      return new Promise((resolve) => {
        const s = createConnection('\0' + name);
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      });
    }
  }
  const holder = readPidfile(file);
  return holder !== null && isAlive(holder);
}

/** Wait until `pid` exits. There is no portable exit notification for a non-child, so this polls signal 0. */
export async function waitExit(pid: number, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() >= end) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
  return true;
}

/** Wait for a child process to exit; resolves with its status (128+signal when killed). */
export function childExit(child: import('node:child_process').ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, sig) => resolve(code ?? 128 + (sig ? (({ SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 }) as Record<string, number>)[sig] ?? 0 : 0)));
  });
}
