/**
 * pim-ventoy install: Ventoy put on a disk by the user's own Ventoy release
 * (pim does not ship Ventoy). pim runs `sh Ventoy2Disk.sh -i [-g] [-r MiB]
 * DEVICE` from the release's directory, as root, and answers its two
 * "Continue? (y/n)" prompts with "y". Refused before anything runs: without
 * --yes (64), anything that is not a whole disk (64), the disk that holds
 * "/" (64), a disk in use (75): a mounted partition, an active swap partition
 * (/proc/swaps), or a holder in sysfs (a device-mapper or md device built on it).
 */
import * as fs from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { asRoot, mounts, mountsOf, partitionsOf } from './stick.ts';

export interface InstallOpts {
  ventoy: string;
  gpt: boolean;
  /** MiB left free at the end of the disk */
  reserve?: number;
  yes: boolean;
}

/** The whole disk that holds "/", by name (vda, sda, nvme0n1), or null. */
export function rootDisk(): string | null {
  const st = fs.statSync('/');
  const major = Math.floor(st.dev / 256) & 0xfff;
  const minor = (st.dev & 0xff) | ((st.dev >> 12) & 0xfff00);
  let name: string | null = null;
  try {
    name = basename(fs.realpathSync(`/sys/dev/block/${major}:${minor}`));
  } catch {
    const src = mounts().find((m) => m.target === '/')?.source;
    if (src?.startsWith('/dev/')) name = basename(fs.realpathSync(src));
  }
  if (!name) return null;
  try {
    // a partition's sysfs dir sits inside its disk's
    return fs.existsSync(`/sys/class/block/${name}/partition`)
      ? basename(dirname(fs.realpathSync(`/sys/class/block/${name}`)))
      : name;
  } catch {
    return name;
  }
}

/** The active swap areas on `dev` or its partitions (from /proc/swaps), by path. */
export function swapsOf(dev: string, swaps = '/proc/swaps'): string[] {
  let text: string;
  try {
    text = fs.readFileSync(swaps, 'utf8');
  } catch {
    return [];
  }
  const ours = new Set([dev, ...partitionsOf(dev)].map((d) => fs.realpathSync(d)));
  const out: string[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.split(/\s+/)[0];
    if (!f) continue;
    // the kernel escapes blanks and backslashes in the name as octal
    const name = f.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    let real = name;
    try {
      real = fs.realpathSync(name);
    } catch {
      /* a swap file's path may be gone from this mount namespace */
    }
    if (ours.has(real)) out.push(name);
  }
  return out;
}

/** What holds `dev` or one of its partitions (device-mapper, md, bcache), as "part by holder" (sysfs holders/). */
export function holdersOf(dev: string, sys = '/sys'): string[] {
  const name = basename(fs.realpathSync(dev));
  const disk = join(sys, 'block', name);
  let parts: string[] = [];
  try {
    parts = fs.readdirSync(disk).filter((n) => n.startsWith(name) && fs.existsSync(join(disk, n, 'partition')));
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const d of [name, ...parts]) {
    let hs: string[] = [];
    try {
      hs = fs.readdirSync(d === name ? join(disk, 'holders') : join(disk, d, 'holders'));
    } catch {
      continue;
    }
    for (const h of hs.sort()) {
      let shown = h;
      try {
        const dm = fs.readFileSync(join(sys, 'block', h, 'dm', 'name'), 'utf8').trim();
        if (dm) shown = `${h} (${dm})`;
      } catch {
        /* not device-mapper */
      }
      out.push(`/dev/${d} by /dev/${shown}`);
    }
  }
  return out;
}

/** Refuse what must never be erased; returns the device's real path. */
export function checkTarget(device: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(device);
  } catch {
    throw new PimError(EXIT.NOINPUT, `no such device: ${device}; see lsblk`);
  }
  if (!st.isBlockDevice())
    throw new PimError(
      EXIT.USAGE,
      `${device} is not a block device; give a whole disk such as /dev/sdb (lsblk shows them)`,
    );
  const real = fs.realpathSync(device);
  const name = basename(real);
  if (fs.existsSync(`/sys/class/block/${name}/partition`))
    throw new PimError(
      EXIT.USAGE,
      `${device} is a partition, not a whole disk; give the disk itself (${'/dev/' + basename(dirname(fs.realpathSync(`/sys/class/block/${name}`)))})`,
    );
  if (rootDisk() === name) throw new PimError(EXIT.USAGE, `${device} holds "/", the system you are running: refused`);
  const m = mountsOf(real);
  if (m.length)
    throw new PimError(
      EXIT.TEMPFAIL,
      `${device} has a mounted partition (${m.map((x) => `${x.source} at ${x.target}`).join(', ')}); unmount it first`,
    );
  const sw = swapsOf(real);
  if (sw.length)
    throw new PimError(
      EXIT.TEMPFAIL,
      `${device} has an active swap partition (${sw.join(', ')}); swapoff ${sw[0]} first`,
    );
  const held = holdersOf(real);
  if (held.length)
    throw new PimError(
      EXIT.TEMPFAIL,
      `${device} is in use: ${held.join(', ')} (device-mapper, LVM, RAID or encryption); stop that device first (dmsetup remove, vgchange -an, mdadm --stop, cryptsetup close)`,
    );
  return real;
}

export async function install(
  device: string,
  opts: InstallOpts,
): Promise<{ name: string; installed: boolean; gpt: boolean }> {
  const script = resolve(opts.ventoy);
  if (!fs.existsSync(script) || !fs.statSync(script).isFile())
    throw new PimError(
      EXIT.NOINPUT,
      `no Ventoy2Disk.sh at ${opts.ventoy}; download a Ventoy release for Linux from https://www.ventoy.net, unpack it and give its Ventoy2Disk.sh`,
    );
  if (opts.reserve !== undefined && !(Number.isInteger(opts.reserve) && opts.reserve > 0))
    throw new PimError(EXIT.USAGE, '--reserve must be a whole number of MiB above 0');
  checkTarget(device);
  if (!opts.yes)
    throw new PimError(
      EXIT.USAGE,
      `install erases everything on ${device}; run again with --yes if that is what you want`,
    );
  const args = [
    script,
    '-i',
    ...(opts.gpt ? ['-g'] : []),
    ...(opts.reserve ? ['-r', String(opts.reserve)] : []),
    device,
  ];
  const r = await asRoot(`run Ventoy2Disk.sh on ${device}`, 'sh', args, {
    input: 'y\ny\n',
    cwd: dirname(script),
    code: EXIT.UNAVAILABLE,
  });
  process.stderr.write(
    r.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => `Ventoy2Disk.sh: ${l}\n`)
      .join(''),
  );
  return { name: device, installed: true, gpt: opts.gpt };
}
