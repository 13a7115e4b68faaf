/**
 * pim-build's work: from a profile to a provisioned, cached image.
 *
 *   1. resolve     the profile, its ISO (downloaded and verified through the
 *                  catalog when missing), answer files, scripts; the cache key
 *   2. hit?        a build with that key in the registry is the answer
 *   3. install     installer: an empty disk; pim's answer-file server in-process on a free
 *                  loopback port; the installer's kernel and initrd (out of
 *                  the ISO) booted directly, the URL on its command line, the
 *                  ISO as a CD, -no-reboot; wait for the answer file to be
 *                  fetched (bounded), then for QEMU to exit (bounded)
 *                  cloud-init (cloud.ts): a copy of the base image grown to
 *                  disk_size and a NoCloud seed, attached to the one boot below
 *   4. provision   the disk booted (discard=unmap) with an SSH port forward; the
 *                  host key pinned through the guest agent; (cloud-init: its
 *                  seeded run waited for and judged); each script run over one
 *                  ssh2 connection; pim's key removed; the guest generalized
 *                  (generalize.ts: machine-id, host keys, cloud-init state,
 *                  logs, fstrim) unless `generalize: false`
 *   5. store       a graceful stop (pim-stop's chain), then `qemu-img convert`
 *                  (-c with `compress: true`) into the build's directory,
 *                  moved atomically into the registry, read-only
 *
 * Nothing is left behind on a failure, a timeout or a signal: the VM is
 * killed, the server stopped, the temporary disk removed (kept with
 * --keep-failed). Every build writes a log (serial console, the server's
 * request log, provisioning output) whose path every error names.
 */
import * as fs from 'node:fs';
import { dirname, join } from 'node:path';
import type { Client as SshClient } from 'ssh2';
import { EXIT, PimError } from '../core/exit.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { termSafe } from '../core/termsafe.ts';
import { buildsDir, efivarsOf, STORE_FILES } from '../core/paths.ts';
import { isAlive } from '../core/proc.ts';
import { checkAborted } from '../core/signals.ts';
import { cpioNewcGzip } from '../archive/cpio.ts';
import { concatArchives } from '../archive/initramfs.ts';
import { ovmfVarsTemplate } from '../qemu/host.ts';
import { loadCatalog, resolveEntry } from '../config/catalog.ts';
import { loadProfile, withEnvHook } from '../config/profile.ts';
import { convertDisk, createDisk, createOverlay, imgCheck, imgInfo, rebaseUnsafe } from '../image/qemu-img.ts';
import {
  buildDisk,
  buildEfivars,
  buildId,
  cachedBuild,
  commitBuild,
  latestBuild,
  type BuildRecord,
  type StageLink,
} from '../image/registry.ts';
import type { Lock } from '../core/lock.ts';
import { ensureIso } from '../install/iso-store.ts';
import { renderAnswer, startServer } from '../install/serve.ts';
import { withGa, withQmp } from '../vm/connect.ts';
import { hostKeysViaAgent } from '../guest/hostkeys.ts';
import { startVm } from '../vm/plan.ts';
import { sshAddress } from '../guest/reach.ts';
import { vmRef, type VmRef } from '../vm/ref.ts';
import { cleanupFiles, logTail, type RunningVm } from '../vm/state.ts';
import { stopVm, type StopResult } from '../guest/stop.ts';
import { ensureUserKey, keyBlobOf, userKeyPath, userPublicKey } from '../guest/userkey.ts';
import { BuildLog, readLog, tail, waitPoweroff, type BootEnv, type Ctx, type FirstBoot } from './boot.ts';
import { buildVendorData, cloudInitDisk, waitCloudInit } from './cloud.ts';
import { directBoot } from './directboot.ts';
import { GENERALIZE_SCRIPT, powerOffGeneralized } from './generalize.ts';
import { LAYOUTS, bootFiles, installerCmdline } from './iso-boot.ts';
import { KEY_URL, buildInputs, buildKey, planBuild, type BuildPlan } from './plan.ts';
import { buildRaw } from './raw.ts';
import { connectWhenUp, exec, execText, newBuildKey, waitSshBanner } from './ssh.ts';
import {
  STAGE_FILES,
  ago,
  commitStage,
  PINNED,
  pinStage,
  stageDir,
  stageDiskFile,
  stageKeys,
  stageTmp,
  useStage,
  waitStageLock,
  type PinnedStage,
  type StageKeys,
  type StageRecord,
} from './stages.ts';
import type { BuildOpts, BuildOutcome } from './types.ts';

/** The build's VM name: the profile, "-build-" and the key's start (at most 64 characters). */
const vmNameFor = (profile: string, key: string) => `${profile.slice(0, 48)}-build-${key.slice(0, 8)}`;

export async function runBuild(o: BuildOpts): Promise<BuildOutcome> {
  const t0 = Date.now();
  const st = o.status;
  st.set(`resolving profile ${o.profile}`);
  const profile = await withEnvHook(await loadProfile(o.profile));
  if (profile.value.builder === 'raw') return buildRaw(o, profile, t0); // an empty disk: no ISO, no VM
  const plan = await planBuild(profile, { timeoutS: o.timeoutS });
  if (plan.from) return fromBuild(o, plan, t0);
  await checkSourceKind(plan);
  const { iso, inputs, key, stages } = await planKey(profile, plan, o.signal);
  const firstBoot = plan.builder === 'cloud-init' ? cloudInitDisk : installerBoot;
  return cachedBuild(plan.name, key, o.force, () =>
    buildIt(o, plan, { id: buildId(plan.name, key), key, inputs, iso, t0, stages }, firstBoot),
  );
}

/**
 * from: PROFILE: the parent's build first (built when it is not up to date:
 * a changed parent rebuilds both), then this profile's build on it. The
 * parent's build is the install stage; its key goes into this build's keys.
 */
