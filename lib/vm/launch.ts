/**
 * Starting QEMU for a VM: the runtime files, the lock, sudo for bridged
 * networking, and readiness. Headless VMs use `-daemonize`: QEMU's first
 * process exits only once every socket listens, so that exit is the
 * readiness notification (no polling). Shared by pim-run and pim-kboot.
 */
import { closeSync, existsSync, openSync, watch, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { userInfo } from 'node:os';
import { EXIT, PimError } from '../core/exit.ts';
import { checkSocketPath, ensureRuntimeDir, vmFiles, type VmFiles } from '../core/paths.ts';
import { acquireLock, childExit, readPidfile } from '../core/proc.ts';
import { cleanupFiles, logTail, vmInfo, writeMeta, type VmMeta } from './state.ts';
import { buildQemuArgv, type VmSpec } from '../qemu/argv.ts';
import { qemuBinary } from '../qemu/host.ts';
import { log } from '../core/log.ts';

export interface LaunchRequest {
  spec: Omit<VmSpec, 'files' | 'daemonize' | 'serial'>;
  console: boolean;
  /** run QEMU as root through sudo (bridged networking) */
  sudo: boolean;
  meta: Omit<VmMeta, 'pid' | 'owner' | 'started' | 'root' | 'name'>;
}

export interface Launched {
  name: string;
  files: VmFiles;
  pid: number;
  meta: VmMeta;
}

function qemuFailure(files: VmFiles, status: number, sudo: boolean): PimError {
  const tail = logTail(files.log, 20);
  if (sudo && tail.some((l) => /^sudo: .*(password|not allowed|may not run|no tty|a terminal is required)/i.test(l))) {
    return new PimError(EXIT.NOPERM, `sudo refused to run QEMU for bridged networking; run "sudo -v" first or add a NOPASSWD sudoers rule for ${qemuBinary()}, chown and kill, by absolute path (see README)`);
  }
  const qline = [...tail].reverse().find((l) => /qemu-system|qemu:|error/i.test(l)) ?? tail[tail.length - 1] ?? `exit status ${status}`;
  if (/Failed to get "write" lock|Is another process using the image/.test(tail.join('\n'))) {
    return new PimError(EXIT.TEMPFAIL, `the image is in use by another VM (${qline.trim()}); stop that VM or use --snapshot`);
  }
  if (/Could not access KVM kernel module|failed to initialize kvm|KVM internal error/i.test(tail.join('\n'))) {
    return new PimError(EXIT.UNAVAILABLE, `KVM does not work here (${qline.trim()}); use --accel tcg or PIM_ACCEL=tcg`);
  }
  return new PimError(EXIT.UNAVAILABLE, `QEMU failed to start: ${qline.trim()} (log: ${files.log})`);
}

async function sudoAuth(): Promise<void> {
  // With a terminal, let sudo ask for a password once; the real commands then run with -n.
  if (!process.stdin.isTTY) return;
  const st = await childExit(spawn('sudo', ['-v'], { stdio: 'inherit' }));
  if (st !== 0) throw new PimError(EXIT.NOPERM, 'sudo refused; bridged networking needs sudo to run QEMU as root');
}

/** Let the invoking user use the root-owned sockets and pidfile: sudo for exactly this chown. */
async function chownToUser(paths: string[]): Promise<void> {
  const uid = process.getuid!();
  const gid = process.getgid!();
  const existing = paths.filter((p) => existsSync(p));
  const child = spawn('sudo', ['-n', 'chown', `${uid}:${gid}`, ...existing], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  if ((await childExit(child)) !== 0) throw new PimError(EXIT.NOPERM, `sudo refused to chown the VM's sockets to you (${err.trim()}); allow "chown" in your sudoers rule. QEMU is running as root: stop it with sudo kill $(sudo cat ${paths.find((p) => p.endsWith('.pid'))})`);
}

export async function launch(req: LaunchRequest): Promise<Launched | number> {
  const name = req.spec.name;
  const dir = ensureRuntimeDir();
  const files = vmFiles(name, dir);
  for (const p of [files.qmp, files.ga, files.serial]) checkSocketPath(p);
  const lock = await acquireLock(files.lock, `VM ${name}`);
  try {
    const info = await vmInfo(name, dir);
    if (info.state === 'running') throw new PimError(EXIT.TEMPFAIL, `${name} is already running (pid ${info.pid}); stop it with pim-stop ${name}, or choose another name`);
    cleanupFiles(files);
    writeFileSync(files.log, '', { mode: 0o600 });
    const spec: VmSpec = { ...req.spec, files, serial: req.console ? 'stdio' : 'socket', daemonize: !req.console && req.spec.net.mode !== 'vmnet-bridged' };
    const argv = [qemuBinary(), ...buildQemuArgv(spec)];
    const root = req.sudo && process.getuid?.() !== 0;
    if (root) await sudoAuth();
    const cmd = root ? ['sudo', '-n', ...argv] : argv;
    log.debug(`exec: ${JSON.stringify(cmd)}`);
    const uid = process.getuid?.() ?? 0;
    const meta: VmMeta = {
      ...req.meta,
      name,
      pid: null,
      root,
      owner: { uid, user: userInfo().username },
      started: new Date().toISOString(),
    };

    if (req.console) {
      writeMeta(files, meta);
      const child = spawn(cmd[0]!, cmd.slice(1), { stdio: 'inherit' });
      const status = await childExit(child);
      cleanupFiles(files);
      return status;
    }

    const logfd = openSync(files.log, 'a');
    let child;
    try {
      child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', logfd, logfd], detached: true });
    } finally {
      closeSync(logfd);
    }
    if (spec.daemonize) {
      const status = await childExit(child).catch((e: NodeJS.ErrnoException) => {
        throw new PimError(EXIT.UNAVAILABLE, `cannot run ${cmd[0]}: ${e.code === 'ENOENT' ? 'not found; install QEMU (apt-get install qemu-system-x86) or set PIM_QEMU' : e.message}`);
      });
      if (status !== 0) {
        cleanupFiles(files);
        throw qemuFailure(files, status, root);
      }
    } else {
      child.unref();
      await waitForSocket(files.qmp, child, files, root);
    }
    // a root QEMU writes its pidfile 0600: make the files ours before reading it
    if (root) await chownToUser([files.qmp, files.ga, files.serial, files.pid]);
    const pid = readPidfile(files.pid);
    if (!pid) {
      cleanupFiles(files);
      throw new PimError(EXIT.SOFTWARE, `QEMU started but wrote no pidfile ${files.pid}`);
    }
    meta.pid = pid;
    writeMeta(files, meta);
    // Return only once QMP answers: a greeting, capabilities and query-status.
    const { QmpClient } = await import('../qemu/qmp.ts');
    try {
      const q = await QmpClient.connect(files.qmp, { timeoutMs: 30_000 });
      try {
        await q.execute('query-status');
      } finally {
        q.close();
      }
    } catch (e) {
      throw new PimError(EXIT.UNAVAILABLE, `QEMU started (pid ${pid}) but QMP does not answer: ${(e as Error).message}; see ${files.log}, stop it with pim-stop ${name}`);
    }
    return { name, files, pid, meta };
  } finally {
    await lock.release();
  }
}

/** Without -daemonize (macOS vmnet): watch the runtime dir until the QMP socket appears, or QEMU dies. */
function waitForSocket(path: string, child: import('node:child_process').ChildProcess, files: VmFiles, root: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const { dirname } = process.getBuiltinModule('node:path') as typeof import('node:path');
    let done = false;
    const finish = (err?: Error) => {
      if (done) return;
      done = true;
      watcher.close();
      clearTimeout(timer);
      if (err) reject(err);
      else resolve();
    };
    const watcher = watch(dirname(path), () => {
      if (existsSync(path) && existsSync(files.pid)) finish();
    });
    const timer = setTimeout(() => finish(new PimError(EXIT.TEMPFAIL, `QEMU did not open ${path} within 60 s (log: ${files.log})`)), 60_000);
    child.once('exit', (code) => finish(qemuFailure(files, code ?? 1, root)));
    if (existsSync(path) && existsSync(files.pid)) finish();
  });
}

/**
 * A KVM VM that hits "KVM internal error" stops at once (QMP event STOP, run
 * state internal-error). Watch the first seconds of a new KVM VM for that;
 * when it happens the VM is stopped and false returned.
 */
export async function kvmWorks(vm: Launched, windowMs = 3_000): Promise<boolean> {
  const { QmpClient } = await import('../qemu/qmp.ts');
  const q = await QmpClient.connect(vm.files.qmp, { timeoutMs: 5_000 });
  try {
    const failed = async () => ((await q.execute('query-status')) as { status: string }).status === 'internal-error';
    if (!(await failed())) {
      const ev = await q.waitEvent('STOP', windowMs);
      if (!ev || !(await failed())) return true;
    }
    await q.execute('quit').catch(() => undefined);
    await q.waitClosed(5_000);
    const { waitExit } = await import('../core/proc.ts');
    await waitExit(vm.pid, 5_000);
    cleanupFiles(vm.files);
    return false;
  } finally {
    q.close();
  }
}
