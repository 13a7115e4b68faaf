/**
 * Stopping a VM, gently first: guest agent (guest-shutdown) -> ACPI power
 * button (QMP system_powerdown) -> SIGTERM -> SIGKILL. pim-ssh's cached
 * master connections are closed before (ssh -O exit, bounded). Each stage waits up to
 * the timeout for QEMU to exit. The signal is the QMP connection closing
 * (QEMU closes it as it exits), at every stage; only a VM whose QMP socket
 * does not answer is watched by polling its pid, since a process that is
 * not our child has no other portable exit notification.
 */
import { EXIT, PimError } from '../core/exit.ts';
import { isAlive, waitExit } from '../core/proc.ts';
import { cleanupFiles, type RunningVm } from './state.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import { log } from '../core/log.ts';

export type StopStage = 'agent' | 'acpi' | 'sigterm' | 'sigkill';

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
    const { run } = await import('../core/run.ts');
    const r = await run('sudo', ['-n', 'kill', `-${sig.slice(3)}`, String(pid)]);
    if (r.code !== 0) throw new PimError(EXIT.NOPERM, `sudo refused to send ${sig} to the root-owned QEMU (pid ${pid}); allow "kill" in your sudoers rule or stop it with sudo`);
  }
}

export async function stopVm(vm: RunningVm, opts: { timeoutMs: number; force?: boolean }): Promise<StopResult> {
  const pid = vm.pid;
  const t0 = Date.now();
  const done = (stage: StopStage): StopResult => {
    cleanupFiles(vm.files);
    return { name: vm.name, stage, seconds: Math.round((Date.now() - t0) / 100) / 10 };
  };
  const short = Math.min(opts.timeoutMs, 5_000);
  // pim-ssh's cached connections first (ssh -O exit), best effort and bounded
  const { closeMasters } = await import('./reach.ts');
  await closeMasters(vm, 3_000);
  let qmp: QmpClient | null = null;
  const { QmpClient } = await import('../qemu/qmp.ts');
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
  try {
    if (!opts.force) {
      if (vm.meta?.agent !== false) {
        try {
          const { GaClient } = await import('../qemu/ga.ts');
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
        try {
          await qmp.execute('system_powerdown', undefined, short);
          if (await gone(opts.timeoutMs)) return done('acpi');
        } catch (e) {
          log.debug(`${vm.name}: system_powerdown: ${(e as Error).message}`);
          if (!isAlive(pid)) return done('acpi');
        }
      }
    }
    await signal(pid, 'SIGTERM', Boolean(vm.meta?.root));
    if (await gone(opts.timeoutMs)) return done('sigterm');
    await signal(pid, 'SIGKILL', Boolean(vm.meta?.root));
    if (await gone(10_000)) return done('sigkill');
    throw new PimError(EXIT.TEMPFAIL, `${vm.name} (pid ${pid}) is still alive after SIGKILL`);
  } finally {
    qmp?.close();
  }
}
