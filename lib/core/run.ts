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

/** Run `cmd args`; never throws for a non-zero status. A missing program is exit 69 with `hint`. */
export async function run(cmd: string, args: readonly string[], opts: RunOpts & { hint?: string } = {}): Promise<RunResult> {
  const { execa } = await import('execa');
  const { exitStatusOf } = await import('./proc.ts');
  const r = await execa(cmd, args, {
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
    timeout: opts.timeoutMs,
    cancelSignal: opts.signal,
    windowsHide: true,
  });
  const code = (r as { code?: string }).code;
  if (code === 'ENOENT' && r.exitCode === undefined) {
    throw new PimError(EXIT.UNAVAILABLE, `cannot run ${cmd}: not found${opts.hint ? `; ${opts.hint}` : ''}`);
  }
  const out = r.stdout as unknown;
  const bytes = out instanceof Uint8Array ? out : new TextEncoder().encode(typeof out === 'string' ? out : '');
  return {
    code: r.exitCode ?? exitStatusOf(r.signal as NodeJS.Signals | undefined),
    signal: r.signal ?? null,
    stdout: typeof out === 'string' ? out : Buffer.from(bytes).toString('utf8'),
    stdoutBytes: bytes,
    stderr: typeof r.stderr === 'string' ? r.stderr : '',
    timedOut: Boolean(r.timedOut),
  };
}

/**
 * Run and require status 0: otherwise a PimError (`code`, default 70) whose
 * message is `what` and the last line of the child's stderr.
 */
export async function runOk(cmd: string, args: readonly string[], opts: RunOpts & { what?: string; hint?: string; code?: PimError['code'] } = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    const last = r.stderr.trim().split('\n').filter(Boolean).pop() ?? (r.timedOut ? 'timed out' : `exit status ${r.code}`);
    throw new PimError(opts.code ?? EXIT.SOFTWARE, `${opts.what ?? `${cmd} failed`}: ${last}`);
  }
  return r;
}
