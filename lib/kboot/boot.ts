/**
 * pim-kboot's work, kept out of the command file: resolve the kernel and the
 * initramfs, add pim's archive, launch QEMU through lib/launch.ts (so the VM
 * has the usual runtime files, lock and metadata), then follow the guest on
 * its output port (a FIFO that QEMU writes as the second serial port).
 *
 * The FIFO is opened by us for reading before QEMU starts, with a write end
 * of our own held until QEMU has daemonized; from then on QEMU is the only
 * writer, so end-of-file on the FIFO is exactly "QEMU has exited". Readiness,
 * the command's status and QEMU's exit are all notifications: nothing polls.
 */
import * as fs from 'node:fs';
import { stdout, writeOut } from '../cli/output.ts';
import * as net from 'node:net';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { EXIT, PimError } from '../core/exit.ts';
import type { Interrupted } from '../core/signals.ts';
import { log } from '../core/log.ts';
import { ensureRuntimeDir, type VmFiles } from '../core/paths.ts';
import { cleanupFiles, logTail } from '../vm/state.ts';
import { isAlive, waitExit } from '../core/proc.ts';
import { qemuOpt, type Accel } from '../qemu/argv.ts';
import { cachedPack, checkInitrd, concatArchives, kbootCacheDir, packTree, type Compress } from '../archive/initramfs.ts';
import { checkKernel, findPanic, guestEnv, hostKernel, hostTscKhz, OutputScanner, parseShare, pimBaseArchive, pvhKernel, RS, staticBusybox, type Share } from './guest.ts';
import { chooseShareFs, ninepArgs, startVirtiofsd, virtiofsArgs } from '../qemu/share.ts';

export interface KbootOpts {
  name?: string;
  kernel?: string;
  initrd?: string;
  initramfsFrom?: string;
  append?: string;
  shares: string[];
  rootShare?: string;
  fs: string;
  exec?: string;
  console: boolean;
  mem: string;
  cpus: number;
  machine: string;
  compress: Compress;
  timeoutMs: number;
  accel?: string;
  extra: string[];
  token: string;
}

async function killVm(pid: number | null, files: VmFiles): Promise<void> {
  if (pid && isAlive(pid)) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* gone */
    }
    if (!(await waitExit(pid, 5_000))) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await waitExit(pid, 5_000);
    }
  }
  cleanupFiles(files);
}

const tailText = (files: VmFiles, n = 15) =>
  logTail(files.log, n)
    .map((l) => `  | ${l.replace(/\r$/, '')}`)
    .join('\n');

