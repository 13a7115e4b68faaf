/**
 * Starting QEMU for a VM: the lock, the runtime files, sudo for bridged
 * networking, and readiness. Shared by pim-run, pim-kboot and pim-build.
 *
 * A start is two steps. `reserveVm` takes the VM's lock, refuses a VM that
 * runs, and clears what a dead one left; everything the start needs in the
 * runtime dir (a copy of UEFI vars, kboot's stage) is made after that, under
 * the lock. `launch` then starts QEMU. Headless VMs use `-daemonize`: QEMU's
 * first process exits only once every socket listens, so that exit is the
 * readiness notification (no polling).
 *
 * QEMU is started with node:child_process, not lib/core/run.ts: it must be
 * detached in its own process group, with the VM's log as its stdout and
 * stderr (file descriptors), and its process group is what a signal during
 * the start kills.
 */
import { closeSync, existsSync, rmSync, watch } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { userInfo } from 'node:os';
import { EXIT, PimError } from '../core/exit.ts';
import { checkSocketPath, type VmFiles } from '../core/paths.ts';
import { childExit, isOurProcess, readPidfile, waitExit } from '../core/proc.ts';
import { sudoValidate, run } from '../core/run.ts';
import { acquireLock, type Lock } from '../core/lock.ts';
import { createExclusive } from '../core/fs.ts';
import { checkAborted } from '../core/signals.ts';
import { cleanupFiles, logTail, qemuMarker, vmInfo, writeMeta, type RunningVm, type VmMeta } from './state.ts';
import type { VmRef } from './ref.ts';
import { buildQemuArgv, type VmSpec } from '../qemu/argv.ts';
import { qemuBinary } from '../qemu/host.ts';
import { isKvmFailure, markKvmBroken } from '../qemu/accel.ts';
import { log } from '../core/log.ts';
import { knownRef } from './ref.ts';
import { QmpClient } from '../qemu/qmp.ts';

export interface LaunchRequest {
  spec: Omit<VmSpec, 'files' | 'daemonize' | 'serial' | 'name'>;
  console: boolean;
  /**
   * run QEMU in the foreground under this program, QEMU's argv after its own
   * (pim-gdb: gdb ... --args): headless as usual (serial on its socket), and
   * this returns the program's exit status
   */
  debugger?: string[];
  /** run QEMU as root through sudo (bridged networking) */
  sudo: boolean;
  meta: Omit<VmMeta, 'pid' | 'owner' | 'started' | 'root' | 'name'>;
}

/** A VM name held for a start: its lock is ours until release(). */
export interface Reservation extends VmRef {
  release(): Promise<void>;
}

/**
 * Take VM `ref`'s lock (busy: exit 75), refuse it when it runs (75), and
 * remove what a dead VM of that name left. The caller releases it.
 */
export async function reserveVm(ref: VmRef): Promise<Reservation> {
  for (const p of [ref.files.qmp, ref.files.ga, ref.files.serial]) checkSocketPath(p);
  const lock: Lock = await acquireLock(ref.files.lock, `VM ${ref.name}`);
  try {
    const info = await vmInfo(ref);
    if (info.state === 'running') {
      throw new PimError(
        EXIT.TEMPFAIL,
        `${ref.name} is already running (pid ${info.pid}); stop it with pim-stop ${ref.name}, or choose another name`,
      );
    }
    cleanupFiles(ref.files);
  } catch (e) {
    await lock.release();
    throw e;
  }
  return { ...ref, release: () => lock.release() };
}

/**
 * Reserve the first free name of PREFIX, PREFIX-2, PREFIX-3, ... in `dir`:
 * each is tried under its lock, so two callers never get the same name.
 */
export async function reserveFreeName(prefix: string, dir: string): Promise<Reservation> {
  for (let i = 1; i < 1000; i++) {
    const ref = knownRef(i === 1 ? prefix : `${prefix}-${i}`, dir);
    try {
      return await reserveVm(ref);
    } catch (e) {
      if (!(e instanceof PimError) || e.code !== EXIT.TEMPFAIL) throw e;
    }
  }
  throw new PimError(EXIT.TEMPFAIL, `no free VM name ${prefix}-N; stop some VMs`);
}

/** QEMU died while it started because KVM failed: pim-run's default start retries on TCG (lib/vm/plan.ts). */
export class KvmFailed extends PimError {
  constructor(message: string) {
    super(EXIT.UNAVAILABLE, message);
  }
}

