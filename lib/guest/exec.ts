/**
 * Running a command in the guest through its agent (pim-exec): no SSH, no
 * network. `guest-exec` starts it with `capture-output` (and `input-data`:
 * what pim-exec read from its stdin), then `guest-exec-status` is asked until
 * it says `exited`. The agent sends no event when a process ends, so that is
 * polled, with a growing back-off: 10 ms at first (a short command answers
 * in a few round trips), growing by half each time up to 1 s.
 *
 * The agent's socket takes one client at a time. While the polls are quick
 * the connection is kept; once the pause reaches POLL_RELEASE_MS each poll
 * connects anew, so that a long command does not keep pim-ip, pim-stop or
 * another pim-exec out of the agent meanwhile.
 *
 * Sizes. A request is one JSON message: QEMU's JSON parser refuses a token
 * over 64 MiB, and input-data is base64 (4/3 of the bytes) held whole in the
 * agent's memory; so stdin is capped at MAX_INPUT (16 MiB, the same as the
 * agent's own cap on captured output, GUEST_EXEC_MAX_OUTPUT, past which it
 * sets `out-truncated`/`err-truncated`: pim-exec says so on stderr). The
 * agent in QEMU 7.2 hands the output over only when the command has ended
 * (no streaming).
 *
 * Ending it early. QEMU 7.2's agent has no command to kill what guest-exec
 * started. On a timeout (or SIGINT/SIGTERM/SIGHUP to pim-exec) pim runs the
 * guest's own `kill` on its pid, through guest-exec again, and reads the
 * status once more so the agent forgets it; when that fails the message says
 * the command was left running, with its pid in the guest.
 */
import { EXIT, PimError } from '../core/exit.ts';
import type { GaClient } from '../qemu/ga.ts';
import type { RunningVm } from '../vm/state.ts';
import { withGa } from '../vm/connect.ts';

export const MAX_INPUT = 16 * 1024 * 1024;
const FIRST_POLL_MS = 10;
const MAX_POLL_MS = 1_000;
const POLL_RELEASE_MS = 250;
/** each agent request; guest-exec-status carries up to 2 x 16 MiB of output in base64 */
const REQUEST_MS = 30_000;
/** a poll at the deadline still gets this long, so the over-time command can be found running and killed */
const POLL_FLOOR_MS = 2_000;

export interface ExecRequest {
  path: string;
  args: string[];
  /** bytes for the command's stdin (none: its stdin is /dev/null) */
  input?: Buffer;
  /** give up after this long: the command is killed (exit 75) */
  timeoutMs?: number | null;
  /** an abort (a trapped signal) kills the command and throws the reason */
  signal?: AbortSignal;
}

export interface ExecResult {
  /** the status to exit with: the command's, or 128+N for signal N */
  status: number;
  exitcode: number | null;
  signal: number | null;
  stdout: Buffer;
  stderr: Buffer;
  outTruncated: boolean;
  errTruncated: boolean;
  /** its pid in the guest */
  pid: number;
  polls: number;
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
  'out-truncated'?: boolean;
  'err-truncated'?: boolean;
}

/** The program could not be started in the guest: a shell's status, 127 (not found) or 126 (not executable). */
export class SpawnFailed extends Error {
  readonly status: 126 | 127;
  constructor(status: 126 | 127, message: string) {
    super(message);
    this.status = status;
    this.name = 'SpawnFailed';
  }
}

/** guest-exec's error for a program that cannot be run, as SpawnFailed; null for other errors. */
export function spawnFailure(path: string, e: unknown): SpawnFailed | null {
  const m = e instanceof Error ? e.message : String(e);
  if (!/Failed to execute child process/i.test(m)) return null;
  const notFound = /No such file|not found/i.test(m);
  return new SpawnFailed(
    notFound ? 127 : 126,
    `cannot run ${JSON.stringify(path)} in the guest: ${notFound ? 'not found' : m.replace(/^.*error was '?|'$/g, '')}`,
  );
}

/** Decode a guest-exec-status reply into the exit status pim-exec passes on. */
export function statusOf(st: ExecStatus): number {
  if (typeof st.signal === 'number') return 128 + st.signal;
  if (typeof st.exitcode === 'number') return st.exitcode;
  return EXIT.SOFTWARE;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const done = () => (clearTimeout(t), signal?.removeEventListener('abort', done), resolve());
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });

