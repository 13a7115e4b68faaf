/**
 * Stopping a VM, gently first: guest agent (guest-shutdown) -> ACPI power
 * button (QMP system_powerdown) -> SIGTERM -> SIGKILL. A VM that cannot
 * hear the gentle stages is not made to wait for them: a paused one is
 * resumed first (said on stderr); one in an error state (internal-error,
 * guest-panicked, io-error...) is told to quit through QMP at once (stage
 * "quit"); a kboot VM (its disks are host directories, written through)
 * gets a short ACPI stage, then QMP quit: its initramfs often has no ACPI
 * button driver, so the power button is ignored. pim-ssh's cached
 * master connections are closed before (ssh -O exit, bounded). Each stage waits up to
 * the timeout for QEMU to exit. The signal is the QMP connection closing
 * (QEMU closes it as it exits), at every stage; only a VM whose QMP socket
 * does not answer is watched by polling its pid, since a process that is
 * not our child has no other portable exit notification.
 */
import { EXIT, PimError } from '../core/exit.ts';
import { isAlive, waitExit } from '../core/proc.ts';
import { cleanupFiles, type RunningVm } from '../vm/state.ts';
import { log } from '../core/log.ts';
import { run } from '../core/run.ts';
import { closeMasters } from './reach.ts';
import { QmpClient } from '../qemu/qmp.ts';
import { GaClient } from '../qemu/ga.ts';

/** `guest`: the guest powered itself off, asked by pim (awaitPoweroff), before any stage ran. */
export type StopStage = 'guest' | 'agent' | 'acpi' | 'quit' | 'sigterm' | 'sigkill';

/** How long a kboot VM is given to answer the ACPI power button before QMP quit. */
const KBOOT_ACPI_MS = 5_000;
/** QMP run states in which the guest runs (or can be made to) and so can shut itself down. */
const RESUMABLE = new Set(['paused', 'suspended']);
const GENTLE = new Set([
  'running',
  'paused',
  'suspended',
  'prelaunch',
  'finish-migrate',
  'postmigrate',
  'save-vm',
  'restore-vm',
  'inmigrate',
]);

export interface StopResult {
  name: string;
  stage: StopStage;
  seconds: number;
}

async function signal(pid: number, sig: 'SIGTERM' | 'SIGKILL', root: boolean): Promise<void> {
  try {
    process.kill(pid, sig);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ESRCH') return;
    if (code !== 'EPERM' || !root) throw e;
    // QEMU runs as root (bridged): sudo for exactly this kill
    const r = await run('sudo', ['-n', 'kill', `-${sig.slice(3)}`, String(pid)]);
    if (r.code !== 0)
      throw new PimError(
        EXIT.NOPERM,
        `sudo refused to send ${sig} to the root-owned QEMU (pid ${pid}); allow "kill" in your sudoers rule or stop it with sudo`,
      );
  }
}

export interface StopOpts {
  timeoutMs: number;
  force?: boolean;
  /** the stage being waited in, as it begins (pim-stop shows it on a terminal) */
  onStage?: (stage: StopStage) => void;
  /** a line for the user (stderr): what pim did that they did not ask for */
  say?: (line: string) => void;
}

