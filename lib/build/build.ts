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
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { buildsDir } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { checkAborted } from '../core/signals.ts';
import type { StatusLine } from '../cli/status.ts';
import { buildId, cachedBuild, commitBuild, type BuildRecord } from '../image/registry.ts';
import { LAYOUTS, bootFiles, installerCmdline } from './iso-boot.ts';
import { KEY_URL, buildInputs, buildKey, planBuild, type BuildPlan } from './plan.ts';
import { BuildLog, readLog, tail, waitPoweroff, type BootEnv, type Ctx, type FirstBoot } from './boot.ts';
import type { RunningVm } from '../vm/state.ts';

export interface BuildOpts {
  profile: string;
  force?: boolean;
  keepFailed?: boolean;
  /** seconds for the whole build (else the profile's timeout, else 3600) */
  timeoutS?: number;
  /** seconds for the installer to fetch its answer file (default 300) */
  fetchTimeoutS?: number;
  accel?: string;
  signal: AbortSignal;
  status: StatusLine;
}

export interface BuildOutcome {
  record: BuildRecord;
  hit: boolean;
  path: string;
}

/** The build's VM name: the profile, "-build-" and the key's start (at most 64 characters). */
const vmNameFor = (profile: string, key: string) => `${profile.slice(0, 48)}-build-${key.slice(0, 8)}`;

export async function runBuild(o: BuildOpts): Promise<BuildOutcome> {
  const t0 = Date.now();
  const st = o.status;
  st.set(`resolving profile ${o.profile}`);
  const { loadProfile } = await import('../config/profile.ts');
  const { withEnvHook } = await import('../config/profile.ts');
  const profile = await withEnvHook(await loadProfile(o.profile));
  if (profile.value.builder === 'raw') return (await import('./raw.ts')).buildRaw(o, profile, t0); // an empty disk: no ISO, no VM
  const plan = await planBuild(profile, { timeoutS: o.timeoutS });
  await checkSourceKind(plan);
  const { iso, inputs, key } = await planKey(profile, plan, o.signal);
  const firstBoot = plan.builder === 'cloud-init' ? (await import('./cloud.ts')).cloudInitDisk : installerBoot;
  return cachedBuild(plan.name, key, o.force, () =>
    buildIt(o, plan, { id: buildId(plan.name, key), key, inputs, iso, t0 }, firstBoot),
  );
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
): Promise<{
  iso: Awaited<ReturnType<typeof import('../install/iso-store.ts').ensureIso>>;
  inputs: ReturnType<typeof buildInputs>;
  key: string;
}> {
  const { ensureIso } = await import('../install/iso-store.ts');
  const iso = await ensureIso(plan.iso, { signal });
  const { renderAnswer } = await import('../install/serve.ts');
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
  const inputs = buildInputs(plan, answers, { name: plan.iso, checksum: iso.checksum });
  return { iso, inputs, key: buildKey(inputs) };
}

