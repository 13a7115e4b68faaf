/**
 * How a live VM is doing, as QEMU says (QMP query-status), and what that
 * teaches pim about KVM (lib/qemu/accel.ts): pim-ps, pim-status and a default
 * KVM start all look through here, so whichever sees a KVM VM in
 * `internal-error` first marks KVM broken, and whichever sees one running for
 * long enough marks it working.
 *
 * A query is bounded: a QEMU that does not answer (stopped with SIGSTOP, or
 * whose QMP socket another client holds: QEMU serves one at a time) gives
 * null, never a hang.
 */
import { existsSync } from 'node:fs';
import { cleanupFiles, listVms, logTail, type VmInfo, type VmMeta } from './state.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import { QmpClient as Qmp } from '../qemu/qmp.ts';

// lib/qemu/accel.ts (with the host probe's node:net and the logger) is loaded
// only for a KVM VM: pim-ps of TCG VMs starts without it
const accel = () => import('../qemu/accel.ts');

export interface LiveStatus {
  /** QMP's RunState: running, paused, internal-error, shutdown, guest-panicked, ... */
  status: string;
  running: boolean;
}

/** Seconds since the VM started (its metadata), or null. */
export function runSeconds(meta: Pick<VmMeta, 'started'> | null | undefined, now = Date.now()): number | null {
  if (!meta?.started) return null;
  const t = Date.parse(meta.started);
  return Number.isNaN(t) ? null : Math.max(0, Math.round((now - t) / 1000));
}

/** query-status of a live VM within `timeoutMs` in all (connect, greeting, reply); null when QMP does not answer. */
export async function queryStatus(vm: VmInfo, timeoutMs: number): Promise<LiveStatus | null> {
  if (!existsSync(vm.files.qmp)) return null; // no socket to ask (and no node:net to load)
  let client: QmpClient | null = null;
  let late = false;
  const work = (async () => {
    const c = await Qmp.connect(vm.files.qmp, { timeoutMs });
    if (late) {
      c.close();
      return null;
    }
    client = c;
    return (await c.execute('query-status', undefined, timeoutMs)) as LiveStatus;
  })().catch(() => null);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<null>((resolve) => {
    timer = setTimeout(() => {
      late = true;
      resolve(null);
    }, timeoutMs);
  });
  try {
    const st = await Promise.race([work, deadline]);
    if (st) await noteStatus(vm, st);
    return st;
  } finally {
    clearTimeout(timer);
    (client as QmpClient | null)?.close();
  }
}

/**
 * What a QMP status says about KVM, remembered: `internal-error` on a KVM VM
 * marks KVM broken, `running` long enough marks it working. Returns the
 * verdict this wrote, if any.
 */
export async function noteStatus(
  vm: Pick<VmInfo, 'meta'>,
  st: LiveStatus,
  now = Date.now(),
): Promise<'ok' | 'broken' | null> {
  if (vm.meta?.accel !== 'kvm') return null;
  return (await accel()).noteKvmStatus(vm.meta.accel, st.status, runSeconds(vm.meta, now));
}

/** A KVM VM found dead: when its log says KVM failed (QEMU aborted), KVM is marked broken. True when it did. */
export async function noteDeadVm(info: VmInfo): Promise<boolean> {
  if (info.meta?.accel !== 'kvm') return false;
  const { isKvmFailure, markKvmBroken } = await accel();
  return isKvmFailure(logTail(info.files.log, 40).join('\n')) && markKvmBroken();
}

/** The message for a VM that stopped with a KVM internal error (pim-ps and pim-status print it once). */
export const kvmErrorHint = (name: string) =>
  `${name} stopped with a KVM internal error: KVM fails on this host, so new VMs use TCG from now on; restart it (pim-stop ${name}, then pim-run) to run it on TCG`;

/**
 * Before a start that would use KVM by default with no verdict yet: what the
 * other VMs say. Every live KVM VM is asked for its status (at once, bounded),
 * dead ones' logs are read (and their files cleaned up, as pim-ps does).
 * Returns the verdict after that.
 */
export async function surveyKvm(dir: string, timeoutMs = 1_000): Promise<'ok' | 'broken' | null> {
  const vms = await listVms(dir, { keepStale: true });
  await Promise.all(
    vms.map(async (v) => {
      if (v.state === 'stale') {
        await noteDeadVm(v);
        cleanupFiles(v.files);
      } else if (v.state === 'running' && v.meta?.accel === 'kvm') await queryStatus(v, timeoutMs);
    }),
  );
  return (await accel()).readKvmVerdict();
}
