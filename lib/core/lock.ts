/**
 * Locks that die with their holder, so they are never stale.
 *
 * On Linux a lock is an abstract unix socket named after the lock file's
 * path (no file at all): binding it is atomic, and the kernel frees it when
 * the process exits, however it exits. Elsewhere it is a pidfile: the pid is
 * written to a private temp file first and then link()ed into place, so the
 * lock file never exists without its pid (a reader in between would see an
 * empty file, take the holder for dead and take the lock too). A lock whose
 * holder is dead is broken under a second lock (`FILE.break`), so two
 * processes that both find it stale cannot both take it.
 */
import { closeSync, linkSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { EXIT, PimError } from './exit.ts';
import { isAlive, readPidfile } from './proc.ts';

// node:net costs milliseconds to load: only taking a lock needs it.
const net = () => import('node:net');

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

const busy = (what: string, holder?: number) =>
  new PimError(
    EXIT.TEMPFAIL,
    `${what} is busy: ${holder ? `pid ${holder}` : 'another pim command'} holds it; try again when it is done`,
  );

/** Take the lock for `file` or fail at once with exit 75 (`what` names it in the message). */
export async function acquireLock(file: string, what: string): Promise<Lock> {
  if (process.platform === 'linux') return abstractLock(file, what);
  return pidfileLock(file, what);
}

async function abstractLock(file: string, what: string): Promise<Lock> {
  const server = (await net()).createServer((c) => c.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(e.code === 'EADDRINUSE' ? busy(what) : e));
    server.listen('\0' + lockName(file), () => resolve());
  });
  server.unref();
  return { release: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** Create `file` holding our pid, atomically: a temp file, then link(). False when it exists. */
function linkPidfile(file: string): boolean {
  const tmp = `${file}.${process.pid}.tmp`;
  rmSync(tmp, { force: true });
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, `${process.pid}\n`);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw new PimError(EXIT.CANTCREAT, `cannot create lock ${file}: ${(e as Error).message}`);
  } finally {
    rmSync(tmp, { force: true });
  }
}

export async function pidfileLock(file: string, what: string): Promise<Lock> {
  const mine = (): Lock => ({
    release: async () => {
      if (readPidfile(file) === process.pid) rmSync(file, { force: true });
    },
  });
  for (let attempt = 0; attempt < 3; attempt++) {
    if (linkPidfile(file)) return mine();
    const holder = readPidfile(file);
    if (holder !== null && isAlive(holder)) throw busy(what, holder);
    // stale: break it under FILE.break, re-checking that it is still the same stale lock
    const brk = `${file}.break`;
    if (!linkPidfile(brk)) {
      const breaker = readPidfile(brk);
      if (breaker !== null && isAlive(breaker)) throw busy(what, breaker);
      rmSync(brk, { force: true }); // its breaker died: try again
      continue;
    }
    try {
      let now: string | null = null;
      try {
        now = readFileSync(file, 'utf8');
      } catch {
        /* gone meanwhile */
      }
      const pid = now === null ? null : Number.parseInt(now, 10);
      if (pid === holder || (pid !== null && !isAlive(pid))) rmSync(file, { force: true });
      if (linkPidfile(file)) return mine();
    } finally {
      rmSync(brk, { force: true });
    }
  }
  throw busy(what);
}

/**
 * Is the lock held right now? (Does not take it.) On Linux the kernel lists
 * abstract sockets in /proc/net/unix as "@name": one read, no connection
 * (pim-ps asks this for every entry that has no live QEMU).
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