async function fromBuild(o: BuildOpts, plan: BuildPlan, t0: number): Promise<BuildOutcome> {
  const chain = [...(o.chain ?? []), plan.name];
  if (chain.includes(plan.from!)) {
    const where = plan.profile.origins.from ?? `profile "${plan.name}"`;
    throw new PimError(EXIT.CONFIG, `${where}: from: ${[...chain, plan.from].join(' -> ')} is a cycle`);
  }
  o.status.set(`building ${plan.name}'s parent ${plan.from}`);
  const parent = await runBuild({ ...o, profile: plan.from!, force: false, chain });
  o.status.say(`${plan.name} starts from ${parent.record.id}${parent.hit ? ' (cached)' : ''}`);
  const { iso, inputs, key, stages } = await planKey(plan.profile, plan, o.signal, parent.record);
  const c = { id: buildId(plan.name, key), key, inputs, iso, t0, stages, parent: parent.record };
  return cachedBuild(plan.name, key, o.force, () => buildIt(o, plan, c, installerBoot));
}

/** The answer files of a cloud-init build: the NoCloud seed's two. */
export const CLOUD_ANSWERS = ['/user-data', '/meta-data'] as const;

/**
 * The build's cache key: the ISO or image (downloaded and verified if it is not
 * there yet), the answer files rendered with pim's placeholder key URL, and the
 * plan. runBuild builds under it; the remote cache (lib/oci/cache.ts) asks for it.
 */
export async function planKey(
  profile: Parameters<typeof planBuild>[0],
  plan: BuildPlan,
  signal?: AbortSignal,
  parent?: BuildRecord,
): Promise<{
  iso: { path: string; checksum: string };
  inputs: ReturnType<typeof buildInputs>;
  key: string;
  stages: StageKeys;
}> {
  if (plan.from) return fromKey(plan, parent);
  const iso = await isoWaited(plan.iso, signal);
  const answers: Record<string, string> = {};
  const routes = plan.builder === 'cloud-init' ? CLOUD_ANSWERS : LAYOUTS[plan.layout].answers;
  for (const route of routes) {
    const r = renderAnswer(route as '/preseed.cfg', profile, KEY_URL);
    if (!r)
      throw new PimError(
        EXIT.CONFIG,
        `profile "${profile.name}" has no ${route.slice(1)} template in preseeds.d; add one or set distro`,
      );
    answers[route] = r.body;
  }
  const vendor = plan.builder === 'cloud-init' ? buildVendorData(plan) : null;
  if (vendor) answers['/vendor-data'] = vendor;
  const inputs = buildInputs(plan, answers, { name: plan.iso, checksum: iso.checksum });
  return { iso, inputs, key: buildKey(inputs), stages: stageKeys(plan, inputs) };
}

/**
 * The ISO or image, downloaded and verified when missing; while another
 * build (run a b -j 2) or pim-iso downloads it (its lock is busy: 75), this
 * one waits for it and then finds it there.
 */
async function isoWaited(name: string, signal?: AbortSignal): Promise<{ path: string; checksum: string }> {
  for (;;) {
    try {
      return await ensureIso(name, { signal });
    } catch (e) {
      if (!(e instanceof PimError) || e.code !== EXIT.TEMPFAIL || !/^the download of ISO/.test(e.message)) throw e;
    }
    await new Promise((r) => setTimeout(r, 500));
    if (signal) checkAborted(signal);
  }
}

/** A from: build's keys: the parent's build (the one just built, else its newest: 66 when it has none) stands for the ISO. */
function fromKey(plan: BuildPlan, parent: BuildRecord | undefined) {
  const p = parent ?? latestBuild(plan.from!);
  if (!p)
    throw new PimError(
      EXIT.NOINPUT,
      `profile ${plan.from} (from: of ${plan.name}) has no build yet; run pim-build run ${plan.from}`,
    );
  const src = { name: `build:${p.id}`, checksum: p.key };
  const inputs = buildInputs(plan, {}, src);
  const iso = { name: src.name, checksum: p.key, path: buildDisk(p) };
  return { iso, inputs, key: buildKey(inputs), stages: stageKeys(plan, inputs, p.key) };
}

/** An installer build starts from an ISO, a cloud-init build from a disk image (kind: image): each refuses the other (78). */
async function checkSourceKind(plan: BuildPlan): Promise<void> {
  const entry = resolveEntry(await loadCatalog('isos'), plan.iso);
  const kind = entry.value.kind === 'image' ? 'image' : 'iso';
  const where = plan.profile.origins[plan.builder === 'cloud-init' ? 'image' : 'iso'] ?? `profile "${plan.name}"`;
  if (plan.builder === 'cloud-init' && kind !== 'image') {
    throw new PimError(
      EXIT.CONFIG,
      `${where}: image: "${plan.iso}" is an installer ISO; builder: cloud-init starts from a disk image (an isos.d entry with kind: image)`,
    );
  }
  if (plan.builder === 'installer' && kind === 'image') {
    throw new PimError(
      EXIT.CONFIG,
      `${where}: iso: "${plan.iso}" is a disk image (kind: image); to build from it set builder: cloud-init and image: ${plan.iso}`,
    );
  }
}

/** One build's running state: what a failure, a signal or the exit hook must clean up. */
interface Run {
  o: BuildOpts;
  plan: BuildPlan;
  c: Ctx;
  log: BuildLog;
  ref: VmRef;
  /** the build's temporary directory (its overlay, then the stored image) */
  tmp: string;
  /** an install stage being made (removed unless committed) */
  stageTmp: string | null;
  deadline: number;
  vm: RunningVm | null;
  /** which boot runs, and what the provisioning boot is waiting for (a failure then quotes the console's error lines) */
  booting: 'installer' | 'provisioning';
  waiting: 'ssh' | 'cloud-init' | null;
}

