/**
 * pim-ctl's four actions on a running VM, each ending with the VM's state as
 * QMP reports it:
 *
 * - pause:  QMP `stop` (the vCPUs stop; QEMU and its sockets stay).
 * - resume: QMP `cont` (`system_wakeup` for a guest suspended to RAM).
 * - reboot: the gentle one. The guest agent's `guest-shutdown` with mode
 *   `reboot`: the guest's own shutdown runs, then it resets. There is no
 *   fallback: ACPI has no reboot button, and resetting a guest that was asked
 *   for a clean reboot is for the user to choose (`reset`), so a VM without
 *   an answering agent is exit 69 with that advice.
 * - reset:  the hard one. QMP `system_reset`, like the reset button: no
 *   shutdown in the guest. A VM that had stopped on an error (internal-error,
 *   guest-panicked) is continued after it; a paused one stays paused (QEMU
 *   calls that state prelaunch).
 *
 * reboot and reset return once QEMU reports the RESET event (subscribed to
 * before the request, so it cannot be missed). A VM started with -no-reboot
 * (pim-kboot, pim-build) exits instead of resetting: exit 69, said so.
 */
import { EXIT, PimError } from '../core/exit.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import type { RunningVm } from './state.ts';
import { withQmp, withGa } from './connect.ts';

export const CTL_ACTIONS = ['pause', 'resume', 'reboot', 'reset'] as const;
export type CtlAction = (typeof CTL_ACTIONS)[number];

export interface CtlResult {
  name: string;
  state: string;
  /** said on stderr: nothing to do, or what to do next */
  note?: string;
}

/** Run states that only a reset leaves (QEMU: runstate_needs_reset). */
const NEEDS_RESET = new Set(['internal-error', 'guest-panicked', 'shutdown']);

interface Status {
  status: string;
  running: boolean;
}

const status = async (q: QmpClient) => (await q.execute('query-status')) as Status;

export function parseAction(word: string): CtlAction {
  if ((CTL_ACTIONS as readonly string[]).includes(word)) return word as CtlAction;
  throw new PimError(EXIT.USAGE, `the action must be one of ${CTL_ACTIONS.join(', ')}, not ${JSON.stringify(word)}`);
}

export async function ctlVm(vm: RunningVm, action: CtlAction, timeoutMs: number): Promise<CtlResult> {
  return withQmp(vm, timeoutMs, async (q) => {
    const before = await status(q);
    const done = async (note?: string): Promise<CtlResult> => ({
      name: vm.name,
      state: (await status(q)).status,
      ...(note ? { note } : {}),
    });
    switch (action) {
      case 'pause':
        if (before.status === 'paused') return done(`${vm.name} is already paused`);
        if (!before.running) return done(`${vm.name} is not running (status ${before.status}); nothing to pause`);
        await q.execute('stop');
        return done();
      case 'resume':
        if (before.running) return done(`${vm.name} is already running`);
        if (NEEDS_RESET.has(before.status)) {
          throw new PimError(
            EXIT.UNAVAILABLE,
            `${vm.name} stopped with status ${before.status} and cannot just continue; pim-ctl ${vm.name} reset restarts it (see the log: ${vm.files.log})`,
          );
        }
        if (before.status === 'suspended') await q.execute('system_wakeup');
        else await q.execute('cont');
        return done();
      case 'reset': {
        const reset = q.waitEvent('RESET', timeoutMs);
        await q.execute('system_reset');
        await resetSeen(q, vm, reset, timeoutMs, 'reset');
        if (NEEDS_RESET.has(before.status)) {
          await q.execute('cont');
          return done(`${vm.name} had stopped with status ${before.status}: reset and continued`);
        }
        const after = await status(q);
        return {
          name: vm.name,
          state: after.status,
          ...(after.status === 'prelaunch'
            ? { note: `${vm.name} was paused and stays paused after the reset; pim-ctl ${vm.name} resume starts it` }
            : {}),
        };
      }
      case 'reboot': {
        if (!before.running) {
          throw new PimError(
            EXIT.UNAVAILABLE,
            `${vm.name} is not running inside QEMU (status ${before.status}), so its guest cannot reboot itself; ${before.status === 'paused' ? `pim-ctl ${vm.name} resume first, or ` : ''}pim-ctl ${vm.name} reset resets it hard`,
          );
        }
        if (vm.meta && !vm.meta.agent)
          throw new PimError(
            EXIT.UNAVAILABLE,
            `${vm.name} has no guest-agent channel to ask for a reboot; pim-ctl ${vm.name} reset resets it hard`,
          );
        const reset = q.waitEvent('RESET', timeoutMs);
        // guest-shutdown has no reply; the guest-sync after it may get none
        // either when the guest resets at once: then the RESET event is the answer
        const asked = askReboot(vm, Math.min(timeoutMs, 10_000));
        asked.catch(() => undefined);
        const first = await Promise.race([asked.then(() => 'asked'), reset.then((ev) => (ev ? 'reset' : 'none'))]);
        if (first !== 'reset') {
          await asked;
          await resetSeen(q, vm, reset, timeoutMs, 'reboot');
        }
        return done();
      }
    }
  });
}

/** guest-shutdown mode reboot, with advice when no agent answers. */
async function askReboot(vm: RunningVm, ms: number): Promise<void> {
  try {
    await withGa(vm, ms, (g) => g.execute('guest-shutdown', { mode: 'reboot' }, ms));
  } catch (e) {
    if (e instanceof PimError && e.code === EXIT.UNAVAILABLE) {
      throw new PimError(
        EXIT.UNAVAILABLE,
        `${e.message.replace(/;.*$/, '')}; a reboot needs the guest agent (pim-ctl ${vm.name} reset resets it hard)`,
      );
    }
    throw e;
  }
}

async function resetSeen(
  q: QmpClient,
  vm: RunningVm,
  reset: Promise<unknown>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  if (await reset) return;
  if (await q.waitClosed(0)) {
    throw new PimError(
      EXIT.UNAVAILABLE,
      `QEMU exited instead of resetting: ${vm.name} runs with -no-reboot${vm.meta?.kind && vm.meta.kind !== 'run' ? ` (a ${vm.meta.kind} VM)` : ''}; start it again`,
    );
  }
  throw new PimError(
    EXIT.TEMPFAIL,
    what === 'reboot'
      ? `the guest took the reboot request but had not reset within ${timeoutMs / 1000} s; it may still be shutting down (pim-ctl ${vm.name} reset is the hard way)`
      : `QEMU did not report the reset within ${timeoutMs / 1000} s`,
  );
}
