/**
 * What every pim-build builder that boots a VM shares: the build log, the
 * context of a build, what a builder's first step gets (BootEnv), and the
 * wait for an installer's boot to power off (waitPoweroff). lib/builder/build.ts
 * runs the phases; an installer's first boot is there, cloud-init's disk and
 * seed in cloud.ts.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { buildsDir, stateDir } from '../core/paths.ts';
import { waitExit } from '../core/proc.ts';
import { checkAborted } from '../core/signals.ts';
import { QmpClient } from '../qemu/qmp.ts';
import type { BuildRecord } from '../image/registry.ts';
import type { startVm } from '../vm/plan.ts';
import type { VmRef } from '../vm/ref.ts';
import { logTail, type RunningVm } from '../vm/state.ts';
import type { BuildPlan, buildInputs } from './plan.ts';
import { stagesDir, type StageKeys } from './stages.ts';
import type { BuildOpts } from './types.ts';

/** A build log: a private file that outlives the build, named in every error. */
export class BuildLog {
  readonly path: string;
  private readonly fd: number;
  constructor(id: string) {
    const dir = ensurePrivateDir(join(stateDir(), 'build-logs'));
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    this.path = join(dir, `${id}-${stamp}.log`);
    this.fd = fs.openSync(
      this.path,
      fs.constants.O_CREAT |
        fs.constants.O_EXCL |
        fs.constants.O_WRONLY |
        fs.constants.O_APPEND |
        fs.constants.O_NOFOLLOW,
      0o600,
    );
  }
  write(text: string | Buffer): void {
    try {
      fs.writeSync(this.fd, typeof text === 'string' ? Buffer.from(text) : text);
    } catch {
      /* a full disk must not hide the real error */
    }
  }
  line(text: string): void {
    this.write(`[${new Date().toISOString()}] ${text}\n`);
  }
  section(title: string, text: string | Buffer): void {
    this.write(`\n===== ${title} =====\n`);
    this.write(text);
    this.write('\n');
  }
  close(): void {
    fs.closeSync(this.fd);
  }
}

export const tail = (lines: string[]) => lines.map((l) => `  | ${l.replace(/\r$/, '')}`).join('\n');

export interface Ctx {
  id: string;
  key: string;
  inputs: ReturnType<typeof buildInputs>;
  iso: { path: string; checksum: string };
  t0: number;
  /** the keys of the build's stages (stages.ts) and what each covers */
  stages: StageKeys;
  /** from: the parent profile's build, the install stage */
  parent?: BuildRecord;
}

/** What a builder's first boot gets: the build's disk to fill, its log, and a way to boot the build's VM. */
export interface BootEnv {
  o: BuildOpts;
  plan: BuildPlan;
  c: Ctx;
  tmp: string;
  disk: string;
  log: BuildLog;
  deadline: number;
  ref: VmRef;
  /** the profile with pim's per-build key added to ssh_keys, for the answer files the guest gets */
  served: BuildPlan['profile'];
  /** boot the build's VM on the disk; the VM is the build's to stop until the builder's wait returns */
  bootVm: (agent: boolean, spec?: Parameters<StartVm>[0]['spec']) => Promise<RunningVm>;
  /** the first boot's VM has exited (its files are cleaned up) */
  exited: () => Promise<void>;
}

/**
 * A builder's first step: make the disk (an installer: boot it once, and return
 * when that VM has powered off); what it returns is attached to the
 * provisioning boot (cloud-init's seed).
 */
export type FirstBoot = (
  env: BootEnv,
) => Promise<{ drives?: NonNullable<Parameters<StartVm>[0]['spec']>['drives'] } | void>;
type StartVm = typeof startVm;

export function readLog(ref: VmRef): string {
  try {
    return fs.readFileSync(ref.files.log, 'utf8');
  } catch {
    return '';
  }
}

