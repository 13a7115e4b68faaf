/**
 * Internal qcow2 snapshots of a VM: through QMP while it runs, through
 * qemu-img while it is stopped.
 *
 * A running VM's snapshots are QMP jobs (QEMU 6+): `snapshot-save`,
 * `snapshot-load` and `snapshot-delete` start a job and return at once; the
 * job's JOB_STATUS_CHANGE events say when it has concluded (subscribed before
 * the job starts, so none is missed), `query-jobs` holds its error, and
 * `job-dismiss` clears it. No polling. A save holds the guest's RAM and
 * devices too, so a load puts the guest back where it was, running.
 *
 * A stopped VM is its image: a name in the image store, or a path. Its
 * snapshots are `qemu-img snapshot -c|-a|-l|-d`; a snapshot taken this way
 * holds the disk only.
 *
 * Refused, with why: a raw image (65: the format has no room for snapshots),
 * a VM started with --snapshot (69: its writes go to a temporary overlay that
 * QEMU throws away), a VM without a disk (69), a build's own image (77:
 * builds never change). A tag that is not there is 66; a tag that is there
 * already is 73 unless --force replaces it.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { existingRuntimeDir, imagesDir } from '../core/paths.ts';
import { checkName } from '../core/names.ts';
import type { QmpClient, QmpEvent } from '../qemu/qmp.ts';
import { withQmp } from './connect.ts';
import type { ImgSnapshot } from '../image/qemu-img.ts';
import { imageFormat, looksLikePath, storeImage } from '../image/store.ts';
import { buildOfDisk, isBuildDisk } from '../image/registry.ts';
import { sameFile } from '../core/fs.ts';
import { listVms, vmInfo, type RunningVm } from './state.ts';
import { vmRef } from './ref.ts';
import { imgInfo, imgSnapshot } from '../image/qemu-img.ts';

/** One snapshot, as pim prints it. */
export interface Snapshot {
  tag: string;
  id: string;
  /** bytes of RAM and device state; 0 for a disk-only snapshot (qemu-img, or a stopped VM) */
  vm_state: number;
  /** when it was taken, ISO time */
  date: string;
  /** the guest's clock at that moment, seconds */
  vm_clock: number;
}

export function toSnapshot(s: ImgSnapshot): Snapshot {
  return {
    tag: s.name,
    id: s.id,
    vm_state: s['vm-state-size'] ?? 0,
    date: new Date((s['date-sec'] ?? 0) * 1000 + Math.floor((s['date-nsec'] ?? 0) / 1e6)).toISOString(),
    vm_clock: Math.round(((s['vm-clock-sec'] ?? 0) + (s['vm-clock-nsec'] ?? 0) / 1e9) * 1000) / 1000,
  };
}

/** Tags are names (letters, digits, . _ -), never all digits: qemu-img and QEMU also match a tag against snapshot IDs. */
export function checkTag(tag: string): string {
  try {
    checkName(tag);
  } catch {
    throw new PimError(
      EXIT.USAGE,
      `bad snapshot tag ${JSON.stringify(tag)}: use letters, digits, ".", "_" and "-" (at most 64), starting with a letter or digit`,
    );
  }
  if (/^\d+$/.test(tag))
    throw new PimError(
      EXIT.USAGE,
      `bad snapshot tag ${JSON.stringify(tag)}: a tag of digits only would be taken for a snapshot ID; add a letter`,
    );
  return tag;
}

/** What `pim-snapshot TARGET` works on: a running VM, or an image file. */
export type SnapTarget =
  | { kind: 'running'; name: string; vm: RunningVm }
  | { kind: 'image'; name: string; path: string };

/** The running VM whose disk is `path`, if any (a VM started from a path, or under another name). */
async function vmUsing(path: string): Promise<RunningVm | null> {
  const dir = existingRuntimeDir();
  if (!dir) return null;
  for (const v of await listVms(dir))
    if (v.state === 'running' && v.meta?.image && (v.meta.image === path || sameFile(v.meta.image, path)))
      return v as RunningVm;
  return null;
}

/**
 * TARGET: a running VM by name, else an image in the store by name, else a
 * path to an image. An image that a running VM uses is that VM (QMP, not
 * qemu-img, which its lock would refuse).
 */
export async function snapshotTarget(target: string): Promise<SnapTarget> {
  let path: string;
  let name: string;
  if (looksLikePath(target)) {
    path = resolve(target);
    if (!existsSync(path)) throw new PimError(EXIT.NOINPUT, `image ${path} does not exist; check the path`);
    name = target;
  } else {
    checkName(target);
    const info = await vmInfo(vmRef(target));
    if (info.state === 'running') {
      if (info.meta?.image) refuseBuild(info.meta.image);
      return { kind: 'running', name: target, vm: info as RunningVm };
    }
    if (info.state === 'starting')
      throw new PimError(EXIT.TEMPFAIL, `${target} is still starting; try again in a moment`);
    const found = storeImage(target);
    if (!found) {
      throw new PimError(
        EXIT.NOINPUT,
        `${target} is not running and there is no image ${target} in ${imagesDir()}; see pim-ps --all, or pass a path to an image`,
      );
    }
    path = found;
    name = target;
  }
  refuseBuild(path);
  const vm = await vmUsing(path);
  if (vm) return { kind: 'running', name: vm.name, vm };
  if (imageFormat(path) !== 'qcow2') throw rawRefused(path);
  return { kind: 'image', name, path };
}

