/**
 * The one way to run a program and collect its output and status: execa,
 * loaded only when a command runs something (it costs start-up time).
 * Arguments are always an argv array; nothing goes through a shell.
 *
 * QEMU itself is not started here: it needs a detached child whose stdio are
 * file descriptors of the VM's log (see lib/vm/launch.ts), and the umbrella
 * `pim` needs a child that shares its terminal and signals (cmds/pim.ts);
 * both use node:child_process directly and say why.
 */
import { EXIT, PimError } from './exit.ts';
import { exitStatusOf } from './proc.ts';

export interface RunOpts {
  /** bytes or text for the child's stdin (default: no stdin) */
  input?: string | Uint8Array;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** kill the child after this long (SIGTERM); the result says timedOut */
  timeoutMs?: number;
  /** 'inherit' shares this process's terminal (sudo asking for a password) */
  stdio?: 'pipe' | 'inherit';
  /** stdout as bytes rather than text */
  binary?: boolean;
  signal?: AbortSignal;
}

export interface RunResult {
  /** the exit status; 128+N when killed by signal N */
  code: number;
  signal: string | null;
  stdout: string;
  stdoutBytes: Uint8Array;
  stderr: string;
  timedOut: boolean;
}

/** After the time limit's SIGTERM, how long a process group has before SIGKILL; then how long its pipes may stay open. */
const KILL_GRACE_MS = 2_000;
const PIPE_GRACE_MS = 1_000;

/**
 * The process groups of running children, killed should pim exit or be stopped
 * by a signal it does not trap meanwhile (what execa's cleanup does for a child
 * that is not detached).
 */
