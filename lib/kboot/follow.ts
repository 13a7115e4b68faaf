/**
 * Following a kboot guest once QEMU is up: its output port (the second
 * serial port, ttyS1), and QMP for what the serial ports cannot say (the VM
 * stopped: a KVM internal error, a guest panic).
 *
 * The output port is a unix socket that pim listens on and QEMU connects to
 * as ttyS1's backend (`-chardev socket`, QEMU the client). QEMU connects
 * while it starts, before -daemonize returns, and its connection is the only
 * one: the end of that connection is exactly "QEMU has exited". Readiness,
 * the command's status and QEMU's exit are all notifications: nothing polls.
 * No child process is needed to make it (a FIFO needed mkfifo).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { stdout, writeOut } from '../cli/output.ts';
import { EXIT, PimError, type ExitCode } from '../core/exit.ts';
import { log } from '../core/log.ts';
import { checkSocketPath, type VmFiles } from '../core/paths.ts';
import { isAlive, waitExit } from '../core/proc.ts';
import type { Interrupted } from '../core/signals.ts';
import { qemuOpt } from '../qemu/argv.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import { cleanupFiles, logTail } from '../vm/state.ts';
import { findPanic, OutputScanner } from './guest.ts';

/** The listening end of the output port. */
export interface OutputPort {
  /** QEMU arguments: the chardev and the serial port (index 1: ttyS1) */
  args: string[];
  /** QEMU's connection, once made (it is made before launch returns; bounded all the same) */
  connected(timeoutMs: number): Promise<net.Socket>;
  /** stop listening and remove the socket file */
  close(): void;
}

/** Listen on `path` for QEMU's connection (a 0600 socket in the VM's private stage dir). */
export async function openOutputPort(path: string): Promise<OutputPort> {
  checkSocketPath(path);
  let conn: net.Socket | null = null;
  let waiter: ((s: net.Socket) => void) | null = null;
  const server = net.createServer({ pauseOnConnect: true }, (s) => {
    if (conn) return s.destroy(); // only QEMU's first connection is the port
    conn = s;
    server.close();
    fs.rmSync(path, { force: true });
    waiter?.(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  fs.chmodSync(path, 0o600);
  return {
    args: ['-chardev', qemuOpt('socket', { id: 'pimout', path }), '-device', 'isa-serial,chardev=pimout,index=1'],
    connected: (timeoutMs) =>
      conn
        ? Promise.resolve(conn)
        : new Promise((resolve, reject) => {
            const t = setTimeout(
              () =>
                reject(
                  new PimError(
                    EXIT.SOFTWARE,
                    `QEMU started but did not connect its output port ${path} within ${timeoutMs / 1000} s`,
                  ),
                ),
              timeoutMs,
            );
            waiter = (s) => {
              clearTimeout(t);
              resolve(s);
            };
          }),
    close: () => {
      server.close();
      fs.rmSync(path, { force: true });
    },
  };
}

/** Stop a kboot VM's QEMU (SIGTERM, then SIGKILL, each bounded) and remove its runtime files. */
export async function killVm(pid: number | null, files: VmFiles): Promise<void> {
  if (pid && isAlive(pid)) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* gone */
    }
    if (!(await waitExit(pid, 5_000))) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await waitExit(pid, 5_000);
    }
  }
  cleanupFiles(files);
}

/** The VM log's last lines, indented for a message. */
export const tailText = (files: VmFiles, n = 15) =>
  logTail(files.log, n)
    .map((l) => `  | ${l.replace(/\r$/, '')}`)
    .join('\n');

export interface FollowOpts {
  name: string;
  files: VmFiles;
  pid: number;
  exec: boolean;
  token: string;
  timeoutMs: number;
  t0: number;
  /** aborted by SIGINT/SIGTERM/SIGHUP: stop the VM and exit 128+N */
  signal: AbortSignal;
  kvmSeen?: (verdict: 'ok' | 'broken') => void;
}

/** Follow the output port until the guest is up (headless) or the command is done (--exec). */
export function follow(sock: net.Socket, f: FollowOpts): Promise<number> {
  return new Promise<number>((resolve, reject) => new Follower(sock, f, resolve, reject).start());
}

/** One follow: each event (output, QEMU gone, QMP, timers, signals) has its method; `finish` runs once. */
class Follower {
  private done = false;
  private gone = false;
  private readySeen = false;
  private qmp: QmpClient | null = null;
  private bootTimer: NodeJS.Timeout | undefined;
  private exitTimer: NodeJS.Timeout | undefined;
  private readonly scanner: OutputScanner;

  private readonly sock: net.Socket;
  private readonly f: FollowOpts;
  private readonly resolve: (status: number) => void;
  private readonly reject: (e: unknown) => void;
  constructor(sock: net.Socket, f: FollowOpts, resolve: (status: number) => void, reject: (e: unknown) => void) {
    this.sock = sock;
    this.f = f;
    this.resolve = resolve;
    this.reject = reject;
    this.scanner = new OutputScanner(f.token, (s) => {
      if (f.exec) stdout().write(Buffer.from(s, 'latin1'));
    });
  }

  start(): void {
    // whatever ends this process (EPIPE on stdout exits at once), an --exec VM goes with it
    process.on('exit', this.lastResort);
    this.f.signal.addEventListener('abort', this.onSignal, { once: true });
    this.bootTimer = setTimeout(() => this.onBootTimeout(), this.f.timeoutMs);
    this.watchQmp();
    this.sock.on('data', (d: Buffer) => this.onData(d));
    this.sock.on('end', () => this.onQemuGone());
    this.sock.on('error', (e) => this.failWith(EXIT.SOFTWARE, `reading ${this.f.name}'s output: ${e.message}`));
    if (this.f.signal.aborted) this.onSignal();
    else this.sock.resume();
  }