/** A build's own image (however its path is spelled, or a VM runs on it) is 77: builds never change. */
function refuseBuild(path: string): void {
  const b = buildOfDisk(path);
  if (b && isBuildDisk(b, path)) {
    throw new PimError(
      EXIT.NOPERM,
      `${path} is the image of build ${b.id}, and builds never change; take snapshots of the VM that runs it (pim-run ${b.profile} boots an overlay of it: pim-snapshot ${b.profile} ...)`,
    );
  }
}

const rawRefused = (path: string) =>
  new PimError(
    EXIT.DATAERR,
    `${path} is a raw image: only qcow2 images can hold snapshots (raw has no room for them); convert it with qemu-img convert -O qcow2 ${path} NEW.qcow2 and use that`,
  );

// --- a running VM: QMP ------------------------------------------------------

/** The part of a QMP connection that a job needs (a fake one in the unit tests). */
export type JobQmp = Pick<QmpClient, 'execute' | 'subscribe' | 'waitClosed'>;

interface QueryJob {
  id: string;
  type: string;
  status: string;
  error?: string;
}

/** A job that QEMU ran to its end and that failed: QEMU's own words. */
export class JobFailed extends PimError {
  readonly command: string;
  readonly reason: string;
  constructor(command: string, reason: string) {
    super(EXIT.DATAERR, `${command} failed: ${reason}`);
    this.command = command;
    this.reason = reason;
  }
}

let jobSeq = 0;

/**
 * Run QMP job command `command` and wait for its JOB_STATUS_CHANGE to
 * "concluded" (75 after `timeoutMs`, 69 when QEMU goes away meanwhile); then
 * read its error from query-jobs and dismiss it. Throws JobFailed with QEMU's
 * error.
 */
export async function runJob(
  q: JobQmp,
  command: string,
  args: Record<string, unknown>,
  timeoutMs: number,
): Promise<void> {
  const id = `pim-${command}-${process.pid}-${++jobSeq}`;
  let concluded!: () => void;
  const done = new Promise<'done'>((r) => (concluded = () => r('done')));
  const off = q.subscribe((ev: QmpEvent) => {
    const d = ev.data as { id?: string; status?: string } | undefined;
    if (ev.event === 'JOB_STATUS_CHANGE' && d?.id === id && d.status === 'concluded') concluded();
  });
  let timer: NodeJS.Timeout | undefined;
  try {
    await q.execute(command, { 'job-id': id, ...args });
    const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs)));
    const closed = q.waitClosed(timeoutMs + 1_000).then((c) => (c ? ('closed' as const) : ('timeout' as const)));
    const how = await Promise.race([done, timedOut, closed]);
    if (how === 'closed') throw new PimError(EXIT.UNAVAILABLE, `QEMU went away during ${command}; see pim-log`);
    if (how === 'timeout') {
      throw new PimError(
        EXIT.TEMPFAIL,
        `${command} did not finish within ${timeoutMs / 1000} s; QEMU goes on with it (job ${id}: pim-qmp NAME query-jobs)`,
      );
    }
    const jobs = (await q.execute('query-jobs')) as QueryJob[];
    const job = jobs.find((j) => j.id === id);
    await q.execute('job-dismiss', { id }).catch(() => undefined);
    if (job?.error) throw new JobFailed(command, job.error);
  } finally {
    clearTimeout(timer);
    off();
  }
}

interface BlockInfo {
  device: string;
  inserted?: {
    'node-name': string;
    ro: boolean;
    drv: string;
    file: string;
    image?: { filename?: string; snapshots?: ImgSnapshot[] };
  };
}

export interface VmDisks {
  /** the node names of every writable disk: each holds the snapshot */
  devices: string[];
  /** the node that holds the RAM and device state (the main disk) */
  vmstate: string;
  /** the main disk's snapshots */
  snapshots: Snapshot[];
}

/**
 * The disks a snapshot of running VM `name` covers: every writable block
 * device but the UEFI vars flash (raw by nature; it keeps its contents across
 * a load). Refuses a --snapshot VM, a VM without a disk, and a raw disk.
 */
