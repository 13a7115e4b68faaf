/** Open QMP or the guest agent of a running VM by name, with clear errors. */
import { checkName } from '../core/names.ts';
import { ensureRuntimeDir } from '../core/paths.ts';
import { requireRunning, type VmInfo } from './state.ts';
import { EXIT, PimError } from '../core/exit.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import type { GaClient } from '../qemu/ga.ts';

export async function runningVm(name: string): Promise<VmInfo> {
  checkName(name);
  return requireRunning(name, ensureRuntimeDir());
}

export async function withQmp<T>(name: string, timeoutMs: number, fn: (q: QmpClient, vm: VmInfo) => Promise<T>): Promise<T> {
  const vm = await runningVm(name);
  const { QmpClient } = await import('../qemu/qmp.ts');
  const q = await QmpClient.connect(vm.files.qmp, { timeoutMs });
  try {
    return await fn(q, vm);
  } finally {
    q.close();
  }
}

export async function withGa<T>(name: string, timeoutMs: number, fn: (g: GaClient, vm: VmInfo) => Promise<T>): Promise<T> {
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

/** --timeout in seconds -> ms, with a usage error for nonsense. */
export function timeoutMs(v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt * 1000;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new PimError(EXIT.USAGE, `--timeout must be a positive number of seconds`);
  return Math.round(n * 1000);
}

/** Parse JSON arguments given on the command line (exit 64 when they do not parse). */
export function jsonArg(text: string | undefined): unknown {
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v;
  } catch (e) {
    throw new PimError(EXIT.USAGE, `arguments must be a JSON object such as '{"key":"value"}': ${(e as Error).message}`);
  }
}