export function qemuFailure(res: VmRef, status: number, sudo: boolean, spec: Pick<VmSpec, 'accel' | 'net'>): PimError {
  const tail = logTail(res.files.log, 20);
  if (sudo && tail.some((l) => /^sudo: .*(password|not allowed|may not run|no tty|a terminal is required)/i.test(l))) {
    return new PimError(
      EXIT.NOPERM,
      `sudo refused to run QEMU for bridged networking; run "sudo -v" first or add a NOPASSWD sudoers rule for ${qemuBinary()}, chown and kill, by absolute path (man pim-run has one)`,
    );
  }
  const qline =
    [...tail].reverse().find((l) => /qemu-system|qemu:|error/i.test(l)) ??
    tail[tail.length - 1] ??
    `exit status ${status}`;
  if (/Failed to get "write" lock|Is another process using the image/.test(tail.join('\n'))) {
    // --snapshot still reads the image, which the running QEMU's write lock forbids: only a clone (an overlay read without the lock) starts
    return new PimError(
      EXIT.TEMPFAIL,
      `the image is in use by another QEMU (${qline.trim()}); start a throwaway copy with pim-run --clone, or stop that VM first`,
    );
  }
  if (spec.net.mode === 'bridge' && /bridge helper failed/i.test(tail.join('\n')))
    return bridgeFailure(tail, spec.net.bridge ?? '?');
  if (spec.accel === 'kvm' && isKvmFailure(tail.join('\n'))) {
    markKvmBroken();
    return new KvmFailed(
      `KVM does not work here (${qline.trim()}); use --accel tcg or PIM_ACCEL=tcg (pim remembers this: default starts use TCG until the host reboots)`,
    );
  }
  if (/Could not access KVM kernel module|failed to initialize kvm|KVM internal error/i.test(tail.join('\n'))) {
    return new PimError(EXIT.UNAVAILABLE, `KVM does not work here (${qline.trim()}); use --accel tcg or PIM_ACCEL=tcg`);
  }
  return new PimError(EXIT.UNAVAILABLE, `QEMU failed to start: ${qline.trim()} (log: ${res.files.log})`);
}

/**
 * qemu-bridge-helper refused or failed: say which bridge, and the helper's own
 * reason (it writes it to QEMU's stderr, in the log, before QEMU's "bridge
 * helper failed"). A bridge that /etc/qemu/bridge.conf does not allow is a
 * permission problem (77); anything else (no such bridge) is 69.
 */
function bridgeFailure(tail: string[], bridge: string): PimError {
  const conf = '/etc/qemu/bridge.conf';
  const cause =
    tail.find((l) => /acl file|bridge\.conf/i.test(l)) ??
    tail.find((l) => !/bridge helper failed/i.test(l) && l.trim()) ??
    'bridge helper failed';
  const why = cause.trim().replace(/`/g, "'");
  if (/access denied by acl|acl file/i.test(why)) {
    return new PimError(
      EXIT.NOPERM,
      `bridged networking on bridge ${bridge} was refused by qemu-bridge-helper: ${why}; add the line "allow ${bridge}" to ${conf} (as root), or name an allowed bridge with --bridge or PIM_BRIDGE`,
    );
  }
  return new PimError(
    EXIT.UNAVAILABLE,
    `bridged networking on bridge ${bridge} failed: ${why}; check that the bridge exists (ip link show ${bridge}) and is allowed in ${conf}, or name another with --bridge or PIM_BRIDGE`,
  );
}

/** Let the invoking user use the root-owned sockets and pidfile: sudo for exactly this chown. */
async function chownToUser(paths: string[]): Promise<void> {
  const existing = paths.filter((p) => existsSync(p));
  const r = await run('sudo', ['-n', 'chown', `${process.getuid!()}:${process.getgid!()}`, ...existing]);
  if (r.code !== 0) {
    throw new PimError(
      EXIT.NOPERM,
      `sudo refused to chown the VM's sockets to you (${r.stderr.trim()}); allow "chown" in your sudoers rule. QEMU is running as root: stop it with sudo kill $(sudo cat ${paths.find((p) => p.endsWith('.pid'))})`,
    );
  }
}

/** Kill QEMU of a start that is being undone: the spawned process group, and the daemon once its pid is known. */
async function killStart(res: VmRef, child: ChildProcess | null, root: boolean): Promise<void> {
  if (child?.pid && child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  if (child) await childExit(child).catch(() => undefined);
  const pid = readPidfile(res.files.pid);
  if (pid && isOurProcess(pid, qemuMarker(res.files))) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch (e) {
      if (root && (e as NodeJS.ErrnoException).code === 'EPERM') {
        await run('sudo', ['-n', 'kill', '-KILL', String(pid)]);
      }
    }
    await waitExit(pid, 5_000);
  }
  cleanupFiles(res.files);
}