export async function stopVm(vm: RunningVm, opts: StopOpts): Promise<StopResult> {
  const stage = opts.onStage ?? (() => undefined);
  const say = opts.say ?? ((l: string) => log.info(l));
  const pid = vm.pid;
  const t0 = Date.now();
  const done = (stage: StopStage): StopResult => {
    cleanupFiles(vm.files);
    return { name: vm.name, stage, seconds: Math.round((Date.now() - t0) / 100) / 10 };
  };
  const short = Math.min(opts.timeoutMs, 5_000);
  // pim-ssh's cached connections first (ssh -O exit), best effort and bounded
  await closeMasters(vm, 3_000);
  let qmp: QmpClient | null = null;
  try {
    qmp = await QmpClient.connect(vm.files.qmp, { timeoutMs: short });
  } catch (e) {
    log.debug(`${vm.name}: QMP not available: ${(e as Error).message}`);
  }
  /** QEMU gone within `ms`: QMP closed (then the pid goes a moment later), or, without QMP, the pid polled. */
  const gone = async (ms: number): Promise<boolean> => {
    if (qmp) return (await qmp.waitClosed(ms)) && (await waitExit(pid, 5_000));
    return waitExit(pid, ms);
  };
  /** QMP quit: QEMU exits at once, cleanly (its disks flushed); the guest is not asked */
  const quit = async (): Promise<boolean> => {
    if (!qmp) return false;
    stage('quit');
    try {
      await qmp.execute('quit', undefined, short);
    } catch (e) {
      log.debug(`${vm.name}: quit: ${(e as Error).message}`);
    }
    return gone(Math.min(opts.timeoutMs, 10_000));
  };
  try {
    let gentle = !opts.force;
    if (gentle && qmp) {
      // a guest that cannot run cannot hear the agent or ACPI: don't wait for them
      let run = 'running';
      try {
        run = ((await qmp.execute('query-status', undefined, short)) as { status: string }).status;
      } catch (e) {
        log.debug(`${vm.name}: query-status: ${(e as Error).message}`);
      }
      if (RESUMABLE.has(run)) {
        try {
          await qmp.execute(run === 'suspended' ? 'system_wakeup' : 'cont', undefined, short);
          say(`${vm.name} was ${run}: ${run === 'suspended' ? 'woke it up' : 'resumed it'} so that it can shut down`);
        } catch (e) {
          say(`${vm.name} is ${run} and did not resume (${(e as Error).message}): telling QEMU to quit`);
          if (await quit()) return done('quit');
          gentle = false;
        }
      } else if (!GENTLE.has(run)) {
        say(`${vm.name} is in state ${run}, where the guest cannot shut itself down: telling QEMU to quit`);
        if (await quit()) return done('quit');
        gentle = false;
      }
    }
    if (gentle) {
      if (vm.meta?.agent !== false) {
        try {
          stage('agent');
          const ga = await GaClient.connect(vm.files.ga, short);
          try {
            await ga.execute('guest-shutdown', undefined, short);
          } finally {
            ga.close();
          }
          log.debug(`${vm.name}: guest agent took guest-shutdown`);
          if (await gone(opts.timeoutMs)) return done('agent');
        } catch (e) {
          log.debug(`${vm.name}: guest agent: ${(e as Error).message}`);
        }
      }
      if (qmp) {
        const kboot = vm.meta?.kind === 'kboot';
        try {
          stage('acpi');
          await qmp.execute('system_powerdown', undefined, short);
          if (await gone(kboot ? Math.min(opts.timeoutMs, KBOOT_ACPI_MS) : opts.timeoutMs)) return done('acpi');
        } catch (e) {
          log.debug(`${vm.name}: system_powerdown: ${(e as Error).message}`);
          if (!isAlive(pid)) return done('acpi');
        }
        if (kboot && (await quit())) return done('quit');
      }
    }
    stage('sigterm');
    await signal(pid, 'SIGTERM', Boolean(vm.meta?.root));
    if (await gone(opts.timeoutMs)) return done('sigterm');
    stage('sigkill');
    await signal(pid, 'SIGKILL', Boolean(vm.meta?.root));
    if (await gone(10_000)) return done('sigkill');
    throw new PimError(EXIT.TEMPFAIL, `${vm.name} (pid ${pid}) is still alive after SIGKILL`);
  } finally {
    qmp?.close();
  }
}

/**
 * A VM whose guest was asked to power itself off (pim-build, after
 * generalizing): wait for QEMU to exit, by its QMP connection closing (by its
 * pid where QMP no longer answers: QEMU is on its way out). Its files are
 * cleaned up as stopVm's are; null when it still runs after `timeoutMs` (then
 * stopVm's chain).
 */
export async function awaitPoweroff(vm: RunningVm, timeoutMs: number): Promise<StopResult | null> {
  const t0 = Date.now();
  const { QmpClient } = await import('../qemu/qmp.ts');
  let gone: boolean;
  let qmp: QmpClient | null = null;
  try {
    qmp = await QmpClient.connect(vm.files.qmp, { timeoutMs: Math.min(timeoutMs, 5_000) });
  } catch (e) {
    log.debug(`${vm.name}: QMP not available: ${(e as Error).message}`);
  }
  try {
    gone = qmp
      ? // QEMU closes QMP as it shuts down, then flushes the disk (seconds on a busy host) and exits
        (await qmp.waitClosed(Math.max(0, timeoutMs - (Date.now() - t0)))) &&
        (await waitExit(vm.pid, Math.max(5_000, timeoutMs - (Date.now() - t0))))
      : await waitExit(vm.pid, Math.max(0, timeoutMs - (Date.now() - t0)));
  } finally {
    qmp?.close();
  }
  if (!gone) return null;
  cleanupFiles(vm.files);
  return { name: vm.name, stage: 'guest', seconds: Math.round((Date.now() - t0) / 100) / 10 };
}