  /**
   * On 'exit' only synchronous code runs: SIGKILL, then wait (bounded, 2 s)
   * for QEMU to be gone, so that nothing of the VM outlives this process.
   */
  private readonly lastResort = () => {
    try {
      process.kill(this.f.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    const tick = new Int32Array(new SharedArrayBuffer(4));
    for (let i = 0; i < 200 && isAlive(this.f.pid); i++) Atomics.wait(tick, 0, 0, 10);
    cleanupFiles(this.f.files);
  };

  /** QMP, for what the serial ports cannot say: the VM stopped (KVM internal error, guest panic). */
  private watchQmp(): void {
    void import('../qemu/qmp.ts')
      .then(({ QmpClient }) => QmpClient.connect(this.f.files.qmp, { timeoutMs: 5_000 }))
      .then((c) => {
        if (this.done) return c.close();
        this.qmp = c;
        c.subscribe((ev) => {
          if (ev.event === 'STOP' && !this.done)
            c.execute('query-status').then(
              (st) => this.onStopped((st as { status?: string }).status),
              () => {},
            );
        });
      })
      .catch((e) => log.debug(`QMP: ${(e as Error).message}`));
  }

  private onStopped(status: string | undefined): void {
    const { name, files, kvmSeen } = this.f;
    if (status === 'internal-error') {
      kvmSeen?.('broken');
      this.failWith(
        EXIT.UNAVAILABLE,
        `${name}: the VM stopped with an internal error: KVM does not work here; use --accel tcg or PIM_ACCEL=tcg${kvmSeen ? ' (pim remembers this: the next boot uses TCG)' : ''}`,
      );
    } else if (status === 'guest-panicked') {
      this.failWith(
        EXIT.UNAVAILABLE,
        `${name}: the guest kernel panicked. Last lines of ${files.log}:\n${tailText(files)}`,
      );
    }
  }

  private onData(d: Buffer): void {
    const s = this.scanner;
    s.push(d.toString('latin1'));
    if (s.ready && !this.readySeen) {
      this.readySeen = true;
      clearTimeout(this.bootTimer);
      this.f.kvmSeen?.('ok');
    }
    if (s.failure !== null) return this.failWith(EXIT.UNAVAILABLE, `${this.f.name}: pim's init failed: ${s.failure}`);
    if (s.ready && !this.f.exec) return this.finish(async () => this.leaveRunning());
    if (s.status !== null && !this.gone && !this.exitTimer) {
      // the guest powers off right after the marker: wait for QEMU to go, bounded
      const st = s.status;
      this.exitTimer = setTimeout(
        () =>
          this.finish(async () => {
            log.warn(`${this.f.name} did not power off after the command; stopping it`);
            await killVm(this.f.pid, this.f.files);
            return st;
          }),
        15_000,
      );
    }
  }

  /** Headless without --exec: the guest is up; print its name and leave it running. */
  private leaveRunning(): number {
    const { name, pid, t0 } = this.f;
    this.sock.destroy();
    log.info(
      `${name} is up (pid ${pid}, ${((performance.now() - t0) / 1000).toFixed(1)} s); pim-console ${name}, pim-stop ${name}`,
    );
    writeOut(name + '\n');
    return EXIT.OK;
  }

  /** End of the output port: QEMU has exited. */
  private onQemuGone(): void {
    this.gone = true;
    if (this.done) return;
    const { name, files } = this.f;
    if (this.scanner.status !== null) {
      const st = this.scanner.status;
      return this.finish(async () => {
        cleanupFiles(files);
        return st;
      });
    }
    const panic = findPanic(fs.readFileSync(files.log, 'latin1'));
    if (panic)
      return this.failWith(
        EXIT.UNAVAILABLE,
        `${name}: the guest kernel panicked:\n${panic.map((l) => `  | ${l}`).join('\n')}`,
      );
    this.failWith(
      EXIT.UNAVAILABLE,
      `${name}: QEMU exited before ${this.scanner.ready ? 'the command finished' : 'the guest was up'}. Last lines of ${files.log}:\n${tailText(files)}`,
    );
  }

  private onBootTimeout(): void {
    const { name, files, timeoutMs } = this.f;
    this.failWith(
      EXIT.TEMPFAIL,
      `${name}: the guest did not reach userspace within ${timeoutMs / 1000} s; stopped it. Last lines of ${files.log}:\n${tailText(files)}`,
    );
  }

  private readonly onSignal = () =>
    this.finish(async () => {
      const why = this.f.signal.reason as Interrupted;
      log.warn(`${why.sig}: stopping ${this.f.name}`);
      this.sock.destroy();
      await killVm(this.f.pid, this.f.files);
      return why.status;
    });

  private failWith(code: ExitCode, msg: string): void {
    this.finish(async () => {
      await killVm(this.f.pid, this.f.files);
      throw new PimError(code, msg);
    });
  }

  /** The one way out: stop listening for everything, then settle with what `how` returns or throws. */
  private finish(how: () => Promise<number>): void {
    if (this.done) return;
    this.done = true;
    process.off('exit', this.lastResort);
    this.qmp?.close();
    clearTimeout(this.bootTimer);
    clearTimeout(this.exitTimer);
    this.f.signal.removeEventListener('abort', this.onSignal);
    how().then(this.resolve, this.reject);
  }
}
