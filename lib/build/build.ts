/**
 * pim-build's work: from a profile to a provisioned, cached image.
 *
 *   1. resolve     the profile, its ISO (downloaded and verified through the
 *                  catalog when missing), answer files, scripts; the cache key
 *   2. hit?        a build with that key in the registry is the answer
 *   3. install     an empty disk; pim's answer-file server in-process on a free
 *                  loopback port; the installer's kernel and initrd (out of
 *                  the ISO) booted directly, the URL on its command line, the
 *                  ISO as a CD, -no-reboot; wait for the answer file to be
 *                  fetched (bounded), then for QEMU to exit (bounded)
 *   4. provision   the installed disk booted with an SSH port forward; the
 *                  host key pinned through the guest agent; each script run
 *                  over one ssh2 connection; pim's key removed
 *   5. store       a graceful stop (pim-stop's chain), then the image moved
 *                  atomically into the registry, read-only
 *
 * Nothing is left behind on a failure, a timeout or a signal: the VM is
 * killed, the server stopped, the temporary disk removed (kept with
 * --keep-failed). Every build writes a log (serial console, the server's
 * request log, provisioning output) whose path every error names.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { buildsDir, stateDir } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { checkAborted } from '../core/signals.ts';
import type { StatusLine } from '../cli/status.ts';
import { buildId, cachedBuild, commitBuild, type BuildRecord } from '../image/registry.ts';
import { LAYOUTS, bootFiles, installerCmdline } from './iso-boot.ts';
import { KEY_URL, buildInputs, buildKey, planBuild, type BuildPlan } from './plan.ts';
import type { RunningVm } from '../vm/state.ts';
import type { VmRef } from '../vm/ref.ts';

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

/** A build log: a private file that outlives the build, named in every error. */
class BuildLog {
  readonly path: string;
  private readonly fd: number;
  constructor(id: string) {
    const dir = ensurePrivateDir(join(stateDir(), 'build-logs'));
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    this.path = join(dir, `${id}-${stamp}.log`);
    this.fd = fs.openSync(this.path, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_NOFOLLOW, 0o600);
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

const tail = (lines: string[]) => lines.map((l) => `  | ${l.replace(/\r$/, '')}`).join('\n');

/** The build's VM name: the profile, "-build-" and the key's start (at most 64 characters). */
const vmNameFor = (profile: string, key: string) => `${profile.slice(0, 48)}-build-${key.slice(0, 8)}`;

export async function runBuild(o: BuildOpts): Promise<BuildOutcome> {
  const t0 = Date.now();
  const st = o.status;
  st.set(`resolving profile ${o.profile}`);
  const { loadProfile } = await import('../config/profile.ts');
  const profile = await loadProfile(o.profile);
  if (profile.value.builder === 'raw') return (await import('./raw.ts')).buildRaw(o, profile, t0); // an empty disk: no ISO, no VM
  const plan = await planBuild(profile, { timeoutS: o.timeoutS });
  const { ensureIso } = await import('../install/iso-store.ts');
  const iso = await ensureIso(plan.iso, { signal: o.signal });
  const { renderAnswer } = await import('../install/serve.ts');
  const answers: Record<string, string> = {};
  for (const route of LAYOUTS[plan.layout].answers) {
    const r = renderAnswer(route as '/preseed.cfg', profile, KEY_URL);
    if (!r) throw new PimError(EXIT.CONFIG, `profile "${profile.name}" has no ${route.slice(1)} template in preseeds.d; add one or set distro`);
    answers[route] = r.body;
  }
  const inputs = buildInputs(plan, answers, { name: plan.iso, checksum: iso.checksum });
  const key = buildKey(inputs);
  return cachedBuild(plan.name, key, o.force, () => buildIt(o, plan, { id: buildId(plan.name, key), key, inputs, iso, t0 }));
}

interface Ctx {
  id: string;
  key: string;
  inputs: ReturnType<typeof buildInputs>;
  iso: { path: string; checksum: string };
  t0: number;
}

async function buildIt(o: BuildOpts, plan: BuildPlan, c: Ctx): Promise<BuildRecord> {
  const st = o.status;
  const log = new BuildLog(c.id);
  const tmp = join(buildsDir(), `.tmp-${c.id}-${process.pid}`);
  removeStaleTmp();
  fs.rmSync(tmp, { recursive: true, force: true });
  ensurePrivateDir(tmp);
  const deadline = c.t0 + plan.timeoutMs;
  const disk = join(tmp, `${plan.name}.${plan.disk.format}`);
  const vars = plan.firmware === 'uefi' ? join(tmp, `${plan.name}.efivars.fd`) : null;
  const { vmRef } = await import('../vm/ref.ts');
  const ref = vmRef(vmNameFor(plan.name, c.key));
  let server: { close(): Promise<void> } | null = null;
  let vm: RunningVm | null = null;
  let ok = false;
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
  log.line(`pim-build ${plan.name}: key ${c.key}, iso ${plan.iso} (${c.iso.checksum}), disk ${plan.disk.size} ${plan.disk.format}, ${plan.firmware}`);
  log.section('inputs', JSON.stringify(c.inputs, null, 2));
  try {
    // ---------------------------------------------------------------- install
    st.set(`installing ${plan.name} from ${plan.iso}`);
    const { newBuildKey } = await import('./ssh.ts');
    const buildKeyPair = await newBuildKey(`pim-build-${c.id}`);
    const served = structuredClone(plan.profile);
    const keys = Array.isArray(served.value.ssh_keys) ? (served.value.ssh_keys as string[]) : [];
    served.value.ssh_keys = [...keys, buildKeyPair.public];
    if (served.value.ssh_user === undefined) served.value.ssh_user = plan.sshUser;

    const { createDisk } = await import('../image/qemu-img.ts');
    await createDisk(disk, plan.disk.format, plan.disk.size);
    if (vars) {
      const { ovmfVarsTemplate } = await import('../qemu/host.ts');
      fs.copyFileSync(ovmfVarsTemplate(), vars);
      fs.chmodSync(vars, 0o600);
    }
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
    server = srv;
    const url = `http://10.0.2.2:${srv.port}`;
    let initrd = boot.initrd;
    if (plan.boot.inject) {
      // the preseed inside the initrd too (virt-install --initrd-inject): d-i reads /preseed.cfg before the network
      const r = renderAnswer('/preseed.cfg', served, url);
      if (!r) throw new PimError(EXIT.CONFIG, `profile "${plan.name}" has no preseed template to inject`);
      const { cpioNewcGzip } = await import('../archive/cpio.ts');
      const { concatArchives } = await import('../archive/initramfs.ts');
      initrd = join(tmp, 'initrd.injected');
      concatArchives([boot.initrd, cpioNewcGzip([{ type: 'file', path: 'preseed.cfg', data: r.body, mode: 0o644 }])], initrd);
      fetched(); // the answer file is already in the installer
    }
    const cmdline = installerCmdline(plan.layout, url, plan.boot.append, plan.boot.inject);
    log.line(`installer: ${plan.boot.kernel} ${plan.boot.initrd}${plan.boot.inject ? ' (preseed injected)' : ''}: ${cmdline}`);

    // the build's VM, twice: the installer (direct kernel boot, the ISO as a CD), then the installed disk
    const { startVm } = await import('../vm/plan.ts');
    const bootVm = (agent: boolean, spec?: Parameters<typeof startVm>[0]['spec']) =>
      startVm({ ref, disk: { path: disk, format: plan.disk.format, efivars: vars }, mem: plan.mem, cpus: plan.cpus, accel: o.accel, net: {}, agent, kind: 'build', image: disk, spec, signal: o.signal, ssh: { user: plan.sshUser } });
    const started = await bootVm(false, { kernel: { kernel: boot.kernel, initrd, append: cmdline }, cdrom: c.iso.path, noReboot: true });
    if (typeof started === 'number') throw new PimError(EXIT.SOFTWARE, 'the installer ran in the foreground');
    vm = started.vm;
    st.say(`installer started (${started.accel}); its console: pim-console ${ref.name} --ro`);
    await waitInstaller(o, plan, vm, ref, fetchedP, deadline, log);
    vm = null;
    log.section('installer console', readLog(ref));
    const { cleanupFiles } = await import('../vm/state.ts');
    cleanupFiles(ref.files); // QEMU has exited: what it left is stale
    await srv.close();
    server = null;
    const tInstall = (Date.now() - c.t0) / 1000;
    checkAborted(o.signal);

    // -------------------------------------------------------------- provision
    st.set(`provisioning ${plan.name}`);
    const again = await bootVm(true);
    if (typeof again === 'number') throw new PimError(EXIT.SOFTWARE, 'the installed system ran in the foreground');
    vm = again.vm;
    const tProv0 = Date.now();
    await provision(o, plan, vm, buildKeyPair.private, buildKeyPair.public, deadline, log);
    st.set(`stopping ${plan.name}`);
    const { stopVm } = await import('../vm/stop.ts');
    const stopped = await stopVm(vm, { timeoutMs: Math.max(10_000, Math.min(120_000, deadline - Date.now())) });
    vm = null;
    log.section('installed system console', readLog(ref));
    log.line(`stopped by ${stopped.stage} in ${stopped.seconds} s`);
    if (stopped.stage === 'sigterm' || stopped.stage === 'sigkill') st.say(`warning: the guest did not shut down by itself (${stopped.stage})`);
    const tProv = (Date.now() - tProv0) / 1000;

    // ------------------------------------------------------------------ store
    st.set(`storing ${c.id}`);
    const { imgCheck, imgInfo } = await import('../image/qemu-img.ts');
    const check = await imgCheck(disk, plan.disk.format);
    if (!check.ok) throw new PimError(EXIT.DATAERR, `the built disk is not consistent after the stop (${check.detail})`);
    const info = await imgInfo(disk);
    const record: BuildRecord = {
      id: c.id,
      profile: plan.name,
      key: c.key,
      created: new Date().toISOString(),
      recipe: c.inputs.recipe,
      inputs: c.inputs,
      iso: { name: plan.iso, checksum: c.iso.checksum, path: c.iso.path },
      disk: { file: `${plan.name}.${plan.disk.format}`, format: plan.disk.format, virtual_size: info['virtual-size'], bytes: fs.statSync(disk).blocks * 512 },
      efivars: vars ? `${plan.name}.efivars.fd` : null,
      settings: { mem: plan.mem, cpus: plan.cpus, firmware: plan.firmware, machine: 'q35', disk_bus: 'virtio', net: 'virtio-net', ssh_user: plan.sshUser },
      times: { install: round(tInstall), provision: round(tProv), total: round((Date.now() - c.t0) / 1000) },
      log: 'build.log',
    };
    fs.rmSync(join(tmp, 'initrd.injected'), { force: true });
    log.line(`done in ${record.times.total} s`);
    fs.copyFileSync(log.path, join(tmp, 'build.log'));
    const stored = commitBuild(tmp, record);
    ok = true;
    return stored;
  } catch (e) {
    const err = e instanceof PimError || (e as Error)?.name === 'Interrupted' ? (e as Error) : new PimError(EXIT.SOFTWARE, (e as Error)?.stack ?? String(e));
    log.line(`failed: ${err.message}`);
    if (err instanceof PimError) throw new PimError(err.code, `${err.message} (build log: ${log.path})`);
    throw err;
  } finally {
    // only a VM this build started is stopped (and its files removed): a name
    // that another VM held made startVm fail before anything was ours
    if (vm) await killVm(vm);
    if (server) await server.close().catch(() => undefined);
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

function readLog(ref: VmRef): string {
  try {
    return fs.readFileSync(ref.files.log, 'utf8');
  } catch {
    return '';
  }
}

async function killVm(vm: RunningVm): Promise<void> {
  const { stopVm } = await import('../vm/stop.ts');
  await stopVm(vm, { timeoutMs: 5_000, force: true }).catch(() => undefined);
}

/**
 * The installer phase: the answer file must be fetched within the fetch bound
 * (else 69), then QEMU must exit within the build's deadline (else 75). A
 * write error for lack of space stops the VM (QEMU pauses it): 73.
 */
async function waitInstaller(o: BuildOpts, plan: BuildPlan, vm: RunningVm, ref: VmRef, fetchedP: Promise<void>, deadline: number, log: BuildLog): Promise<void> {
  const { QmpClient } = await import('../qemu/qmp.ts');
  const { logTail } = await import('../vm/state.ts');
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
    const closed = q.waitClosed(Math.max(0, deadline - Date.now())).then((c) => (c ? 'exited' : 'timeout') as 'exited' | 'timeout');
    const aborted = new Promise<'abort'>((r) => o.signal.addEventListener('abort', () => r('abort'), { once: true }));
    const fetchBound = (o.fetchTimeoutS ?? 300) * 1000;
    let fetchTimer: NodeJS.Timeout | undefined;
    const fetchTimeout = new Promise<'nofetch'>((r) => (fetchTimer = setTimeout(() => r('nofetch'), Math.min(fetchBound, Math.max(0, deadline - Date.now())))));
    const first = await Promise.race([fetchedP.then(() => 'fetched' as const), closed, aborted, fetchTimeout, ioP]);
    clearTimeout(fetchTimer);
    const serial = () => tail(logTail(ref.files.log, 15));
    if (first === 'abort') checkAborted(o.signal);
    if (first === 'io') throw ioFailure(ioError, plan);
    if (first === 'nofetch') {
      throw new PimError(EXIT.UNAVAILABLE, `the installer did not fetch its answer file within ${Math.round(fetchBound / 1000)} s; check the ISO's boot paths (boot.kernel, boot.initrd) and that it understands ${plan.layout === 'debian' ? 'url=' : 'ds=nocloud;s='}. Last console lines:\n${serial()}`);
    }
    if (first === 'exited' || first === 'timeout') {
      throw new PimError(first === 'timeout' ? EXIT.TEMPFAIL : EXIT.UNAVAILABLE, `the installer ${first === 'timeout' ? 'timed out' : 'stopped'} before it fetched its answer file. Last console lines:\n${serial()}`);
    }
    log.line('the installer fetched its answer file');
    const end = await Promise.race([closed, aborted, ioP]);
    if (end === 'abort') checkAborted(o.signal);
    if (end === 'io') throw ioFailure(ioError, plan);
    if (end === 'timeout') {
      throw new PimError(EXIT.TEMPFAIL, `the installer did not power off within the build's ${Math.round(plan.timeoutMs / 1000)} s (timeout in the profile, or --timeout). Last console lines:\n${serial()}`);
    }
    const { waitExit } = await import('../core/proc.ts');
    await waitExit(vm.pid, 10_000);
    o.status.say(`the installer powered off (${o.status.elapsed()})`);
  } finally {
    clearInterval(detail);
    q.close();
  }
}

function ioFailure(why: string | null, plan: BuildPlan): PimError {
  if (why === 'nospace') return new PimError(EXIT.CANTCREAT, `no space left for the build disk in ${buildsDir()} (it may grow to ${plan.disk.size}); free some space and build again`);
  return new PimError(EXIT.CANTCREAT, `writing the build disk failed: ${why}`);
}

/**
 * The provisioning phase: pin the host key through the guest agent, connect
 * once SSH answers, run each script as root (through sudo -n for another
 * user), remove pim's key.
 */
async function provision(o: BuildOpts, plan: BuildPlan, vm: RunningVm, privateKey: string, publicKey: string, deadline: number, log: BuildLog): Promise<void> {
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
    // where: the one place that says how to reach a VM over SSH (pim-ssh uses it too)
    const { host, port } = await sshAddress(vm);
    const banner = await waitSshBanner(host, port, deadline, o.signal);
    log.line(`ssh: ${banner}`);
    st.update('reading the host keys through the guest agent');
    const pinned = await hostKeysViaAgent(vm.files.ga, Math.min(deadline, Date.now() + 60_000), o.signal);
    if (pinned) log.line(`host keys from the guest agent:\n${pinned.lines.join('\n')}`);
    else st.say('warning: no guest agent answered with the host key: the key SSH shows is trusted without a check');
    conn = await connectWhenUp({ host, port, user: plan.sshUser, privateKey, hostKeys: pinned?.keys ?? null }, deadline, {
      signal: o.signal,
      onAttempt: (e) => log.line(`ssh: not yet (${e.message})`),
    });
    st.say(`connected over SSH as ${plan.sshUser}${pinned ? ' (host key pinned)' : ''}`);
    const asRoot = plan.sshUser === 'root' ? 'sh -s' : 'sudo -n sh -s';
    for (const s of plan.scripts) {
      checkAborted(o.signal);
      st.set(`provisioning: ${s.label}`);
      log.line(`script ${s.label}`);
      const prefix = (stream: 'out' | 'err') => lineWriter((line) => {
        log.write(`${s.name}${stream === 'err' ? '!' : '|'} ${line}\n`);
        st.say(`${s.name}| ${line}`);
      });
      const out = prefix('out');
      const err = prefix('err');
      const r = await exec(conn, asRoot, s.content, { stdout: out.push, stderr: err.push });
      out.end();
      err.end();
      log.line(`script ${s.label}: status ${r.code}${r.signal ? ` (${r.signal})` : ''}`);
      if (r.code !== 0) throw new PimError(EXIT.DATAERR, `provisioning script ${s.label} failed with status ${r.code}${r.signal ? ` (signal ${r.signal})` : ''}`);
    }
    if (!plan.keepKey) {
      const blob = publicKey.split(/\s+/)[1]!;
      const rm = await execText(
        conn,
        `f="$HOME/.ssh/authorized_keys"; [ -f "$f" ] || exit 0; grep -vF '${blob}' "$f" > "$f.pim-tmp"; cat "$f.pim-tmp" > "$f"; rm -f "$f.pim-tmp"; ! grep -qF '${blob}' "$f"`,
      );
      if (rm.code !== 0) throw new PimError(EXIT.SOFTWARE, `could not remove pim's build key from ~${plan.sshUser}/.ssh/authorized_keys: ${rm.stderr.trim() || `status ${rm.code}`}`);
      log.line("pim's build key removed from authorized_keys");
    }
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