/**
 * The first boot's wait. An installer (`fetchedP` given) must fetch its answer
 * file within the fetch bound (else 69); then QEMU must exit, the guest having
 * powered off, within the build's deadline (else 75). A write error for lack
 * of space stops the VM (QEMU pauses it): 73.
 */
export async function waitPoweroff(
  env: BootEnv,
  vm: RunningVm,
  what: 'the installer',
  fetchedP?: Promise<void>,
): Promise<void> {
  const { o, plan, ref, deadline, log } = env;
  const q = await QmpClient.connect(vm.files.qmp, { timeoutMs: 10_000 });
  const st = o.status;
  const detail = setInterval(() => st.update(logTail(ref.files.log, 1)[0] ?? ''), 1000);
  try {
    let ioError: string | null = null;
    let failIo: () => void = () => {};
    const ioP = new Promise<'io'>((r) => (failIo = () => r('io')));
    q.subscribe((ev) => {
      if (ev.event !== 'BLOCK_IO_ERROR') return;
      const d = (ev.data ?? {}) as { nospace?: boolean; reason?: string };
      ioError = d.nospace ? 'nospace' : (d.reason ?? 'I/O error');
      failIo();
    });
    const closed = q
      .waitClosed(Math.max(0, deadline - Date.now()))
      .then((c) => (c ? 'exited' : 'timeout') as 'exited' | 'timeout');
    const aborted = new Promise<'abort'>((r) => o.signal.addEventListener('abort', () => r('abort'), { once: true }));
    const serial = () => tail(logTail(ref.files.log, 15));
    if (fetchedP) {
      const fetchBound = (o.fetchTimeoutS ?? 300) * 1000;
      let fetchTimer: NodeJS.Timeout | undefined;
      const fetchTimeout = new Promise<'nofetch'>(
        (r) => (fetchTimer = setTimeout(() => r('nofetch'), Math.min(fetchBound, Math.max(0, deadline - Date.now())))),
      );
      const first = await Promise.race([fetchedP.then(() => 'fetched' as const), closed, aborted, fetchTimeout, ioP]);
      clearTimeout(fetchTimer);
      if (first === 'abort') checkAborted(o.signal);
      if (first === 'io') throw ioFailure(ioError, plan);
      if (first === 'nofetch') {
        throw new PimError(
          EXIT.UNAVAILABLE,
          `the installer did not fetch its answer file within ${Math.round(fetchBound / 1000)} s; check the ISO's boot paths (boot.kernel, boot.initrd) and that it understands ${plan.layout === 'debian' ? 'url=' : 'ds=nocloud;s='}. Last console lines:\n${serial()}`,
        );
      }
      if (first === 'exited' || first === 'timeout') {
        throw new PimError(
          first === 'timeout' ? EXIT.TEMPFAIL : EXIT.UNAVAILABLE,
          `the installer ${first === 'timeout' ? 'timed out' : 'stopped'} before it fetched its answer file. Last console lines:\n${serial()}`,
        );
      }
      log.line('the installer fetched its answer file');
    }
    const end = await Promise.race([closed, aborted, ioP]);
    if (end === 'abort') checkAborted(o.signal);
    if (end === 'io') throw ioFailure(ioError, plan);
    if (end === 'timeout') {
      throw new PimError(
        EXIT.TEMPFAIL,
        `${what} did not power off within the build's ${Math.round(plan.timeoutMs / 1000)} s (timeout in the profile, or --timeout). Last console lines:\n${serial()}`,
      );
    }
    await waitExit(vm.pid, 10_000);
    o.status.say(`the installer powered off (${o.status.elapsed()})`);
  } finally {
    clearInterval(detail);
    q.close();
  }
}

function ioFailure(why: string | null, plan: BuildPlan): PimError {
  if (why === 'nospace')
    return new PimError(
      EXIT.CANTCREAT,
      `no space left for the build disk in ${buildsDir()} or its install stage in ${stagesDir()} (it may grow to ${plan.disk.size}); free some space and build again`,
    );
  return new PimError(EXIT.CANTCREAT, `writing the build disk failed: ${why}`);
}