/**
 * Start QEMU for a reserved VM. Headless: returns the running VM once QMP
 * answers. With `console`, QEMU runs in the foreground and this returns its
 * exit status. When `signal` aborts (Ctrl-C) before the VM is up, QEMU is
 * killed, its files removed, and the signal's Interrupted is thrown: no VM is
 * left behind.
 */
export async function launch(
  res: Reservation,
  req: LaunchRequest,
  opts: { signal?: AbortSignal } = {},
): Promise<RunningVm | number> {
  checkAborted(opts.signal);
  const st = await prepareStart(res, req);
  if (st.foreground) return runForeground(res.files, st);
  const logfd = createLogAppend(res.files.log);
  let child: ChildProcess;
  try {
    child = spawn(st.cmd[0]!, st.cmd.slice(1), { stdio: ['ignore', logfd, logfd], detached: true });
  } finally {
    closeSync(logfd);
  }
  const onAbort = () => {
    if (child.pid && child.exitCode === null) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const pid = await daemonUp(res, st, child, opts.signal);
    st.meta.pid = pid;
    writeMeta(res.files, st.meta);
    await qmpAnswers(res, pid, st.spec);
    checkAborted(opts.signal);
    return { ...res, state: 'running', pid, meta: st.meta };
  } catch (e) {
    if (opts.signal?.aborted) {
      await killStart(res, child, st.root);
      checkAborted(opts.signal);
    }
    throw e;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/** What a start runs: QEMU's spec, the command (under sudo or a debugger), and the metadata to write. */
interface Start {
  spec: VmSpec;
  cmd: string[];
  root: boolean;
  foreground: boolean;
  meta: VmMeta;
}

/** A new log for the start, QEMU's command line, sudo asked for when QEMU runs as root. */
async function prepareStart(res: Reservation, req: LaunchRequest): Promise<Start> {
  const { files, name } = res;
  // a new log for this start (the last one was kept for a post-mortem): the old
  // entry is unlinked (a symlink is removed, never followed) and the new file
  // created with O_EXCL|O_NOFOLLOW
  rmSync(files.log, { force: true });
  closeSync(createExclusive(files.log, 0o600));
  const foreground = req.console || Boolean(req.debugger);
  const spec: VmSpec = {
    ...req.spec,
    name,
    files,
    serial: req.console ? 'stdio' : 'socket',
    daemonize: !foreground && req.spec.net.mode !== 'vmnet-bridged',
  };
  const argv = [qemuBinary(), ...buildQemuArgv(spec)];
  const root = req.sudo && process.getuid?.() !== 0;
  if (root && req.debugger) {
    cleanupFiles(files);
    throw new PimError(
      EXIT.NOPERM,
      `${name} needs QEMU to run as root (bridged networking without a setuid bridge helper), and a debugger runs it as you; use user networking, or make qemu-bridge-helper setuid`,
    );
  }
  if (root) await sudoValidate('sudo refused; bridged networking needs sudo to run QEMU as root');
  const cmd = req.debugger ? [...req.debugger, ...argv] : root ? ['sudo', '-n', ...argv] : argv;
  log.debug(`exec: ${JSON.stringify(cmd)}`);
  const meta: VmMeta = {
    ...req.meta,
    name,
    pid: null,
    root,
    owner: { uid: process.getuid?.() ?? 0, user: userInfo().username },
    started: new Date().toISOString(),
  };
  return { spec, cmd, root, foreground, meta };
}

/** QEMU on the terminal (--console) or under a debugger: its exit status, the VM's files removed after. */
async function runForeground(files: VmFiles, st: Start): Promise<number> {
  writeMeta(files, st.meta);
  const child = spawn(st.cmd[0]!, st.cmd.slice(1), { stdio: 'inherit' });
  const status = await childExit(child).catch((e: NodeJS.ErrnoException) => {
    cleanupFiles(files);
    throw notFound(st.cmd[0]!, e);
  });
  cleanupFiles(files);
  return status;
}

/** The detached QEMU is up (daemonized, or its socket is there): its pid, from the pidfile. */
async function daemonUp(res: Reservation, st: Start, child: ChildProcess, signal?: AbortSignal): Promise<number> {
  const { files } = res;
  if (st.spec.daemonize) {
    const status = await childExit(child).catch((e: NodeJS.ErrnoException) => {
      throw notFound(st.cmd[0]!, e);
    });
    checkAborted(signal);
    if (status !== 0) {
      cleanupFiles(files);
      throw qemuFailure(res, status, st.root, st.spec);
    }
  } else {
    child.unref();
    await waitForSocket(files.qmp, child, res, st.root, st.spec, signal);
  }
  // a root QEMU writes its pidfile 0600: make the files ours before reading it
  if (st.root) await chownToUser([files.qmp, files.ga, files.serial, files.pid]);
  const pid = readPidfile(files.pid);
  if (!pid) {
    // QEMU runs but cannot be named by its pid: have it quit through QMP, then clean up
    await quitThroughQmp(files.qmp);
    cleanupFiles(files);
    throw new PimError(EXIT.SOFTWARE, `QEMU started but wrote no pidfile ${files.pid}; it was told to quit`);
  }
  return pid;
}

/** Return only once QMP answers: a greeting, capabilities and query-status (69 otherwise). */
async function qmpAnswers(res: Reservation, pid: number, spec: VmSpec): Promise<void> {
  const { files, name } = res;
  try {
    const q = await QmpClient.connect(files.qmp, { timeoutMs: 30_000 });
    try {
      await q.execute('query-status');
      // QEMU's stderr is the log it opened (-D, lib/qemu/argv.ts) without O_APPEND:
      // reopened through "logfile" it appends, after the console's lines (pim-log)
      // (best effort: a guest that is already gone, pim-kboot --exec's, has nothing more to say)
      if (spec.daemonize)
        await q
          .execute('human-monitor-command', { 'command-line': `logfile "${files.log.replace(/["\\]/g, '\\$&')}"` })
          .catch(() => undefined);
    } finally {
      q.close();
    }
  } catch (e) {
    throw new PimError(
      EXIT.UNAVAILABLE,
      `QEMU started (pid ${pid}) but QMP does not answer: ${(e as Error).message}; see ${files.log}, stop it with pim-stop ${name}`,
    );
  }
}

/** Tell the QEMU behind a QMP socket to quit, and wait (bounded) for it to close the connection. */
async function quitThroughQmp(socket: string): Promise<void> {
  try {
    const q = await QmpClient.connect(socket, { timeoutMs: 5_000 });
    await q.execute('quit').catch(() => undefined);
    await q.waitClosed(5_000);
    q.close();
  } catch {
    /* no QMP either: nothing more to do */
  }
}

function createLogAppend(file: string): number {
  const fs = process.getBuiltinModule('node:fs') as typeof import('node:fs');
  const { O_WRONLY, O_APPEND, O_NOFOLLOW } = fs.constants;
  return fs.openSync(file, O_WRONLY | O_APPEND | O_NOFOLLOW);
}

const notFound = (cmd: string, e: NodeJS.ErrnoException) =>
  new PimError(
    EXIT.UNAVAILABLE,
    `cannot run ${cmd}: ${e.code === 'ENOENT' ? 'not found; install QEMU (apt-get install qemu-system-x86) or set PIM_QEMU' : e.message}`,
  );

/** Without -daemonize (macOS vmnet): watch the runtime dir until the QMP socket appears, or QEMU dies. */
function waitForSocket(
  path: string,
  child: ChildProcess,
  res: VmRef,
  root: boolean,
  spec: VmSpec,
  signal?: AbortSignal,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const { dirname } = process.getBuiltinModule('node:path') as typeof import('node:path');
    let done = false;
    const finish = (err?: Error) => {
      if (done) return;
      done = true;
      watcher.close();
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const onAbort = () => finish(signal!.reason as Error);
    signal?.addEventListener('abort', onAbort, { once: true });
    const watcher = watch(dirname(path), () => {
      if (existsSync(path) && existsSync(res.files.pid)) finish();
    });
    const timer = setTimeout(
      () => finish(new PimError(EXIT.TEMPFAIL, `QEMU did not open ${path} within 60 s (log: ${res.files.log})`)),
      60_000,
    );
    child.once('exit', (code) => finish(qemuFailure(res, code ?? 1, root, spec)));
    if (existsSync(path) && existsSync(res.files.pid)) finish();
  });
}

/**
 * A KVM VM that hits "KVM internal error" stops (QMP event STOP, run state
 * internal-error). Watch the first seconds of a new KVM VM for that; when it
 * happens the VM is stopped and false returned. The listener is subscribed
 * before the first query-status, so a STOP in between is not missed.
 */
export async function kvmWorks(vm: RunningVm, windowMs = 3_000): Promise<boolean> {
  const q = await QmpClient.connect(vm.files.qmp, { timeoutMs: 5_000 });
  try {
    const stopped = q.waitEvent('STOP', windowMs);
    const failed = async () => ((await q.execute('query-status')) as { status: string }).status === 'internal-error';
    if (!(await failed())) {
      const ev = await stopped;
      if (!ev || !(await failed())) return true;
    }
    await q.execute('quit').catch(() => undefined);
    await q.waitClosed(5_000);
    await waitExit(vm.pid, 5_000);
    cleanupFiles(vm.files);
    return false;
  } finally {
    q.close();
  }
}
