/** Open QMP or the guest agent of a running VM by name, with clear errors. */
import { EXIT, PimError } from '../core/exit.ts';
import { requireRunning, type RunningVm } from './state.ts';
import { vmRef } from './ref.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import type { GaClient } from '../qemu/ga.ts';

/** The running VM `name` (64 for a bad name, 69 when it does not run). */
export async function runningVm(name: string): Promise<RunningVm> {
  return requireRunning(vmRef(name));
}

export async function withQmp<T>(name: string, timeoutMs: number, fn: (q: QmpClient, vm: RunningVm) => Promise<T>): Promise<T> {
  const vm = await runningVm(name);
  const { QmpClient } = await import('../qemu/qmp.ts');
  const q = await QmpClient.connect(vm.files.qmp, { timeoutMs });
  try {
    return await fn(q, vm);
  } finally {
    q.close();
  }
}

export async function withGa<T>(name: string, timeoutMs: number, fn: (g: GaClient, vm: RunningVm) => Promise<T>): Promise<T> {
  const vm = await runningVm(name);
  if (vm.meta && !vm.meta.agent) throw new PimError(EXIT.UNAVAILABLE, `${name} was started without a guest-agent channel`);
  const { GaClient } = await import('../qemu/ga.ts');
  const g = await GaClient.connect(vm.files.ga, timeoutMs);
  try {
    return await fn(g, vm);
  } finally {
    g.close();
  }
}

/** pim-qmp and pim-ga: one raw command, its `return` value printed as JSON. */
export async function rawCommand(kind: 'qmp' | 'ga', name: string, command: string, rawArgs: string | undefined, timeoutMs: number): Promise<void> {
  const { jsonArg } = await import('../cli/args.ts');
  const { printJson } = await import('../cli/output.ts');
  const a = jsonArg(rawArgs);
  const ret = kind === 'qmp' ? await withQmp(name, timeoutMs, (q) => q.execute(command, a, timeoutMs)) : await withGa(name, timeoutMs, (g) => g.execute(command, a, timeoutMs));
  printJson(ret ?? {});
}
