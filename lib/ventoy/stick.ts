/**
 * Opening a stick for writing: an image file is set up on a loop device of
 * its own (`losetup -f --show -P`, then `partx -u`), partition 1 is mounted
 * at a private temp dir in pim's runtime dir (the kernel's exfat driver where
 * there is one, else exfat-fuse's mount.exfat-fuse), and `close()` undoes
 * both: unmount, remove the dir, detach that loop device by its own name.
 * Callers run close() in a `finally`, with signals trapped
 * (lib/core/signals.ts), so Ctrl-C unmounts too.
 *
 * Only those operations run as root: through `sudo -n` when pim is not root
 * (after one `sudo -v` on a terminal), and a refused sudo is exit 77 naming
 * the operation. A stick with a partition mounted elsewhere is refused (75):
 * two writers on one exFAT would corrupt it. On macOS, partition 1 is the
 * volume macOS mounted (/Volumes/Ventoy); pim mounts nothing there.
 */
import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { ensureRuntimeDir } from '../core/paths.ts';
import { log } from '../core/log.ts';
import { sudoValidate, run } from '../core/run.ts';
import { loopBacking, partDevice, pickStick, type Stick } from './detect.ts';
import { checkAborted, trapSignals } from '../core/signals.ts';
import { acquireLock } from '../core/lock.ts';

/** The prefix of pim's mount dirs in the runtime dir: eject finds leftovers by it. */
export const MOUNT_PREFIX = 'ventoy.';
export const MAC_VOLUME = '/Volumes/Ventoy';

const isRoot = () => process.getuid?.() === 0;

/**
 * Run one operation that needs root: directly as root, else through sudo -n.
 * `op` names it for the hint when sudo refuses (77); another failure is `code`.
 */
export async function asRoot(
  op: string,
  cmd: string,
  args: string[],
  opts: { input?: string; code?: PimError['code']; cwd?: string; stdio?: 'pipe' | 'inherit' } = {},
) {
  if (isRoot()) {
    const r = await run(cmd, args, { input: opts.input, cwd: opts.cwd, stdio: opts.stdio, hint: hintFor(cmd) });
    if (r.code !== 0) throw failure(op, r.stderr || r.stdout, r.code, opts.code);
    return r;
  }
  await sudoValidate(`sudo refused; ${op} needs root`);
  const r = await run('sudo', ['-n', cmd, ...args], {
    input: opts.input,
    cwd: opts.cwd,
    stdio: opts.stdio,
    hint: 'install sudo, or run as root',
  });
  if (r.code !== 0) {
    if (
      /^sudo: /m.test(r.stderr) &&
      /password|not allowed|may not run|terminal is required|not in the sudoers/i.test(r.stderr)
    ) {
      throw new PimError(
        EXIT.NOPERM,
        `sudo refused to ${op} (${cmd}); run "sudo -v" first, or allow ${cmd} in a NOPASSWD sudoers rule (man pim-ventoy has one)`,
      );
    }
    throw failure(op, r.stderr || r.stdout, r.code, opts.code);
  }
  return r;
}

const hintFor = (cmd: string) =>
  ({
    'mount.exfat-fuse': 'install exfat-fuse (Debian: apt-get install exfat-fuse)',
    losetup: 'install util-linux (mount)',
    partx: 'install util-linux',
  })[basename(cmd)];

function failure(op: string, stderr: string, status: number, code: PimError['code'] = EXIT.SOFTWARE): PimError {
  const last = stderr.trim().split('\n').filter(Boolean).pop() ?? `exit status ${status}`;
  return new PimError(code, `cannot ${op}: ${last}`);
}

// ---------------------------------------------------------------- mounts

export interface MountEntry {
  source: string;
  target: string;
  fstype: string;
  /** major:minor of the mounted device (0:N for FUSE) */
  dev: string;
}

const unescapeOctal = (s: string) => s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** The mount table (/proc/self/mountinfo); empty where there is none. */
export function mounts(): MountEntry[] {
  let text: string;
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const f = pre.split(' ');
    const g = post.split(' ');
    out.push({ dev: f[2]!, target: unescapeOctal(f[4]!), fstype: g[0]!, source: unescapeOctal(g[1]!) });
  }
  return out;
}

const devNum = (p: string): string | null => {
  try {
    const st = fs.statSync(p);
    return st.isBlockDevice()
      ? `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`
      : null;
  } catch {
    return null;
  }
};

/** The partitions of disk `dev` (from sysfs), as device paths. */
export function partitionsOf(dev: string): string[] {
  const name = basename(fs.realpathSync(dev));
  try {
    return fs
      .readdirSync(`/sys/block/${name}`)
      .filter((n) => n.startsWith(name) && fs.existsSync(`/sys/block/${name}/${n}/partition`))
      .map((n) => `/dev/${n}`);
  } catch {
    return [];
  }
}

/** Where `dev` or any of its partitions is mounted. */
export function mountsOf(dev: string): MountEntry[] {
  const devs = [dev, ...partitionsOf(dev)];
  const nums = new Set(devs.map(devNum).filter(Boolean));
  const real = new Set(devs.map((d) => fs.realpathSync(d)));
  return mounts().filter((m) => real.has(m.source) || nums.has(m.dev));
}