export function vmDisks(name: string, blocks: BlockInfo[], started: { snapshot?: boolean } | null): VmDisks {
  if (started?.snapshot) {
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${name} runs with --snapshot: its disk writes go to a temporary overlay that QEMU throws away when it stops, so it cannot keep snapshots; stop it (pim-stop ${name}) and run it again without --snapshot`,
    );
  }
  const disks = blocks.filter((b) => b.inserted && !b.inserted.ro && !/^pflash\d*$/.test(b.device));
  if (!disks.length)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${name} has no writable disk to hold a snapshot (a VM booted with pim-kboot has none)`,
    );
  for (const d of disks)
    if (d.inserted!.drv !== 'qcow2') throw rawRefused(d.inserted!.image?.filename ?? d.inserted!.file);
  const main = disks.find((d) => d.device === 'disk0') ?? disks[0]!;
  return {
    devices: disks.map((d) => d.inserted!['node-name']),
    vmstate: main.inserted!['node-name'],
    snapshots: (main.inserted!.image?.snapshots ?? []).map(toSnapshot),
  };
}

async function disksOf(q: QmpClient, vm: RunningVm): Promise<VmDisks> {
  return vmDisks(vm.name, (await q.execute('query-block')) as BlockInfo[], vm.meta);
}

const noSuchTag = (name: string, tag: string) =>
  new PimError(EXIT.NOINPUT, `${name} has no snapshot ${tag}; see pim-snapshot ${name} list`);
const tagExists = (name: string, tag: string) =>
  new PimError(
    EXIT.CANTCREAT,
    `${name} already has a snapshot ${tag}; remove it first (pim-snapshot ${name} rm ${tag}) or replace it with --force`,
  );

export type SnapshotAction = 'save' | 'load' | 'rm';

export interface ActionOpts {
  /** save: replace a snapshot of the same tag */
  force?: boolean;
  /** how long a QMP job may take */
  timeoutMs: number;
}

/** QMP of a running VM: connected within the job's time, at most 30 s. */
const withVmQmp = <T>(vm: RunningVm, timeoutMs: number, fn: (q: QmpClient) => Promise<T>): Promise<T> =>
  withQmp(vm, Math.min(timeoutMs, 30_000), fn);

/** The snapshots of a running VM or an image. */
export async function listSnapshots(t: SnapTarget, timeoutMs: number): Promise<Snapshot[]> {
  if (t.kind === 'running') return withVmQmp(t.vm, timeoutMs, async (q) => (await disksOf(q, t.vm)).snapshots);
  return ((await imgInfo(t.path)).snapshots ?? []).map(toSnapshot);
}

/** save, load or rm snapshot `tag` of a running VM or an image. */
export async function snapshotAction(t: SnapTarget, action: SnapshotAction, tag: string, o: ActionOpts): Promise<void> {
  if (t.kind === 'running') return withVmQmp(t.vm, o.timeoutMs, (q) => runningAction(q, t.vm, action, tag, o));
  const have = ((await imgInfo(t.path)).snapshots ?? []).filter((s) => s.name === tag);
  if (action === 'save') {
    if (have.length && !o.force) throw tagExists(t.name, tag);
    for (let i = 0; i < have.length; i++) await imgSnapshot(t.path, 'delete', tag);
    return imgSnapshot(t.path, 'create', tag);
  }
  if (!have.length) throw noSuchTag(t.name, tag);
  return imgSnapshot(t.path, action === 'load' ? 'apply' : 'delete', tag);
}

async function runningAction(
  q: QmpClient,
  vm: RunningVm,
  action: SnapshotAction,
  tag: string,
  o: ActionOpts,
): Promise<void> {
  const { devices, vmstate, snapshots } = await disksOf(q, vm);
  const have = snapshots.filter((s) => s.tag === tag);
  const name = vm.name;
  if (action === 'save') {
    if (have.length && !o.force) throw tagExists(name, tag);
    for (let i = 0; i < have.length; i++) await runJob(q, 'snapshot-delete', { tag, devices }, o.timeoutMs);
    return runJob(q, 'snapshot-save', { tag, vmstate, devices }, o.timeoutMs);
  }
  if (!have.length) throw noSuchTag(name, tag);
  if (action === 'rm') return runJob(q, 'snapshot-delete', { tag, devices }, o.timeoutMs);
  if (have.every((s) => s.vm_state === 0)) {
    throw new PimError(
      EXIT.DATAERR,
      `snapshot ${tag} of ${name} holds the disk only (it was taken while the VM was stopped), so it cannot be loaded into the running VM; stop it (pim-stop ${name}) and load it then`,
    );
  }
  try {
    await runJob(q, 'snapshot-load', { tag, vmstate, devices }, o.timeoutMs);
  } catch (e) {
    if (!(e instanceof JobFailed)) throw e;
    // QEMU stops the VM for a load and resumes it only when the load succeeded
    const st = (await q.execute('query-status').catch(() => null)) as { status: string; running: boolean } | null;
    const left =
      st && !st.running
        ? `; ${name} is left stopped (status ${st.status}), its state may be half loaded: load another snapshot, or stop it (pim-stop --force ${name})`
        : '';
    throw new PimError(EXIT.DATAERR, `${e.message}${left}`);
  }
}