const groups = new Set<number>();
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
function killGroups(): void {
  for (const g of groups) {
    try {
      process.kill(-g, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}
function onSignal(sig: NodeJS.Signals): void {
  killGroups();
  // nobody else traps it: the signal's default action, as without pim's handler
  if (process.listenerCount(sig) === 1) {
    for (const s of SIGNALS) process.off(s, onSignal);
    process.kill(process.pid, sig);
  }
}
/** Kill the process group `pid` should pim be stopped by a signal (until unwatchGroup). */
export function watchGroup(pid: number): void {
  if (groups.size === 0) {
    for (const s of SIGNALS) process.on(s, onSignal);
    process.on('exit', killGroups);
  }
  groups.add(pid);
}
export function unwatchGroup(pid: number): void {
  groups.delete(pid);
  if (groups.size === 0) {
    for (const s of SIGNALS) process.off(s, onSignal);
    process.off('exit', killGroups);
  }
}

/**
 * Run `cmd args`; never throws for a non-zero status. A missing program is exit 69 with `hint`.
 *
 * A child with a time limit and piped output runs in its own process group
 * (and session): at the limit, or an abort, the whole group gets SIGTERM, then
 * SIGKILL, so a grandchild that holds the pipe open (`sleep 1000 &` in a hook)
 * goes too, and pim stops waiting on the pipe shortly after even if something
 * escaped the group. Should pim exit or be stopped by a signal meanwhile, the
 * group is killed first. Other children stay in pim's group and keep the
 * terminal (sudo or ssh asking for a password on /dev/tty); an abort kills
 * them (execa), and pim stops waiting on their pipes a grace period later.
 */
export async function run(
  cmd: string,
  args: readonly string[],
  opts: RunOpts & { hint?: string } = {},
): Promise<RunResult> {
  const { execa } = await import('execa');
  const grouped = opts.stdio !== 'inherit' && opts.timeoutMs !== undefined;
  const sub = execa(cmd, args, {
    reject: false,
    input: opts.input,
    stdin: opts.input === undefined ? (opts.stdio === 'inherit' ? 'inherit' : 'ignore') : 'pipe',
    stdout: opts.stdio === 'inherit' ? 'inherit' : 'pipe',
    stderr: opts.stdio === 'inherit' ? 'inherit' : 'pipe',
    encoding: opts.binary ? 'buffer' : 'utf8',
    stripFinalNewline: false,
    cwd: opts.cwd,
    env: opts.env,
    extendEnv: true,
    detached: grouped,
    // a child in pim's group: execa's own limit and cancel
    timeout: grouped ? undefined : opts.timeoutMs,
    cancelSignal: grouped ? undefined : opts.signal,
    windowsHide: true,
  });
  const stop = new Stopper(sub.pid);
  const cut = grouped ? stop.groupCut(opts) : opts.stdio !== 'inherit' ? stop.abortCut(opts.signal) : null;
  if (grouped && sub.pid !== undefined) watchGroup(sub.pid);
  let r: Awaited<typeof sub>;
  try {
    const first = cut ? await Promise.race([sub, cut.then(() => null)]) : await sub;
    if (first === null) {
      // the group was killed but something still holds the pipes: stop reading them
      sub.stdout?.destroy();
      sub.stderr?.destroy();
      sub.stdin?.destroy();
      r =
        (await Promise.race([sub, stop.after(PIPE_GRACE_MS)])) ??
        ({
          exitCode: undefined,
          signal: 'SIGKILL',
          stdout: '',
          stderr: '',
          timedOut: stop.timedOut,
        } as unknown as Awaited<typeof sub>);
    } else r = first;
  } finally {
    stop.clear();
    if (grouped && sub.pid !== undefined) unwatchGroup(sub.pid);
  }
  const code = (r as { code?: string }).code;
  if (code === 'ENOENT' && r.exitCode === undefined) {
    throw new PimError(EXIT.UNAVAILABLE, `cannot run ${cmd}: not found${opts.hint ? `; ${opts.hint}` : ''}`);
  }
  const out = r.stdout as unknown;
  const bytes = out instanceof Uint8Array ? out : new TextEncoder().encode(typeof out === 'string' ? out : '');
  return {
    code:
      r.exitCode ??
      exitStatusOf(
        (r.signal ?? (stop.stopped || opts.signal?.aborted ? 'SIGTERM' : undefined)) as NodeJS.Signals | undefined,
      ),
    signal: r.signal ?? null,
    stdout: typeof out === 'string' ? out : Buffer.from(bytes).toString('utf8'),
    stdoutBytes: bytes,
    stderr: typeof r.stderr === 'string' ? r.stderr : '',
    timedOut: stop.timedOut || Boolean(r.timedOut),
  };
}

/** A child's time limit and abort: its process group killed (SIGTERM, then SIGKILL), and when to stop waiting on its pipes. */
class Stopper {
  timedOut = false;
  stopped: Promise<void> | null = null;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly pid: number | undefined;
  constructor(pid: number | undefined) {
    this.pid = pid;
  }

  private killGroup(sig: NodeJS.Signals): void {
    if (this.pid === undefined) return;
    try {
      process.kill(-this.pid, sig);
    } catch {
      /* the group is gone */
    }
  }

  /** Kill the group: SIGTERM, SIGKILL after a grace; resolves when pim should stop waiting on the pipes. */
  stop(): Promise<void> {
    this.stopped ??= new Promise<void>((resolve) => {
      this.killGroup('SIGTERM');
      this.timers.push(
        setTimeout(() => {
          this.killGroup('SIGKILL');
          this.timers.push(setTimeout(resolve, PIPE_GRACE_MS));
        }, KILL_GRACE_MS),
      );
    });
    return this.stopped;
  }

  /** A grouped child: at the limit or an abort the group is stopped; resolves when that is done. */
  groupCut(opts: RunOpts): Promise<void> {
    return new Promise<void>((resolve) => {
      if (opts.timeoutMs !== undefined) {
        this.timers.push(
          setTimeout(() => {
            this.timedOut = true;
            void this.stop().then(resolve);
          }, opts.timeoutMs),
        );
      }
      const onAbort = () => void this.stop().then(resolve);
      if (opts.signal?.aborted) onAbort();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** A child in pim's group: execa kills it on the abort, but a grandchild may still hold the pipe. */
  abortCut(signal: AbortSignal | undefined): Promise<void> | null {
    if (!signal) return null;
    return new Promise<void>((resolve) => {
      const onAbort = () => this.timers.push(setTimeout(resolve, KILL_GRACE_MS + PIPE_GRACE_MS));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** null after `ms` */
  after(ms: number): Promise<null> {
    return new Promise<null>((res) => this.timers.push(setTimeout(() => res(null), ms)));
  }

  clear(): void {
    for (const t of this.timers) clearTimeout(t);
  }
}

/**
 * With a terminal, let sudo ask for a password once (`sudo -v`), so that the
 * commands that need root then run with `sudo -n`; once per process. Without
 * a terminal nothing is asked. A refusal is 77 with `refused` as its message.
 */
export async function sudoValidate(refused: string): Promise<void> {
  if (sudoValidated || !process.stdin.isTTY) return;
  const r = await run('sudo', ['-v'], { stdio: 'inherit', hint: 'install sudo' });
  if (r.code !== 0) throw new PimError(EXIT.NOPERM, refused);
  sudoValidated = true;
}
let sudoValidated = false;

/**
 * Run and require status 0: otherwise a PimError (`code`, default 70) whose
 * message is `what` and the last line of the child's stderr.
 */
export async function runOk(
  cmd: string,
  args: readonly string[],
  opts: RunOpts & { what?: string; hint?: string; code?: PimError['code'] } = {},
): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    const last =
      r.stderr.trim().split('\n').filter(Boolean).pop() ?? (r.timedOut ? 'timed out' : `exit status ${r.code}`);
    throw new PimError(opts.code ?? EXIT.SOFTWARE, `${opts.what ?? `${cmd} failed`}: ${last}`);
  }
  return r;
}
