/**
 * Processes. A pid is alive when signal 0 succeeds or fails with
 * EPERM (alive, owned by root). A pid is only trusted as a VM's QEMU when its
 * command line names that VM's QMP socket: a recycled pid is never signalled.
 */
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { readRegular } from './fs.ts';
import { EXIT, PimError } from './exit.ts';
import { prog } from './prog.ts';

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

/** The pid in a pidfile: a regular file only (never a FIFO or a symlink someone planted), or null. */
export function readPidfile(file: string): number | null {
  const text = readRegular(file, 64);
  if (text === null) return null;
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
    const out = execFileSync('ps', ['-o', 'command=', '-p', String(pid)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
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
 * Wait until `pid` exits. There is no portable exit notification for a
 * process that is not our child, so this polls signal 0: callers use it only
 * where no protocol can say (no QMP connection), or for the moment between a
 * QMP connection closing and the process being gone.
 */
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
  // a child that has exited already emits no more 'exit': answer at once
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  if (child.signalCode !== null) return Promise.resolve(exitStatusOf(child.signalCode));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, sig) => resolve(code ?? exitStatusOf(sig)));
  });
}

/** The shell's status for a process killed by `sig`: 128 + its number (SIGINT: 130). */
export function exitStatusOf(sig: NodeJS.Signals | null | undefined): number {
  const n = sig ? (constants.signals as Record<string, number>)[sig] : undefined;
  return 128 + (n ?? 0);
}

/**
 * Become the program `file` with `args` (argv[0] `argv0`): execve where Node
 * has it (22.15+), so its signals, terminal and exit status are its own with
 * nothing in between; elsewhere run it as a child with stdio inherited, hand
 * on every signal we get, and return its status (128+N when signal N ended
 * it). `what` names it in an error (the umbrella's pim-CMD.cjs runs as node).
 */
export async function becomeOrRun(
  file: string,
  args: string[],
  o: { argv0?: string; what?: string } = {},
): Promise<number> {
  const argv0 = o.argv0 ?? file;
  const what = o.what ?? file;
  const execve = (process as unknown as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never })
    .execve;
  if (typeof execve === 'function') {
    try {
      execve(file, [argv0, ...args], process.env);
    } catch (e) {
      throw new PimError(EXIT.UNAVAILABLE, `cannot run ${what}: ${(e as Error).message}`);
    }
  }
  const { spawn } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  return new Promise<number>((resolve) => {
    const child = spawn(file, args, { stdio: 'inherit', argv0 });
    const forward = (sig: NodeJS.Signals) => {
      try {
        child.kill(sig);
      } catch {
        /* gone */
      }
    };
    const sigs = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const;
    for (const s of sigs) process.on(s, forward);
    child.once('error', (e) => {
      process.stderr.write(`${prog()}: cannot run ${what}: ${e.message}\n`);
      resolve(EXIT.UNAVAILABLE);
    });
    child.once('exit', (code, sig) => {
      for (const s of sigs) process.off(s, forward);
      resolve(code ?? exitStatusOf(sig));
    });
  });
}