export async function kboot(o: KbootOpts): Promise<number> {
  const t0 = performance.now();
  const kernelPath = o.kernel ?? hostKernel();
  const kind = checkKernel(kernelPath);
  if (o.initrd) checkInitrd(o.initrd);
  const used = new Set<string>();
  const shares = o.shares.map((s) => parseShare(s, used));
  const root: Share | undefined = o.rootShare ? parseShare(`${o.rootShare}:pimroot`, used) : undefined;
  const all = root ? [...shares, root] : shares;
  if (o.machine === 'microvm' && all.length) throw new PimError(EXIT.USAGE, 'shares need PCI, which microvm has not: use --machine q35 (the default) with --share/--root-share');
  let share: { fs: '9p' | 'virtiofs'; virtiofsd: string | null } = all.length ? chooseShareFs(o.fs === 'auto' ? undefined : o.fs) : { fs: '9p', virtiofsd: null };
  if (o.initramfsFrom) {
    // fail on a bad directory before anything starts
    const st = fs.statSync(o.initramfsFrom, { throwIfNoEntry: false });
    if (!st) throw new PimError(EXIT.NOINPUT, `initramfs directory ${o.initramfsFrom} does not exist`);
    if (!st.isDirectory()) throw new PimError(EXIT.NOINPUT, `${o.initramfsFrom} is not a directory (--initramfs-from takes a directory to pack)`);
  }
  const { chooseAccel, writeKvmVerdict } = await import('../qemu/accel.ts');
  const { accel, probeKvm } = chooseAccel(o.accel);
  const cache = kbootCacheDir();

  // kernel: the PVH vmlinux inside a bzImage boots without the guest decompressing it
  let bootKernel = kernelPath;
  if (kind === 'bzimage' && process.env.PIM_KBOOT_PVH !== '0') bootKernel = (await pvhKernel(kernelPath, cache)) ?? kernelPath;
  log.debug(`kernel ${bootKernel} (${(performance.now() - t0).toFixed(0)} ms)`);

  // initramfs: the user's part, pim's base (init, busybox), this boot's settings
  const parts: string[] = [];
  if (o.initrd) parts.push(o.initrd);
  if (o.initramfsFrom) {
    const p = await cachedPack(o.initramfsFrom, o.compress);
    log.debug(`initramfs ${p.path} (${p.hit ? 'cached' : 'packed'}, ${(performance.now() - t0).toFixed(0)} ms)`);
    parts.push(p.path);
  }
  const busybox = staticBusybox();
  if (!busybox && !parts.length) throw new PimError(EXIT.UNAVAILABLE, 'no initramfs given and no static busybox on this host for pim\'s own: install busybox-static, set PIM_BUSYBOX, or pass --initrd/--initramfs-from');
  if (!busybox) log.debug('no static busybox on the host: pim\'s init relies on the initramfs\'s /bin/sh');
  parts.push(await pimBaseArchive(cache, busybox));

  const append = ['console=ttyS0', 'quiet', 'panic=-1', 'rdinit=/pim/init'];
  if (o.machine === 'microvm') {
    append.push('pci=off');
    const khz = accel === 'tcg' ? hostTscKhz() : null;
    if (khz) append.push(`tsc_early_khz=${khz}`);
  }
  if (o.append) append.push(o.append);

  // From here on something runs (virtiofsd, QEMU): a signal undoes it. The
  // name is taken under its lock, and the stage dir is made only then, so two
  // pim-kboots never share a name, a stage or a FIFO.
  const { trapSignals } = await import('../core/signals.ts');
  const trap = o.console ? null : trapSignals();
  const { reserveVm, reserveFreeName, launch } = await import('../vm/launch.ts');
  const { vmRef } = await import('../vm/ref.ts');
  let res: Awaited<ReturnType<typeof reserveVm>>;
  try {
    res = o.name ? await reserveVm(vmRef(o.name)) : await reserveFreeName('kboot', ensureRuntimeDir());
  } catch (e) {
    trap?.dispose();
    throw e;
  }
  const { name, files } = res;
  const stage = files.stage;
  const extra: string[] = [];
  const fifo = join(stage, 'out');
  let rfd = -1;
  let wfd = -1;
  let sock: net.Socket | null = null;
  let vfsPids: number[] = [];
  let following = false;
  const cleanupStage = () => fs.rmSync(stage, { recursive: true, force: true });
  try {
    fs.mkdirSync(join(stage, 'tree', 'pim'), { recursive: true, mode: 0o700 });
    if (share.fs === 'virtiofs') {
      try {
        const started = await startVirtiofsd(share.virtiofsd!, all, join(stage, 'vfs'));
        vfsPids = started.map((s) => s.pid);
        extra.push(...virtiofsArgs(started, o.mem));
      } catch (e) {
        if (o.fs === 'virtiofs') throw e;
        log.warn(`${(e as Error).message}: sharing over 9p instead`);
        share = { fs: '9p', virtiofsd: null };
      }
    }
    if (share.fs === '9p') extra.push(...ninepArgs(all));
    const mode = o.exec !== undefined ? 'exec' : 'handoff';
    fs.writeFileSync(join(stage, 'tree', 'pim', 'env'), guestEnv({ token: o.token, mode, out: o.console ? '/dev/console' : '/dev/ttyS1', fs: share.fs, shares, root: root?.tag }));
    fs.writeFileSync(join(stage, 'tree', 'pim', 'cmd'), o.exec ?? '');
    await packTree(join(stage, 'tree'), join(stage, 'run.cpio'), 'none');
    parts.push(join(stage, 'run.cpio'));
    const initrd = join(stage, 'initrd');
    concatArchives(parts, initrd);
    log.debug(`initrd ${initrd} (${(performance.now() - t0).toFixed(0)} ms)`);
    if (!o.console) {
      const mk = spawnSync('mkfifo', ['-m', '600', fifo], { encoding: 'utf8' });
      if (mk.status !== 0) throw new PimError(EXIT.CANTCREAT, `cannot make FIFO ${fifo}: ${mk.stderr || mk.error?.message}`);
      rfd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      wfd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
      sock = new net.Socket({ fd: rfd, readable: true, writable: false });
      sock.pause();
      extra.push('-chardev', qemuOpt('file', { id: 'pimout', path: fifo }), '-device', 'isa-serial,chardev=pimout,index=1');
    }
    extra.push(...o.extra);

    const result = await launch(
      res,
      {
        spec: {
          accel: accel as Accel,
          mem: o.mem,
          cpus: o.cpus,
          machine: o.machine,
          kernel: { kernel: bootKernel, initrd, append: append.join(' ') },
          agent: false,
          net: { mode: 'none' },
          rng: o.machine !== 'microvm',
          noReboot: true,
          extra,
        },
        console: o.console,
        sudo: false,
        meta: { kind: 'kboot', image: kernelPath, ssh_port: null, bridged: false, agent: false, accel, mem: o.mem, cpus: o.cpus, snapshot: false },
      },
      { signal: trap?.signal },
    );
    log.debug(`QEMU up (${(performance.now() - t0).toFixed(0)} ms)`);

    if (typeof result === 'number') {
      // --console: QEMU ran in the foreground and has exited
      cleanupStage();
      const text = fs.readFileSync(files.log, 'latin1');
      const m = new RegExp(`${RS}PIM-EXIT-${o.token}:(\\d+)`).exec(text);
      if (o.exec !== undefined && m) return Number(m[1]);
      const panic = findPanic(text);
      if (panic) throw new PimError(EXIT.UNAVAILABLE, `the guest kernel panicked:\n${panic.map((l) => `  | ${l}`).join('\n')}`);
      return result;
    }

    // QEMU holds the FIFO now: drop our write end (EOF = QEMU gone), and the files it has loaded
    fs.closeSync(wfd);
    wfd = -1;
    if (process.env.PIM_KBOOT_SAVE_INITRD) fs.copyFileSync(initrd, process.env.PIM_KBOOT_SAVE_INITRD); // bench/kboot.sh replays the boot by hand
    fs.rmSync(initrd, { force: true });
    fs.rmSync(fifo, { force: true });
    following = true;
    return await follow(sock!, {
      name,
      files,
      pid: result.pid,
      exec: o.exec !== undefined,
      token: o.token,
      timeoutMs: o.timeoutMs,
      t0,
      cleanupStage,
      signal: trap!.signal,
      // remember what KVM did, the way pim-run does, when it was chosen by default
      kvmSeen: probeKvm ? writeKvmVerdict : undefined,
    });
  } catch (e) {
    for (const p of vfsPids) if (isAlive(p)) process.kill(p, 'SIGTERM');
    if (!following) cleanupFiles(files);
    throw e;
  } finally {
    await res.release();
    trap?.dispose();
    if (wfd >= 0) fs.closeSync(wfd);
    if (sock && !sock.destroyed && o.exec !== undefined) sock.destroy();
  }
}