async function buildIt(o: BuildOpts, plan: BuildPlan, c: Ctx, firstBoot: FirstBoot): Promise<BuildRecord> {
  const tmp = join(buildsDir(), `.tmp-${c.id}-${process.pid}`);
  removeStaleTmp();
  fs.rmSync(tmp, { recursive: true, force: true });
  ensurePrivateDir(tmp);
  const r: Run = {
    o,
    plan,
    c,
    log: new BuildLog(c.id),
    ref: vmRef(vmNameFor(plan.name, c.key)),
    tmp,
    stageTmp: null,
    deadline: c.t0 + plan.timeoutMs,
    vm: null,
    booting: 'installer',
    waiting: null,
  };
  let ok = false;
  // whatever ends this process (a crash, an exit nobody awaited), the VM and the temporary disks go with it
  const lastResort = () => {
    if (r.vm) {
      try {
        process.kill(r.vm.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (!ok && !o.keepFailed) for (const d of [tmp, r.stageTmp]) if (d) fs.rmSync(d, { recursive: true, force: true });
  };
  process.on('exit', lastResort);
  r.log.line(
    `pim-build ${plan.name}: ${plan.builder}, key ${c.key}, ${plan.builder === 'cloud-init' ? 'image' : 'iso'} ${plan.iso} (${c.iso.checksum}), disk ${plan.disk.size} ${plan.disk.format}, ${plan.firmware}`,
  );
  r.log.section('inputs', JSON.stringify(c.inputs, null, 2));
  r.log.line(
    `stages: install ${c.stages.install.key}, provision ${c.stages.provision.key}, finish ${c.stages.finish.key}`,
  );
  try {
    const inst = await installStage(r, firstBoot);
    try {
      const record = inst.pending
        ? await oneBoot(r, inst.pending)
        : await provisionAndStore(r, inst.stage, inst.files!, inst.made);
      ok = true;
      return record;
    } finally {
      await inst.release();
    }
  } catch (e) {
    throw failure(r, e);
  } finally {
    // only a VM this build started is stopped (and its files removed): a name
    // that another VM held made startVm fail before anything was ours
    if (r.vm) await killVm(r.vm);
    if (!ok) leaveNothing(r);
    r.log.close();
    process.off('exit', lastResort);
  }
}

/** After a failure: the temporary disks removed, or kept (--keep-failed) and named. */
function leaveNothing(r: Run): void {
  const { tmp, o } = r;
  if (r.stageTmp && fs.existsSync(r.stageTmp)) {
    if (o.keepFailed && fs.existsSync(tmp)) fs.renameSync(r.stageTmp, join(tmp, 'install-stage'));
    else fs.rmSync(r.stageTmp, { recursive: true, force: true });
  }
  if (o.keepFailed && fs.existsSync(tmp)) {
    const kept = join(buildsDir(), `.failed-${r.c.id}-${Date.now()}`);
    fs.renameSync(tmp, kept);
    o.status.say(`kept the failed build's disk in ${kept} (--keep-failed); its log is ${r.log.path}`);
  } else fs.rmSync(tmp, { recursive: true, force: true });
}

/** The error a failed build ends with: the guest's own error lines added, the log named. */
function failure(r: Run, e: unknown): Error {
  let err =
    e instanceof PimError || (e as Error)?.name === 'Interrupted'
      ? (e as Error)
      : new PimError(EXIT.SOFTWARE, (e as Error)?.stack ?? String(e));
  r.log.line(`failed: ${err.message}`);
  // the console of the boot that failed, in the log too (it is gone with the VM's runtime dir)
  const console = r.vm ? readLog(r.ref) : '';
  if (r.vm) r.log.section(`${r.booting} console (at the failure)`, console);
  if (err instanceof PimError && r.waiting) {
    // the guest's own words first: what the installer or cloud-init said went wrong
    const said = consoleErrors(console);
    if (said.length) err = new PimError(err.code, `${err.message}\nThe guest's console said:\n${tail(said)}`);
  }
  if (err instanceof PimError) return new PimError(err.code, `${err.message} (build log: ${r.log.path})`);
  return err;
}

/** Boot the build's VM on `disk`; the VM is the build's (r.vm) until it is stopped. */
async function bootVm(
  r: Run,
  disk: { path: string; format: 'qcow2' | 'raw'; efivars: string | null },
  agent: boolean,
  spec?: Parameters<typeof startVm>[0]['spec'],
): Promise<RunningVm> {
  const kernel = kernelOf(r, disk.path);
  if (kernel) spec = { ...spec, kernel };
  const started = await startVm({
    ref: r.ref,
    disk: { ...disk, discard: true },
    mem: r.plan.mem,
    cpus: r.plan.cpus,
    accel: r.o.accel,
    net: {},
    agent,
    kind: 'build',
    image: disk.path,
    spec,
    signal: r.o.signal,
    ssh: { user: r.plan.sshUser },
  });
  // QEMU has read them (fw_cfg keeps them for a reboot)
  if (kernel) fs.rmSync(dirname(kernel.kernel), { recursive: true, force: true });
  if (typeof started === 'number') throw new PimError(EXIT.SOFTWARE, "the build's VM ran in the foreground");
  r.vm = started.vm;
  return started.vm;
}

/**
 * A cloud-init build's BIOS boot: GRUB's default entry, read out of the disk
 * (directboot.ts), booted by QEMU itself; null: through the firmware, and the
 * log says why.
 */
function kernelOf(r: Run, disk: string): { kernel: string; initrd?: string; append: string } | undefined {
  if (r.plan.builder !== 'cloud-init' || r.plan.firmware !== 'bios') return undefined;
  const dir = join(r.tmp, `boot-${Date.now()}`);
  fs.mkdirSync(dir, { mode: 0o700 });
  const d = directBoot(disk, dir);
  if (typeof d === 'string') {
    // the reason may quote the image (a default's name, a UUID): no control bytes into the log
    r.log.line(`boot: through the firmware: ${termSafe(d)}`);
    return undefined;
  }
  r.log.line(`boot: GRUB's default entry read from the disk, booted directly: ${d.label}; ${d.append}`);
  return { kernel: d.kernel, initrd: d.initrd, append: d.append };
}

/** QEMU has exited: what it left is stale. */
async function exited(r: Run): Promise<void> {
  r.vm = null;
  cleanupFiles(r.ref.files);
}

/** Stop the build's VM gracefully (pim-stop's chain); its console into the log. */
async function stopBuildVm(r: Run, running: RunningVm, what: string, off: StopResult | null = null): Promise<void> {
  const stopped = off ?? (await stopVm(running, { timeoutMs: stopBound(r) }));
  r.vm = null;
  r.log.section(`${what} console`, readLog(r.ref));
  r.log.line(`stopped by ${stopped.stage} in ${stopped.seconds} s`);
  if (stopped.stage === 'sigterm' || stopped.stage === 'sigkill')
    r.o.status.say(`warning: the guest did not shut down by itself (${stopped.stage})`);
}

/**
 * The install stage: the stored one with this key (reused), else made under
 * the stage's lock; a build that finds the lock taken waits for it, then
 * reuses what the other made.
 */
async function installStage(r: Run, firstBoot: FirstBoot): Promise<InstallStage> {
  const key = r.c.stages.install.key;
  // the stage's files are read through this build's own links of them (pinStage): a stage
  // replaced by --force or removed by gc meanwhile does not change under this build
  const using = async (pinned: PinnedStage, made: boolean): Promise<InstallStage> => {
    const done = useStage(pinned.record.key);
    const files = await stageFiles(pinned);
    return { stage: pinned.record, made, files, release: async () => done() };
  };
  if (r.c.parent) {
    const stage = parentStage(r.c.parent, key, r.c.stages.install.inputs);
    const done = useStage(stage.key);
    return { stage, made: false, files: await parentFiles(r, stage), release: async () => done() };
  }
  const found = () => (r.o.force ? null : pinStage(key, r.tmp));
  const there = found();
  if (there) return using(there, false);
  // made by another build meanwhile: its stage.json appears last (the rename), then the lock goes
  // (once only: a stage that is there but cannot be read is waited for under the lock, not spun on)
  let ready = () => !r.o.force && fs.existsSync(join(stageDir(key), STAGE_FILES.record));
  let lock: Lock | null = null;
  while (!lock) {
    lock = await waitStageLock(key, r.o.signal, (m) => r.o.status.say(m), ready);
    const made = lock ? null : found();
    if (made) return using(made, false);
    ready = () => false;
  }
  let held = true;
  try {
    const meanwhile = found();
    if (meanwhile) return using(meanwhile, false);
    const made = await makeInstall(r, firstBoot);
    if ('pending' in made) {
      // one boot: the stage is taken live and stored as soon as it is (oneBoot); the lock is held until then
      held = false;
      let unlock: (() => Promise<void>) | null = () => lock.release();
      let unuse = () => {};
      const stored = async (stage: StageRecord) => {
        unuse = useStage(stage.key); // read until the build is stored: gc keeps it
        const u = unlock;
        unlock = null;
        await u?.();
      };
      return {
        stage: made.pending.record,
        made: true,
        pending: { ...made.pending, stored },
        release: async () => {
          unuse();
          await unlock?.();
        },
      };
    }
    const pinned = pinStage(made.key, r.tmp); // under the lock: nothing replaces it meanwhile
    if (!pinned) throw new PimError(EXIT.SOFTWARE, `the install stage ${made.key} is gone right after it was stored`);
    return using(pinned, true);
  } finally {
    if (held) await lock.release();
  }
}

/** Where a stage's files are for this build, and the key that logs in to its disk. */
interface StageFiles {
  disk: string;
  efivars: string | null;
  seed: string | null;
  pair: { private: string; public: string; remove: boolean };
}

interface InstallStage {
  stage: StageRecord;
  made: boolean;
  /** the stage's files (not for a stage still pending) */
  files?: StageFiles;
  /** cloud-init: the stage is made in the build's one boot (oneBoot) */
  pending?: PendingStage;
  release: () => Promise<void>;
}

/** A cloud-init install stage not booted yet: its directory, record, seed and key. */
interface PendingStage {
  dir: string;
  record: StageRecord;
  drives: { path: string; format: 'qcow2' | 'raw'; readonly?: boolean }[];
  pair: { private: string; public: string };
  /** called once the stage is stored: the lock goes (a build waiting for it reuses it at once) */
  stored?: (stage: StageRecord) => Promise<void>;
}

/** from: the parent's build as the install stage (nothing is stored for it: the build is in the registry). */
function parentStage(p: BuildRecord, key: string, inputs: Record<string, unknown>): StageRecord {
  return {
    kind: 'install',
    key,
    created: p.created,
    seconds: p.times.total,
    inputs,
    disk: { file: p.disk.file, format: p.disk.format },
    efivars: p.efivars,
    seed: null,
    sshKey: null,
    userKey: p.settings.user_key ?? null,
    profile: p.profile,
    from: { id: p.id, key: p.key, path: buildDisk(p), format: p.disk.format, efivars: buildEfivars(p) },
  };
}

/** The profile the guest's answer files are rendered from: pim's user key and the per-build key added to ssh_keys. */
async function servedProfile(
  r: Run,
  buildPublic: string,
): Promise<{ served: BuildPlan['profile']; user: string | null }> {
  const served = structuredClone(r.plan.profile);
  const keys = Array.isArray(served.value.ssh_keys) ? (served.value.ssh_keys as string[]) : [];
  // pim's own key for the user goes in too (not into the cache key: lib/guest/userkey.ts), so
  // that pim-ssh reaches the build with no set-up; the per-build key goes after provisioning
  const userKey = await ensureUserKey().catch((e: unknown) => {
    r.o.status.say(
      `warning: could not make pim's SSH key (${(e as Error).message}); ${keys.length ? "only the profile's ssh_keys" : 'no key you hold'} will log in to this build`,
    );
    return null;
  });
  served.value.ssh_keys = [
    ...keys,
    ...(userKey && !keys.some((k) => keyBlobOf(k) === keyBlobOf(userKey.public)) ? [userKey.public] : []),
    buildPublic,
  ];
  if (served.value.ssh_user === undefined) served.value.ssh_user = r.plan.sshUser;
  return { served, user: userKey?.public ?? null };
}

/**
 * Make the install stage in a private temporary directory: the builder's
 * first boot (an installer: until it powers off; cloud-init: its seeded run,
 * waited for over SSH, then a graceful stop); then stored read-only.
 */
async function makeInstall(r: Run, firstBoot: FirstBoot): Promise<StageRecord | { pending: PendingStage }> {
  const { plan, c, o } = r;
  const t0 = Date.now();
  const dir = (r.stageTmp = stageTmp(c.stages.install.key));
  const disk = join(dir, stageDiskFile(plan.disk.format));
  const vars = plan.firmware === 'uefi' ? join(dir, STAGE_FILES.efivars) : null;
  if (vars) {
    fs.copyFileSync(ovmfVarsTemplate(), vars);
    fs.chmodSync(vars, 0o600);
  }
  const pair = await newBuildKey(`pim-build-${c.id}`);
  fs.writeFileSync(join(dir, STAGE_FILES.sshKey), pair.private, { mode: 0o600, flag: 'wx' });
  const { served, user } = await servedProfile(r, pair.public);
  const boot = (agent: boolean, spec?: Parameters<typeof bootVm>[3]) =>
    bootVm(r, { path: disk, format: plan.disk.format, efivars: vars }, agent, spec);
  const ctx = { o, plan, c, tmp: dir, disk, log: r.log, deadline: r.deadline, ref: r.ref, served };
  const env: BootEnv = { ...ctx, bootVm: boot, exited: () => exited(r) };
  const prepared = await firstBoot(env);
  checkAborted(o.signal);
  const seed = prepared?.drives?.[0]?.path ?? null;
  // only what the stage is: the disk, its vars, the seed, the key (not the injected initrd, the seed's sources)
  const keep = new Set([stageDiskFile(plan.disk.format), STAGE_FILES.efivars, STAGE_FILES.seed, STAGE_FILES.sshKey]);
  for (const f of fs.readdirSync(dir)) if (!keep.has(f)) fs.rmSync(join(dir, f), { recursive: true, force: true });
  const record: StageRecord = {
    kind: 'install',
    key: c.stages.install.key,
    created: new Date().toISOString(),
    seconds: round((Date.now() - t0) / 1000),
    inputs: c.stages.install.inputs,
    disk: { file: stageDiskFile(plan.disk.format), format: plan.disk.format },
    efivars: vars ? STAGE_FILES.efivars : null,
    seed: seed ? STAGE_FILES.seed : null,
    sshKey: { file: STAGE_FILES.sshKey, public: pair.public },
    userKey: user,
    profile: plan.name,
  };
  // cloud-init's seeded run is the install: it runs in the build's one boot (oneBoot)
  if (seed) return { pending: { dir, record, drives: prepared!.drives!, pair } };
  const committed = commitStage(dir, record, o.force === true);
  r.stageTmp = null;
  r.log.line(`install stage ${record.key} stored in ${record.seconds} s`);
  return committed;
}

/**
 * Provision and finish on a qcow2 overlay of the install stage (the stage is
 * never written): boot it, run the scripts, generalize, stop; then store.
 */
async function provisionAndStore(r: Run, stage: StageRecord, f: StageFiles, made: boolean): Promise<BuildRecord> {
  const { plan, o, tmp } = r;
  const st = o.status;
  if (!made) {
    const what = stage.from ? `${stage.from.id}, the parent's build,` : `install ${stage.key.slice(0, 8)}`;
    st.say(`reusing ${what} (built ${ago(stage.created)}), provisioning...`);
    r.log.line(`reusing install stage ${stage.key} (built ${stage.created}${stage.from ? `; ${stage.from.id}` : ''})`);
  }
  const disk = join(tmp, `${plan.name}.qcow2`);
  await createOverlay(disk, backingName(r, f.disk), stage.disk.format);
  const vars = f.efivars ? join(tmp, efivarsOf(plan.name)) : null;
  if (vars) {
    fs.copyFileSync(f.efivars!, vars);
    fs.chmodSync(vars, 0o600);
  }
  const cloud = plan.builder === 'cloud-init';
  st.set(cloud ? `cloud-init is setting up ${plan.name}` : `provisioning ${plan.name}`);
  r.booting = 'provisioning';
  const seed = f.seed ? [{ path: f.seed, format: 'raw' as const, readonly: true as const }] : null;
  const tProv0 = Date.now();
  const spec = seed ? { drives: seed } : undefined;
  const running = await bootVm(r, { path: disk, format: 'qcow2', efivars: vars }, true, spec);
  const pair = f.pair;
  const { tFinish, off } = await provision(r, running, pair);
  checkAborted(o.signal);
  if (!off) st.set(`stopping ${plan.name}`);
  await stopBuildVm(r, running, 'provisioning', off);
  const tProv = round((Date.now() - tProv0) / 1000);
  return storeBuild(r, { disk, base: f.disk, vars, stage, made, tProv, tFinish });
}

/**
 * A cloud-init build whose install stage is not stored: one boot, as Packer's.
 * The guest boots the stage's disk with its seed; once cloud-init's seeded run
 * has finished, the file systems are frozen (the guest agent) and QEMU turns
 * the disk into the backing file of a new qcow2 overlay (QMP
 * blockdev-snapshot-sync), so the stage is the disk as cloud-init left it and
 * is never written again; the scripts and the finish step go on in the same
 * boot, on the overlay. After the stop the stage is stored and the overlay
 * pointed at where it now lives.
 */
async function oneBoot(r: Run, p: PendingStage): Promise<BuildRecord> {
  const { plan, o, tmp } = r;
  const t0 = Date.now();
  const overlay = join(tmp, `${plan.name}.qcow2`);
  const stageVars = p.record.efivars ? join(p.dir, p.record.efivars) : null;
  const vars = stageVars ? join(tmp, efivarsOf(plan.name)) : null;
  if (stageVars && vars) fs.copyFileSync(stageVars, vars);
  o.status.set(`cloud-init is setting up ${plan.name}`);
  r.booting = 'provisioning';
  const disk = { path: join(p.dir, p.record.disk.file), format: p.record.disk.format, efivars: vars };
  const running = await bootVm(r, disk, true, { drives: p.drives });
  o.status.say(`${plan.name} booted with its cidata seed; its console: pim-console ${r.ref.name} --ro`);
  let installed = 0;
  const taken: { stage?: StageRecord; disk?: string } = {};
  // the stage is complete once it is taken: stored at once, so that a script that fails
  // does not lose it (the rebuild with the fixed script reuses it); QEMU reads it as the
  // overlay's backing file, and no longer writes it
  const take = async (conn: SshClient, asRoot: string) => {
    await takeStage(r, running, overlay, conn, asRoot);
    if (stageVars && vars) fs.copyFileSync(vars, stageVars);
    installed = round((Date.now() - t0) / 1000);
    checkAborted(o.signal);
    const stage = commitStage(p.dir, { ...p.record, seconds: installed }, o.force === true);
    r.stageTmp = null;
    // pinned under the lock (before stored() lets it go): the overlay is pointed at these links after the stop
    const pinned = pinStage(stage.key, tmp);
    if (!pinned) throw new PimError(EXIT.SOFTWARE, `the install stage ${stage.key} is gone right after it was stored`);
    taken.stage = stage;
    taken.disk = pinned.disk;
    r.log.line(`install stage ${stage.key} stored (taken live after ${installed} s)`);
    await p.stored?.(stage);
  };
  const { tFinish, off } = await provision(r, running, { ...p.pair, remove: true }, take);
  checkAborted(o.signal);
  if (!off) o.status.set(`stopping ${plan.name}`);
  await stopBuildVm(r, running, 'provisioning', off);
  const { stage, disk: base } = taken;
  if (!stage || !base) throw new PimError(EXIT.SOFTWARE, 'the install stage was never taken');
  await rebaseUnsafe(overlay, backingName(r, base), stage.disk.format);
  const tProv = round((Date.now() - t0) / 1000 - installed);
  return storeBuild(r, { disk: overlay, base, vars, stage, made: true, tProv, tFinish });
}

/** The install stage taken from the running guest: synced, frozen, the disk made an overlay's backing file, thawed. */
async function takeStage(r: Run, vm: RunningVm, overlay: string, conn: SshClient, asRoot: string): Promise<void> {
  await execText(conn, asRoot, 'sync');
  await withGa(vm, 30_000, async (g) => {
    let frozen = false;
    try {
      await g.execute('guest-fsfreeze-freeze', undefined, 60_000);
      frozen = true;
    } catch (e) {
      r.log.line(`guest-fsfreeze-freeze: ${(e as Error).message}; the stage is taken after a sync`);
    }
    try {
      await withQmp(vm, 30_000, (q) =>
        q.execute('blockdev-snapshot-sync', { device: 'disk0', 'snapshot-file': overlay, format: 'qcow2' }),
      );
    } finally {
      if (frozen) await g.execute('guest-fsfreeze-thaw', undefined, 60_000);
    }
  });
  r.log.line(`install stage taken live: the disk is now the backing file of ${overlay}`);
}

/**
 * Where a stage's files are for this build (its links of them), and the key
 * that logs in to its disk: the per-build key stored with it (removed from
 * the image after provisioning).
 */
async function stageFiles(p: PinnedStage): Promise<StageFiles> {
  return {
    disk: p.disk,
    efivars: p.efivars,
    seed: p.seed,
    pair: { private: fs.readFileSync(p.sshKey!, 'utf8'), public: p.record.sshKey!.public, remove: true },
  };
}

/**
 * from: the parent's build (its disk linked into this build's directory, as
 * a stage is), and pim's own user key, which the parent put in (it stays).
 */
async function parentFiles(r: Run, stage: StageRecord): Promise<StageFiles> {
  const from = stage.from!;
  const mine = userPublicKey();
  if (!stage.userKey || !mine || keyBlobOf(mine) !== keyBlobOf(stage.userKey))
    throw new PimError(
      EXIT.CONFIG,
      `${from.id} (from: ${stage.profile}) does not let pim's own SSH key in, so pim cannot provision on it; build ${stage.profile} again here (pim-build run ${stage.profile} --force)`,
    );
  const pair = { private: fs.readFileSync(userKeyPath(), 'utf8'), public: mine, remove: false };
  const dir = ensurePrivateDir(join(r.tmp, PINNED));
  const pin = (path: string | null) => {
    if (!path) return null;
    const to = join(dir, path.split('/').pop()!);
    try {
      fs.linkSync(path, to);
      return to;
    } catch {
      return path; // another file system: the build's own path
    }
  };
  return { disk: pin(from.path)!, efivars: pin(from.efivars), seed: null, pair };
}

/** An overlay's backing file: relative when it is in the build's directory (a kept failed build still opens). */
const backingName = (r: Run, path: string) => (path.startsWith(`${r.tmp}/`) ? path.slice(r.tmp.length + 1) : path);

/** Finish: check the stopped disk, flatten it into the image (qemu-img convert, -c with compress), register it read-only. */
async function storeBuild(
  r: Run,
  a: {
    disk: string;
    base: string;
    vars: string | null;
    stage: StageRecord;
    made: boolean;
    tProv: number;
    tFinish: number;
  },
): Promise<BuildRecord> {
  const { plan, c, o, tmp, log } = r;
  o.status.set(`storing ${c.id}`);
  const check = await imgCheck(a.disk, 'qcow2');
  if (!check.ok) throw new PimError(EXIT.DATAERR, `the built disk is not consistent after the stop (${check.detail})`);
  const file = `${plan.name}.${plan.disk.format}`;
  const stored = join(tmp, `${file}.store`);
  // a fresh, whole copy of what the guest uses (the stage under it included): what was trimmed or never written is left out
  await convertDisk(a.disk, 'qcow2', stored, plan.disk.format, o.signal, { compress: plan.compress });
  // what the build VM left: its overlay and the stage under it
  const left = (fs.statSync(a.disk).blocks + fs.statSync(a.base).blocks) * 512;
  const kept = fs.statSync(stored).blocks * 512;
  log.line(`stored: ${file} ${kept} bytes${plan.compress ? ' (compressed)' : ''}; the build VM left ${left} bytes`);
  o.status.say(`stored ${mib(kept)}${plan.compress ? ', compressed' : ''} (the build VM's disk: ${mib(left)})`);
  fs.renameSync(stored, join(tmp, file));
  const info = await imgInfo(join(tmp, file));
  const tInstall = a.made ? a.stage.seconds : 0;
  const record: BuildRecord = {
    id: c.id,
    profile: plan.name,
    key: c.key,
    created: new Date().toISOString(),
    recipe: c.inputs.recipe,
    inputs: c.inputs,
    iso: { name: c.inputs.iso?.name ?? plan.iso, checksum: c.iso.checksum, path: c.iso.path },
    disk: { file, format: plan.disk.format, virtual_size: info['virtual-size'], bytes: kept },
    efivars: a.vars ? efivarsOf(plan.name) : null,
    settings: {
      mem: plan.mem,
      cpus: plan.cpus,
      firmware: plan.firmware,
      machine: 'q35',
      disk_bus: 'virtio',
      net: 'virtio-net',
      ssh_user: plan.sshUser,
      ...(a.stage.userKey ? { user_key: a.stage.userKey } : {}),
    },
    times: { install: tInstall, provision: a.tProv, total: round((Date.now() - c.t0) / 1000) },
    log: STORE_FILES.buildLog,
    stages: stageChain(c.stages, a),
  };
  for (const f of fs.readdirSync(tmp))
    if (f !== record.disk.file && f !== record.efivars) fs.rmSync(join(tmp, f), { recursive: true, force: true });
  log.line(`done in ${record.times.total} s`);
  fs.copyFileSync(log.path, join(tmp, STORE_FILES.buildLog));
  return commitBuild(tmp, record, o.force === true);
}

/** The build's stage chain, as build.json keeps it. */
function stageChain(
  k: Ctx['stages'],
  a: { stage: StageRecord; made: boolean; tProv: number; tFinish: number },
): StageLink[] {
  const now = new Date().toISOString();
  const { stage, made } = a;
  return [
    {
      stage: 'install',
      key: k.install.key,
      made,
      created: stage.created,
      seconds: stage.seconds,
      inputs: k.install.inputs,
    },
    {
      stage: 'provision',
      key: k.provision.key,
      made: true,
      created: now,
      seconds: round(a.tProv - a.tFinish),
      inputs: k.provision.inputs,
    },
    { stage: 'finish', key: k.finish.key, made: true, created: now, seconds: a.tFinish, inputs: k.finish.inputs },
  ];
}

/**
 * An installer's first boot: an empty disk; pim's answer-file server on a
 * free loopback port; the installer's kernel and initrd (out of the ISO)
 * booted directly with the URL on its command line, the ISO as a CD,
 * -no-reboot; then waitInstaller.
 */
async function installerBoot(env: BootEnv): Promise<void> {
  const { o, plan, c, tmp, disk, log, served } = env;
  const st = o.status;
  st.set(`installing ${plan.name} from ${plan.iso}`);
  await createDisk(disk, plan.disk.format, plan.disk.size);
  const boot = await bootFiles(c.iso.path, c.iso.checksum, plan.boot.kernel, plan.boot.initrd);

  let fetched: () => void = () => {};
  const fetchedP = new Promise<void>((r) => (fetched = r));
  const answerRoutes = new Set(LAYOUTS[plan.layout].answers);
  const srv = await startServer({
    profile: served,
    port: 0,
    bind: '127.0.0.1',
    log: (l: string) => log.line(`http ${l}`),
    onRequest: (r: { path: string; status: number }) => {
      if (r.status === 200 && answerRoutes.has(r.path)) {
        if (r.path === LAYOUTS[plan.layout].answers[0]) st.say(`the installer fetched ${r.path.slice(1)}`);
        fetched();
      }
    },
  });
  try {
    const url = `http://10.0.2.2:${srv.port}`;
    let initrd = boot.initrd;
    if (plan.boot.inject) {
      // the preseed inside the initrd too (virt-install --initrd-inject): d-i reads /preseed.cfg before the network
      const r = renderAnswer('/preseed.cfg', served, url);
      if (!r) throw new PimError(EXIT.CONFIG, `profile "${plan.name}" has no preseed template to inject`);
      initrd = join(tmp, 'initrd.injected');
      concatArchives(
        [boot.initrd, cpioNewcGzip([{ type: 'file', path: 'preseed.cfg', data: r.body, mode: 0o644 }])],
        initrd,
      );
      fetched(); // the answer file is already in the installer
    }
    const cmdline = installerCmdline(plan.layout, url, plan.boot.append, plan.boot.inject, served.value);
    log.line(
      `installer: ${plan.boot.kernel} ${plan.boot.initrd}${plan.boot.inject ? ' (preseed injected)' : ''}: ${cmdline}`,
    );
    const vm = await env.bootVm(false, {
      kernel: { kernel: boot.kernel, initrd, append: cmdline },
      cdrom: c.iso.path,
      noReboot: true,
    });
    st.say(`installer started; its console: pim-console ${env.ref.name} --ro`);
    await waitPoweroff(env, vm, 'the installer', fetchedP);
    log.section('installer console', readLog(env.ref));
    await env.exited();
  } finally {
    await srv.close().catch(() => undefined);
  }
}

/** Temporary dirs of builds whose process is gone (killed with -9, a crash): removed. */
function removeStaleTmp(): void {
  let names: string[] = [];
  try {
    names = fs.readdirSync(buildsDir());
  } catch {
    return;
  }
  for (const n of names) {
    const m = /^\.tmp-.*-(\d+)$/.exec(n);
    if (!m) continue;
    if (!isAlive(Number(m[1]))) fs.rmSync(join(buildsDir(), n), { recursive: true, force: true });
  }
}

const round = (s: number) => Math.round(s * 10) / 10;
const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

/** Error lines on a console (cloud-init's WARNING/ERROR lines, tracebacks, failed units; not the kernel's), the last 8, ANSI codes off. */
export function consoleErrors(text: string): string[] {
  return (
    text
      .split('\n')
      .map((l) =>
        l
          .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
          .replace(/\r/g, '')
          .trim(),
      )
      .filter(
        (l) => /\b(ERROR|CRITICAL|Traceback|FAILED|Failed to|failed|error:)/.test(l) && !/\berror(s)?: ?\[\]/.test(l),
      )
      // the kernel's own noise ("Fast TSC calibration failed") is not what went wrong
      .filter((l) => !/^\[\s*\d+\.\d+\] (?!.*cloud-init)/.test(l))
      .slice(-8)
  );
}

async function killVm(vm: RunningVm): Promise<void> {
  await stopVm(vm, { timeoutMs: 5_000, force: true }).catch(() => undefined);
}

/**
 * The provisioning boot's work over one SSH connection: pin the host key
 * through the guest agent, connect once SSH answers, (cloud-init) wait for its
 * run; then, unless `mode` is 'install', run each script as root (through
 * sudo -n for another user), remove pim's key and generalize (the finish
 * step). Returns the finish step's seconds.
 */
async function provision(
  r: Run,
  vm: RunningVm,
  pair: { private: string; public: string; remove?: boolean },
  afterInstall?: (conn: SshClient, asRoot: string) => Promise<void>,
): Promise<{ tFinish: number; off: StopResult | null }> {
  const { plan, o } = r;
  const st = o.status;
  const detail = setInterval(() => st.update(logTail(vm.files.log, 1)[0] ?? ''), 1000);
  let conn: SshClient | null = null;
  try {
    conn = await connectGuest(r, vm, pair.private);
    const asRoot = plan.sshUser === 'root' ? 'sh -s' : 'sudo -n sh -s';
    if (plan.builder === 'cloud-init') await cloudInitDone(r, conn, asRoot);
    r.waiting = null;
    if (afterInstall) await afterInstall(conn, asRoot);
    for (const s of plan.scripts) await runScript(r, conn, asRoot, s);
    if (!plan.keepKey && pair.remove !== false) await removeBuildKey(r, conn, pair.public);
    const t = Date.now();
    const off = plan.generalize ? await generalize(r, vm, conn, asRoot) : null;
    return { tFinish: round((Date.now() - t) / 1000), off };
  } finally {
    clearInterval(detail);
    conn?.end();
  }
}

/** SSH up (its host keys exist then), the host key read through the guest agent and pinned, connected. */
async function connectGuest(r: Run, vm: RunningVm, privateKey: string): Promise<SshClient> {
  const { plan, o, log, deadline } = r;
  const st = o.status;
  st.update('waiting for SSH');
  r.waiting = 'ssh';
  // where: the one place that says how to reach a VM over SSH (pim-ssh uses it too)
  const { host, port } = await sshAddress(vm);
  const banner = await waitSshBanner(host, port, deadline, o.signal);
  log.line(`ssh: ${banner}`);
  st.update('reading the host keys through the guest agent');
  const pinned = await hostKeysViaAgent(vm.files.ga, Math.min(deadline, Date.now() + 60_000), o.signal);
  if (pinned) log.line(`host keys from the guest agent:\n${pinned.lines.join('\n')}`);
  else st.say('warning: no guest agent answered with the host key: the key SSH shows is trusted without a check');
  const conn = await connectWhenUp(
    { host, port, user: plan.sshUser, privateKey, hostKeys: pinned?.keys ?? null },
    deadline,
    { signal: o.signal, onAttempt: (e) => log.line(`ssh: not yet (${e.message})`) },
  );
  st.say(`connected over SSH as ${plan.sshUser}${pinned ? ' (host key pinned)' : ''}`);
  return conn;
}

/** cloud-init's run on this boot, waited for and judged (cloud.ts). */
async function cloudInitDone(r: Run, conn: SshClient, asRoot: string): Promise<void> {
  const { plan, o, log } = r;
  r.waiting = 'cloud-init';
  o.status.set(`cloud-init is setting up ${plan.name}`);
  const res = await waitCloudInit((script) => execText(conn, asRoot, script), {
    deadline: r.deadline,
    timeoutS: Math.round(plan.timeoutMs / 1000),
    signal: o.signal,
    log: (l) => log.line(l),
  });
  log.line(`cloud-init finished: ${res.datasource}`);
  o.status.say(`cloud-init finished without errors (${res.datasource}) (${o.status.elapsed()})`);
}

/** One provisioning script as root, its output prefixed into the log and onto stderr; 65 when it fails. */
async function runScript(r: Run, conn: SshClient, asRoot: string, s: BuildPlan['scripts'][number]) {
  const { o, log } = r;
  const st = o.status;
  checkAborted(o.signal);
  st.set(`provisioning: ${s.label}`);
  log.line(`script ${s.label}`);
  const prefix = (stream: 'out' | 'err') =>
    lineWriter((line) => {
      log.write(`${s.name}${stream === 'err' ? '!' : '|'} ${line}\n`);
      st.say(`${s.name}| ${line}`);
    });
  const out = prefix('out');
  const err = prefix('err');
  const res = await exec(conn, asRoot, s.content, { stdout: out.push, stderr: err.push }, o.signal);
  out.end();
  err.end();
  log.line(`script ${s.label}: status ${res.code}${res.signal ? ` (${res.signal})` : ''}`);
  if (res.code !== 0)
    throw new PimError(
      EXIT.DATAERR,
      `provisioning script ${s.label} failed with status ${res.code}${res.signal ? ` (signal ${res.signal})` : ''}`,
    );
}

/** pim's per-build key out of the user's authorized_keys. */
async function removeBuildKey(r: Run, conn: SshClient, publicKey: string): Promise<void> {
  const blob = publicKey.split(/\s+/)[1]!;
  const rm = await execText(
    conn,
    `f="$HOME/.ssh/authorized_keys"; [ -f "$f" ] || exit 0; grep -vF '${blob}' "$f" > "$f.pim-tmp"; cat "$f.pim-tmp" > "$f"; rm -f "$f.pim-tmp"; ! grep -qF '${blob}' "$f"`,
  );
  if (rm.code !== 0)
    throw new PimError(
      EXIT.SOFTWARE,
      `could not remove pim's build key from ~${r.plan.sshUser}/.ssh/authorized_keys: ${rm.stderr.trim() || `status ${rm.code}`}`,
    );
  r.log.line("pim's build key removed from authorized_keys");
}

/** The finish step in the guest: generalize.ts's script (machine-id, host keys, cloud-init state, logs, fstrim). */
async function generalize(r: Run, vm: RunningVm, conn: SshClient, asRoot: string): Promise<StopResult | null> {
  const { o, plan, log } = r;
  checkAborted(o.signal);
  o.status.set(`generalizing ${plan.name}`);
  const g = await execText(conn, asRoot, GENERALIZE_SCRIPT);
  log.section('generalize', `${g.stdout}${g.stderr}`);
  if (g.code !== 0)
    throw new PimError(
      EXIT.SOFTWARE,
      `generalizing the guest failed with status ${g.code}: ${(g.stderr || g.stdout).trim().split('\n').pop()}`,
    );
  o.status.say(
    `generalized: ${g.stdout.split('\n').filter((l) => l.startsWith('pim: ') && !l.startsWith('pim: fstrim')).length} steps (machine-id, host keys, cloud-init state, logs), free space trimmed`,
  );
  // nothing runs after it: the guest powers off at once (generalize.ts; null: stopped the usual way)
  o.status.set(`stopping ${plan.name}`);
  return powerOffGeneralized((script) => execText(conn, asRoot, script), vm, stopBound(r));
}

/** How long a stop of the build's VM may take: what is left of the build's time, 10 s to 2 min. */
const stopBound = (r: Run) => Math.max(10_000, Math.min(120_000, r.deadline - Date.now()));

/** Split a byte stream into lines for `emit`; end() flushes a last partial line. */
function lineWriter(emit: (line: string) => void): { push: (b: Buffer) => void; end: () => void } {
  let buf = '';
  return {
    push: (b) => {
      buf += b.toString('utf8');
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        emit(buf.slice(0, i).replace(/\r$/, ''));
        buf = buf.slice(i + 1);
      }
    },
    end: () => {
      if (buf) emit(buf);
      buf = '';
    },
  };
}