export async function guestExec(vm: RunningVm, req: ExecRequest): Promise<ExecResult> {
  const deadline = req.timeoutMs ? Date.now() + req.timeoutMs : Number.POSITIVE_INFINITY;
  // the user's time limit bounds the whole command: connecting, the agent's sync, the start and every poll
  // (a poll near the deadline still gets a moment, so that an over-time command is killed rather than left)
  const left = (floor = 1) => Math.max(floor, Math.min(REQUEST_MS, deadline - Date.now()));
  const status = (g: GaClient, pid: number) =>
    g.execute('guest-exec-status', { pid }, left(POLL_FLOOR_MS)) as Promise<ExecStatus>;
  let polls = 0;
  let wait = FIRST_POLL_MS;
  const over = () => req.signal?.aborted || Date.now() >= deadline;

  // the start and the quick polls, on one connection
  const first = await withGa(vm, Math.min(10_000, left()), async (g) => {
    const args: Record<string, unknown> = { path: req.path, arg: req.args, 'capture-output': true };
    if (req.input?.length) args['input-data'] = req.input.toString('base64');
    let pid: number;
    try {
      pid = ((await g.execute('guest-exec', args, left())) as { pid: number }).pid;
    } catch (e) {
      throw spawnFailure(req.path, e) ?? e;
    }
    for (;;) {
      const st = await status(g, pid);
      polls++;
      if (st.exited || over() || wait >= POLL_RELEASE_MS) return { pid, st };
      await sleep(Math.min(wait, deadline - Date.now()), req.signal);
      wait = Math.min(Math.round(wait * 1.5), MAX_POLL_MS);
    }
  });
  const { pid } = first;
  let st = first.st;
  // a longer command: each poll on a connection of its own
  while (!st.exited && !over()) {
    await sleep(Math.min(wait, deadline - Date.now()), req.signal);
    wait = Math.min(Math.round(wait * 1.5), MAX_POLL_MS);
    if (over()) break;
    st = await withGa(vm, Math.min(10_000, left(POLL_FLOOR_MS)), (g) => status(g, pid));
    polls++;
  }
  if (!st.exited) {
    const why = req.signal?.aborted ? (req.signal.reason as Error & { sig?: NodeJS.Signals }) : null;
    const sig = why?.sig ?? 'SIGKILL';
    const fate = await killInGuest(vm, pid, sig);
    if (why) {
      process.stderr.write(`pim-exec: ${fate}\n`);
      throw why;
    }
    throw new PimError(EXIT.TEMPFAIL, `the command did not end within ${req.timeoutMs! / 1000} s; ${fate}`);
  }
  return {
    status: statusOf(st),
    exitcode: st.exitcode ?? null,
    signal: st.signal ?? null,
    stdout: Buffer.from(st['out-data'] ?? '', 'base64'),
    stderr: Buffer.from(st['err-data'] ?? '', 'base64'),
    outTruncated: Boolean(st['out-truncated']),
    errTruncated: Boolean(st['err-truncated']),
    pid,
    polls,
  };
}

/**
 * QEMU 7.2's agent cannot kill what it started: run the guest's `kill` on it
 * (through guest-exec), then read its status so the agent drops it. Says what happened.
 */
async function killInGuest(vm: RunningVm, pid: number, sig: NodeJS.Signals): Promise<string> {
  const name = sig.replace(/^SIG/, '');
  try {
    return await withGa(vm, 5_000, async (g) => {
      const k = (
        (await g.execute(
          'guest-exec',
          { path: 'kill', arg: [`-${name}`, String(pid)], 'capture-output': true },
          5_000,
        )) as { pid: number }
      ).pid;
      const end = Date.now() + 5_000;
      let wait = FIRST_POLL_MS;
      let ks: ExecStatus = { exited: false };
      let st: ExecStatus = { exited: false };
      while (Date.now() < end) {
        if (!ks.exited) ks = (await g.execute('guest-exec-status', { pid: k }, 5_000)) as ExecStatus;
        st = (await g.execute('guest-exec-status', { pid }, 5_000)) as ExecStatus;
        if (st.exited)
          return `sent SIG${name} to it (pid ${pid} in the guest) with the guest's kill; it ended (status ${statusOf(st)})`;
        await sleep(wait);
        wait = Math.min(wait * 2, 500);
      }
      const err =
        ks.exited && ks.exitcode
          ? `: kill said ${JSON.stringify(
              Buffer.from(ks['err-data'] ?? '', 'base64')
                .toString()
                .trim(),
            )}`
          : '';
      return `sent SIG${name} to it with the guest's kill, but it is still running as pid ${pid} in the guest${err}`;
    });
  } catch (e) {
    return `it is left running as pid ${pid} in the guest (QEMU 7.2's agent cannot kill it, and running the guest's kill failed: ${(e as Error).message})`;
  }
}

/** Read stdin whole, up to MAX_INPUT (over it: exit 65). */
export async function readInput(stream: NodeJS.ReadableStream, max = MAX_INPUT): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    const b = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
    n += b.length;
    if (n > max)
      throw new PimError(
        EXIT.DATAERR,
        `stdin is over ${max / 1024 / 1024} MiB, more than one guest-agent message should carry; copy large files another way (SSH, or a shared directory), or pass --no-stdin`,
      );
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}