interface FollowOpts {
  name: string;
  files: VmFiles;
  pid: number;
  exec: boolean;
  token: string;
  timeoutMs: number;
  t0: number;
  cleanupStage: () => void;
  /** aborted by SIGINT/SIGTERM/SIGHUP: stop the VM and exit 128+N */
  signal: AbortSignal;
  kvmSeen?: (verdict: 'ok' | 'broken') => void;
}

/** Follow the output port until the guest is up (headless) or the command is done (--exec). */
function follow(sock: net.Socket, f: FollowOpts): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let done = false;
    let gone = false;
    let readySeen = false;
    const scanner = new OutputScanner(f.token, (s) => {
      if (f.exec) stdout().write(Buffer.from(s, 'latin1'));
    });
    // whatever ends this process (EPIPE on stdout exits at once), an --exec VM goes with it
    const lastResort = () => {
      try {
        process.kill(f.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      cleanupFiles(f.files);
      f.cleanupStage();
    };
    process.on('exit', lastResort);
    // QMP, for what the serial ports cannot say: the VM stopped (KVM internal error)
    let qmp: import('../qemu/qmp.ts').QmpClient | null = null;
    void import('../qemu/qmp.ts')
      .then(({ QmpClient }) => QmpClient.connect(f.files.qmp, { timeoutMs: 5_000 }))
      .then((c) => {
        if (done) return c.close();
        qmp = c;
        c.subscribe((ev) => {
          if (ev.event !== 'STOP' || done) return;
          c.execute('query-status').then(
            (st) => {
              const status = (st as { status?: string }).status;
              if (status === 'internal-error') f.kvmSeen?.('broken');
              if (status === 'internal-error') failWith(EXIT.UNAVAILABLE, `${f.name}: the VM stopped with an internal error: KVM does not work here; use --accel tcg or PIM_ACCEL=tcg${f.kvmSeen ? ' (pim remembers this: the next boot uses TCG)' : ''}`);
              else if (status === 'guest-panicked') failWith(EXIT.UNAVAILABLE, `${f.name}: the guest kernel panicked. Last lines of ${f.files.log}:\n${tailText(f.files)}`);
            },
            () => {},
          );
        });
      })
      .catch((e) => log.debug(`QMP: ${(e as Error).message}`));
    const finish = async (how: () => Promise<number>) => {
      if (done) return;
      done = true;
      process.off('exit', lastResort);
      (qmp as import('../qemu/qmp.ts').QmpClient | null)?.close();
      clearTimeout(bootTimer);
      clearTimeout(exitTimer);
      f.signal.removeEventListener('abort', onSignal);
      try {
        resolve(await how());
      } catch (e) {
        reject(e);
      } finally {
        f.cleanupStage();
      }
    };
    const failWith = (code: (typeof EXIT)[keyof typeof EXIT], msg: string) =>
      finish(async () => {
        await killVm(f.pid, f.files);
        throw new PimError(code, msg);
      });
    const onSignal = () =>
      finish(async () => {
        const why = f.signal.reason as Interrupted;
        log.warn(`${why.sig}: stopping ${f.name}`);
        sock.destroy();
        await killVm(f.pid, f.files);
        return why.status;
      });
    f.signal.addEventListener('abort', onSignal, { once: true });
    if (f.signal.aborted) onSignal();
    const bootTimer = setTimeout(
      () => failWith(EXIT.TEMPFAIL, `${f.name}: the guest did not reach userspace within ${f.timeoutMs / 1000} s; stopped it. Last lines of ${f.files.log}:\n${tailText(f.files)}`),
      f.timeoutMs,
    );
    let exitTimer: NodeJS.Timeout | undefined;
    const onQemuGone = () => {
      gone = true;
      if (done) return;
      if (scanner.status !== null) {
        void finish(async () => {
          cleanupFiles(f.files);
          return scanner.status!;
        });
        return;
      }
      const panic = findPanic(fs.readFileSync(f.files.log, 'latin1'));
      if (panic) return failWith(EXIT.UNAVAILABLE, `${f.name}: the guest kernel panicked:\n${panic.map((l) => `  | ${l}`).join('\n')}`);
      failWith(EXIT.UNAVAILABLE, `${f.name}: QEMU exited before ${scanner.ready ? 'the command finished' : 'the guest was up'}. Last lines of ${f.files.log}:\n${tailText(f.files)}`);
    };
    sock.on('data', (d: Buffer) => {
      scanner.push(d.toString('latin1'));
      if (scanner.ready && !readySeen) {
        readySeen = true;
        clearTimeout(bootTimer);
        f.kvmSeen?.('ok');
      }
      if (scanner.failure !== null) return failWith(EXIT.UNAVAILABLE, `${f.name}: pim's init failed: ${scanner.failure}`);
      if (scanner.ready && !f.exec) {
        void finish(async () => {
          sock.destroy();
          log.info(`${f.name} is up (pid ${f.pid}, ${((performance.now() - f.t0) / 1000).toFixed(1)} s); pim-console ${f.name}, pim-stop ${f.name}`);
          writeOut(f.name + '\n');
          return EXIT.OK;
        });
        return;
      }
      if (scanner.status !== null && !gone && !exitTimer) {
        // the guest powers off right after the marker: wait for QEMU to go, bounded
        exitTimer = setTimeout(() => {
          const st = scanner.status!;
          void finish(async () => {
            log.warn(`${f.name} did not power off after the command; stopping it`);
            await killVm(f.pid, f.files);
            return st;
          });
        }, 15_000);
      }
    });
    sock.on('end', onQemuGone);
    sock.on('error', (e) => failWith(EXIT.SOFTWARE, `reading ${f.name}'s output: ${e.message}`));
    sock.resume();
  });
}