/** The loop devices that read `image`. */
export function loopsOf(image: string): string[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync('/sys/block').filter((n) => n.startsWith('loop'));
  } catch {
    /* not Linux */
  }
  const real = fs.realpathSync(image);
  return names.map((n) => `/dev/${n}`).filter((d) => loopBacking(d) === real);
}

function refuseMounted(name: string, dev: string): void {
  const m = mountsOf(dev);
  if (m.length)
    throw new PimError(
      EXIT.TEMPFAIL,
      `${name} is in use: ${m.map((x) => `${x.source} is mounted at ${x.target}`).join(', ')}; unmount it (umount ${m[0]!.target}) and try again`,
    );
}

// ---------------------------------------------------------------- open and close

/**
 * After `losetup -d`: wait (at most 10 s) until the kernel has let the loop
 * device go. A FUSE daemon (exfat-fuse) may still hold it for a moment after
 * umount returns, and the detach is then deferred (autoclear) until it closes
 * the device with its last writes; the next command on the same image must
 * see them. sysfs has no event for this, so it is polled.
 */
async function released(loop: string): Promise<void> {
  const bound = `/sys/block/${basename(loop)}/loop/backing_file`;
  for (let i = 0; i < 200 && fs.existsSync(bound); i++) await new Promise((r) => setTimeout(r, 50));
  if (fs.existsSync(bound))
    log.warn(`${loop} is still in use 10 s after it was detached; it goes when its last user closes it`);
}

export interface OpenStick {
  stick: Stick;
  /** the block device: the stick's own, or the loop device pim set up for an image */
  dev: string;
  /** where partition 1 is mounted */
  root: string;
  /** unmount, remove the dir, detach pim's loop device; safe to call twice */
  close(): Promise<void>;
}

const exfatInKernel = () => {
  try {
    return /\texfat$/m.test(fs.readFileSync('/proc/filesystems', 'utf8'));
  } catch {
    return false;
  }
};

/** Pick the stick, take its lock, set it up and mount partition 1. */
export async function openStick(given: string | undefined, signal?: AbortSignal): Promise<OpenStick> {
  const stick = await pickStick(given);
  if (process.platform === 'darwin') {
    if (!fs.existsSync(MAC_VOLUME))
      throw new PimError(
        EXIT.UNAVAILABLE,
        `${MAC_VOLUME} is not mounted; plug the stick in (macOS mounts it there) and try again`,
      );
    return { stick, dev: stick.name, root: MAC_VOLUME, close: async () => undefined };
  }
  const run = ensureRuntimeDir();
  const lock = await acquireLock(join(run, `ventoy-${fs.realpathSync(stick.name)}.lock`), `the stick ${stick.name}`);
  let loop: string | null = null;
  let dir: string | null = null;
  let mounted = false;
  const close = async () => {
    try {
      if (mounted) {
        await asRoot(`unmount ${dir}`, 'umount', [dir!]);
        mounted = false;
      }
      if (dir) fs.rmdirSync(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log.warn((e as Error).message);
    } finally {
      dir = null;
      if (loop) {
        const l = loop;
        loop = null;
        await asRoot(`detach ${l}`, 'losetup', ['-d', l]).then(
          () => released(l),
          (e: Error) => log.warn(e.message),
        );
      }
      await lock.release();
    }
  };
  try {
    let dev = stick.name;
    if (stick.kind === 'image') {
      for (const l of loopsOf(stick.name)) refuseMounted(stick.name, l);
      const r = await asRoot(`set up ${stick.name} on a loop device`, 'losetup', ['-f', '--show', '-P', stick.name]);
      loop = dev = r.stdout.trim();
      log.debug(`${stick.name}: loop device ${dev}`);
      await asRoot(`read the partition table of ${dev}`, 'partx', ['-u', dev]);
    } else refuseMounted(stick.name, dev);
    checkAborted(signal);
    const p1 = partDevice(dev, 1);
    if (!fs.existsSync(p1))
      throw new PimError(EXIT.UNAVAILABLE, `${p1} does not exist after reading ${dev}'s partition table; try again`);
    dir = fs.mkdtempSync(join(run, MOUNT_PREFIX));
    const ids = isRoot() ? [] : ['-o', `uid=${process.getuid!()},gid=${process.getgid!()},umask=077`];
    if (exfatInKernel()) await asRoot(`mount ${p1}`, 'mount', ['-t', 'exfat', ...ids, p1, dir]);
    else await asRoot(`mount ${p1}`, 'mount.exfat-fuse', [...ids, p1, dir]);
    mounted = true;
    checkAborted(signal);
    return { stick, dev, root: dir, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * Open, run `fn`, close: with SIGINT/SIGTERM/SIGHUP trapped, so an interrupt
 * aborts `fn` through its signal and still unmounts (exit 128+N).
 */
export async function withStick<T>(
  given: string | undefined,
  fn: (s: OpenStick, signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const trap = trapSignals();
  try {
    const s = await openStick(given, trap.signal);
    try {
      return await fn(s, trap.signal);
    } finally {
      await s.close();
    }
  } finally {
    trap.dispose();
  }
}