/** An installer build starts from an ISO, a cloud-init build from a disk image (kind: image): each refuses the other (78). */
async function checkSourceKind(plan: BuildPlan): Promise<void> {
  const { loadCatalog, resolveEntry } = await import('../config/catalog.ts');
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

async function buildIt(o: BuildOpts, plan: BuildPlan, c: Ctx, firstBoot: FirstBoot): Promise<BuildRecord> {
  const st = o.status;
  const log = new BuildLog(c.id);
  const tmp = join(buildsDir(), `.tmp-${c.id}-${process.pid}`);
  removeStaleTmp();
  fs.rmSync(tmp, { recursive: true, force: true });
  ensurePrivateDir(tmp);
  const deadline = c.t0 + plan.timeoutMs;
  // the build VM's disk (--keep-failed keeps it under this name); the store gets a qemu-img convert of it
  const disk = join(tmp, `${plan.name}.${plan.disk.format}`);
  const vars = plan.firmware === 'uefi' ? join(tmp, `${plan.name}.efivars.fd`) : null;
  const { vmRef } = await import('../vm/ref.ts');
  const ref = vmRef(vmNameFor(plan.name, c.key));
  let vm: RunningVm | null = null;
  let ok = false;
  // which boot runs, and what the provisioning boot is waiting for (a failure then quotes the console's error lines)
  let booting: 'installer' | 'provisioning' = 'installer';
  let waiting: 'ssh' | 'cloud-init' | null = null;
  // whatever ends this process (a crash, an exit nobody awaited), the VM and the temporary disk go with it
  const lastResort = () => {
    if (vm) {
      try {
        process.kill(vm.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (!ok && !o.keepFailed) fs.rmSync(tmp, { recursive: true, force: true });
  };
  process.on('exit', lastResort);
  log.line(
    `pim-build ${plan.name}: ${plan.builder}, key ${c.key}, ${plan.builder === 'cloud-init' ? 'image' : 'iso'} ${plan.iso} (${c.iso.checksum}), disk ${plan.disk.size} ${plan.disk.format}, ${plan.firmware}`,
  );
  log.section('inputs', JSON.stringify(c.inputs, null, 2));
  try {
    const { newBuildKey } = await import('./ssh.ts');
    const { ensureUserKey, keyBlobOf } = await import('../vm/userkey.ts');
    const buildKeyPair = await newBuildKey(`pim-build-${c.id}`);
    const served = structuredClone(plan.profile);
    const keys = Array.isArray(served.value.ssh_keys) ? (served.value.ssh_keys as string[]) : [];
    // pim's own key for the user goes in too (not into the cache key: lib/vm/userkey.ts), so
    // that pim-ssh reaches the build with no set-up; the per-build key goes after provisioning
    const userKey = await ensureUserKey().catch((e: unknown) => {
      st.say(
        `warning: could not make pim's SSH key (${(e as Error).message}); ${keys.length ? "only the profile's ssh_keys" : 'no key you hold'} will log in to this build`,
      );
      return null;
    });
    served.value.ssh_keys = [
      ...keys,
      ...(userKey && !keys.some((k) => keyBlobOf(k) === keyBlobOf(userKey.public)) ? [userKey.public] : []),
      buildKeyPair.public,
    ];
    if (served.value.ssh_user === undefined) served.value.ssh_user = plan.sshUser;
    if (vars) {
      const { ovmfVarsTemplate } = await import('../qemu/host.ts');
      fs.copyFileSync(ovmfVarsTemplate(), vars);
      fs.chmodSync(vars, 0o600);
    }
    // the build's VM, twice: the builder's first boot (the installer, or cloud-init), then the disk, to provision
    const { startVm } = await import('../vm/plan.ts');
    const bootVm = async (agent: boolean, spec?: Parameters<typeof startVm>[0]['spec']) => {
      const started = await startVm({
        ref,
        disk: { path: disk, format: plan.disk.format, efivars: vars, discard: true },
        mem: plan.mem,
        cpus: plan.cpus,
        accel: o.accel,
        net: {},
        agent,
        kind: 'build',
        image: disk,
        spec,
        signal: o.signal,
        ssh: { user: plan.sshUser },
      });
      if (typeof started === 'number') throw new PimError(EXIT.SOFTWARE, "the build's VM ran in the foreground");
      vm = started.vm;
      return started.vm;
    };
    const exited = async () => {
      vm = null;
      const { cleanupFiles } = await import('../vm/state.ts');
      cleanupFiles(ref.files); // QEMU has exited: what it left is stale
    };

    // ------------------------------------------------------------ first boot
    const prepared = await firstBoot({ o, plan, c, tmp, disk, log, deadline, ref, served, bootVm, exited });
    checkAborted(o.signal);

    // -------------------------------------------------------------- provision
    const cloud = plan.builder === 'cloud-init';
    st.set(cloud ? `cloud-init is setting up ${plan.name}` : `provisioning ${plan.name}`);
    booting = 'provisioning';
    const running = await bootVm(true, prepared?.drives ? { drives: prepared.drives } : undefined);
    if (cloud) st.say(`${plan.name} booted with its cidata seed; its console: pim-console ${ref.name} --ro`);
    let tProv0 = Date.now();
    const off = await provision(o, plan, running, buildKeyPair.private, buildKeyPair.public, deadline, log, {
      waiting: (w) => (waiting = w),
      ready: () => (tProv0 = Date.now()),
    });
    checkAborted(o.signal);
    const tInstall = (tProv0 - c.t0) / 1000;
    st.set(`stopping ${plan.name}`);
    const { stopVm } = await import('../vm/stop.ts');
    const stopped =
      off ?? (await stopVm(running, { timeoutMs: Math.max(10_000, Math.min(120_000, deadline - Date.now())) }));
    vm = null;
    log.section('provisioning console', readLog(ref));
    log.line(`stopped by ${stopped.stage} in ${stopped.seconds} s`);
    if (stopped.stage === 'sigterm' || stopped.stage === 'sigkill')
      st.say(`warning: the guest did not shut down by itself (${stopped.stage})`);
    const tProv = (Date.now() - tProv0) / 1000;

    // ------------------------------------------------------------------ store
    st.set(`storing ${c.id}`);
    const { convertDisk, imgCheck, imgInfo } = await import('../image/qemu-img.ts');
    const check = await imgCheck(disk, plan.disk.format);
    if (!check.ok)
      throw new PimError(EXIT.DATAERR, `the built disk is not consistent after the stop (${check.detail})`);
    const file = `${plan.name}.${plan.disk.format}`;
    const stored = join(tmp, `${file}.store`);
    // a fresh copy of what the guest uses: what was trimmed or never written is left out
    await convertDisk(disk, plan.disk.format, stored, plan.disk.format, o.signal, { compress: plan.compress });
    const left = fs.statSync(disk).blocks * 512;
    const kept = fs.statSync(stored).blocks * 512;
    log.line(`stored: ${file} ${kept} bytes${plan.compress ? ' (compressed)' : ''}; the build VM left ${left} bytes`);
    st.say(`stored ${mib(kept)}${plan.compress ? ', compressed' : ''} (the build VM's disk: ${mib(left)})`);
    fs.renameSync(stored, disk);
    const info = await imgInfo(disk);
    const record: BuildRecord = {
      id: c.id,
      profile: plan.name,
      key: c.key,
      created: new Date().toISOString(),
      recipe: c.inputs.recipe,
      inputs: c.inputs,
      iso: { name: plan.iso, checksum: c.iso.checksum, path: c.iso.path },
      disk: { file, format: plan.disk.format, virtual_size: info['virtual-size'], bytes: kept },
      efivars: vars ? `${plan.name}.efivars.fd` : null,
      settings: {
        mem: plan.mem,
        cpus: plan.cpus,
        firmware: plan.firmware,
        machine: 'q35',
        disk_bus: 'virtio',
        net: 'virtio-net',
        ssh_user: plan.sshUser,
        ...(userKey ? { user_key: userKey.public } : {}),
      },
      times: { install: round(tInstall), provision: round(tProv), total: round((Date.now() - c.t0) / 1000) },
      log: 'build.log',
    };
    for (const f of fs.readdirSync(tmp))
      if (f !== record.disk.file && f !== record.efivars) fs.rmSync(join(tmp, f), { recursive: true, force: true });
    log.line(`done in ${record.times.total} s`);
    fs.copyFileSync(log.path, join(tmp, 'build.log'));
    const committed = commitBuild(tmp, record, o.force === true);
    ok = true;
    return committed;
  } catch (e) {
    let err =
      e instanceof PimError || (e as Error)?.name === 'Interrupted'
        ? (e as Error)
        : new PimError(EXIT.SOFTWARE, (e as Error)?.stack ?? String(e));
    log.line(`failed: ${err.message}`);
    // the console of the boot that failed, in the log too (it is gone with the VM's runtime dir)
    const console = vm ? readLog(ref) : '';
    if (vm) log.section(`${booting} console (at the failure)`, console);
    if (err instanceof PimError && waiting) {
      // the guest's own words first: what the installer or cloud-init said went wrong
      const said = consoleErrors(console);
      if (said.length) err = new PimError(err.code, `${err.message}\nThe guest's console said:\n${tail(said)}`);
    }
    if (err instanceof PimError) throw new PimError(err.code, `${err.message} (build log: ${log.path})`);
    throw err;
  } finally {
    // only a VM this build started is stopped (and its files removed): a name
    // that another VM held made startVm fail before anything was ours
    if (vm) await killVm(vm);
    if (!ok) {
      if (o.keepFailed && fs.existsSync(tmp)) {
        const kept = join(buildsDir(), `.failed-${c.id}-${Date.now()}`);
        fs.renameSync(tmp, kept);
        st.say(`kept the failed build's disk in ${kept} (--keep-failed); its log is ${log.path}`);
      } else fs.rmSync(tmp, { recursive: true, force: true });
    }
    log.close();
    process.off('exit', lastResort);
  }
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
  const { createDisk } = await import('../image/qemu-img.ts');
  await createDisk(disk, plan.disk.format, plan.disk.size);
  const boot = await bootFiles(c.iso.path, c.iso.checksum, plan.boot.kernel, plan.boot.initrd);

  let fetched: () => void = () => {};
  const fetchedP = new Promise<void>((r) => (fetched = r));
  const answerRoutes = new Set(LAYOUTS[plan.layout].answers);
  const { startServer, renderAnswer } = await import('../install/serve.ts');
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
      const { cpioNewcGzip } = await import('../archive/cpio.ts');
      const { concatArchives } = await import('../archive/initramfs.ts');
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
    const pid = Number(m[1]);
    let alive = false;
    try {
      process.kill(pid, 0);
      alive = true;
    } catch (e) {
      alive = (e as NodeJS.ErrnoException).code === 'EPERM';
    }
    if (!alive) fs.rmSync(join(buildsDir(), n), { recursive: true, force: true });
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
  const { stopVm } = await import('../vm/stop.ts');
  await stopVm(vm, { timeoutMs: 5_000, force: true }).catch(() => undefined);
}

/**
 * The provisioning phase: pin the host key through the guest agent, connect
 * once SSH answers, run each script as root (through sudo -n for another
 * user), remove pim's key.
 */
async function provision(
  o: BuildOpts,
  plan: BuildPlan,
  vm: RunningVm,
  privateKey: string,
  publicKey: string,
  deadline: number,
  log: BuildLog,
  phase: { waiting: (w: 'ssh' | 'cloud-init' | null) => void; ready: () => void },
): Promise<import('../vm/stop.ts').StopResult | null> {
  const st = o.status;
  const { hostKeysViaAgent } = await import('../vm/hostkeys.ts');
  const { sshAddress } = await import('../vm/reach.ts');
  const { connectWhenUp, exec, execText, waitSshBanner } = await import('./ssh.ts');
  const { logTail } = await import('../vm/state.ts');
  const detail = setInterval(() => st.update(logTail(vm.files.log, 1)[0] ?? ''), 1000);
  let conn: import('ssh2').Client | null = null;
  try {
    // sshd answering means its host keys exist: then ask the guest agent for them
    st.update('waiting for SSH');
    phase.waiting('ssh');
    // where: the one place that says how to reach a VM over SSH (pim-ssh uses it too)
    const { host, port } = await sshAddress(vm);
    const banner = await waitSshBanner(host, port, deadline, o.signal);
    log.line(`ssh: ${banner}`);
    st.update('reading the host keys through the guest agent');
    const pinned = await hostKeysViaAgent(vm.files.ga, Math.min(deadline, Date.now() + 60_000), o.signal);
    if (pinned) log.line(`host keys from the guest agent:\n${pinned.lines.join('\n')}`);
    else st.say('warning: no guest agent answered with the host key: the key SSH shows is trusted without a check');
    conn = await connectWhenUp(
      { host, port, user: plan.sshUser, privateKey, hostKeys: pinned?.keys ?? null },
      deadline,
      {
        signal: o.signal,
        onAttempt: (e) => log.line(`ssh: not yet (${e.message})`),
      },
    );
    st.say(`connected over SSH as ${plan.sshUser}${pinned ? ' (host key pinned)' : ''}`);
    const asRoot = plan.sshUser === 'root' ? 'sh -s' : 'sudo -n sh -s';
    const c = conn;
    if (plan.builder === 'cloud-init') {
      phase.waiting('cloud-init');
      st.set(`cloud-init is setting up ${plan.name}`);
      const { waitCloudInit } = await import('./cloud.ts');
      const r = await waitCloudInit((script) => execText(c, asRoot, script), {
        deadline,
        timeoutS: Math.round(plan.timeoutMs / 1000),
        signal: o.signal,
        log: (l) => log.line(l),
      });
      log.line(`cloud-init finished: ${r.datasource}`);
      st.say(`cloud-init finished without errors (${r.datasource}) (${st.elapsed()})`);
    }
    phase.waiting(null);
    phase.ready();
    for (const s of plan.scripts) {
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
      const r = await exec(conn, asRoot, s.content, { stdout: out.push, stderr: err.push }, o.signal);
      out.end();
      err.end();
      log.line(`script ${s.label}: status ${r.code}${r.signal ? ` (${r.signal})` : ''}`);
      if (r.code !== 0)
        throw new PimError(
          EXIT.DATAERR,
          `provisioning script ${s.label} failed with status ${r.code}${r.signal ? ` (signal ${r.signal})` : ''}`,
        );
    }
    if (!plan.keepKey) {
      const blob = publicKey.split(/\s+/)[1]!;
      const rm = await execText(
        conn,
        `f="$HOME/.ssh/authorized_keys"; [ -f "$f" ] || exit 0; grep -vF '${blob}' "$f" > "$f.pim-tmp"; cat "$f.pim-tmp" > "$f"; rm -f "$f.pim-tmp"; ! grep -qF '${blob}' "$f"`,
      );
      if (rm.code !== 0)
        throw new PimError(
          EXIT.SOFTWARE,
          `could not remove pim's build key from ~${plan.sshUser}/.ssh/authorized_keys: ${rm.stderr.trim() || `status ${rm.code}`}`,
        );
      log.line("pim's build key removed from authorized_keys");
    }
    if (plan.generalize) {
      checkAborted(o.signal);
      st.set(`generalizing ${plan.name}`);
      const { GENERALIZE_SCRIPT } = await import('./generalize.ts');
      const g = await execText(c, asRoot, GENERALIZE_SCRIPT);
      log.section('generalize', `${g.stdout}${g.stderr}`);
      if (g.code !== 0)
        throw new PimError(
          EXIT.SOFTWARE,
          `generalizing the guest failed with status ${g.code}: ${(g.stderr || g.stdout).trim().split('\n').pop()}`,
        );
      st.say(
        `generalized: ${g.stdout.split('\n').filter((l) => l.startsWith('pim: ') && !l.startsWith('pim: fstrim')).length} steps (machine-id, host keys, cloud-init state, logs), free space trimmed`,
      );
      // nothing runs after it: the guest powers off at once (generalize.ts; null: stopped the usual way)
      st.set(`stopping ${plan.name}`);
      const { powerOffGeneralized } = await import('./generalize.ts');
      return await powerOffGeneralized(
        (script) => execText(c, asRoot, script),
        vm,
        Math.max(10_000, Math.min(120_000, deadline - Date.now())),
      );
    }
    return null;
  } finally {
    clearInterval(detail);
    conn?.end();
  }
}

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
