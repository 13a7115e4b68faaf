/**
 * Finding Ventoy sticks, read-only: nothing is mounted and Ventoy's own
 * tools are not needed. A disk is a Ventoy disk when
 *   - partition 1 starts at sector 2048,
 *   - partition 2 is exactly 65536 sectors of FAT16 labelled VTOYEFI,
 * and its version is VENTOY_VERSION in partition 2's /grub/grub.cfg.
 * On Linux the candidates are the whole disks in /sys/block (loop devices
 * with a backing file among them); on macOS the disks `diskutil list`
 * names. `--stick` may name a device or an image file.
 */
import * as fs from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { openExfat, openFat16, readTable, SECTOR, ventoyVersion, type Table } from './disk.ts';
import { run } from '../core/run.ts';

export const P1_START = 2048;
export const P2_SECTORS = 65536;
export const EFI_LABEL = 'VTOYEFI';

export interface Stick {
  /** the device (/dev/sdb, /dev/loop3) or the image file, as given or found */
  name: string;
  kind: 'device' | 'image';
  size: number;
  version: string | null;
  style: 'mbr' | 'gpt';
  /** bytes free on partition 1, null when its exFAT could not be read */
  free: number | null;
  /** ISO files on partition 1 ("/iso/debian.iso"), outside /ventoy */
  isos: string[];
  /** byte offsets and lengths of partitions 1 and 2 */
  p1: { offset: number; length: number };
  p2: { offset: number; length: number };
}

/** Why `table` is not a Ventoy layout, or null when it is one. */
export function layoutProblem(t: Table | null): string | null {
  if (!t) return 'it has no partition table';
  const p1 = t.parts.find((p) => p.index === 1);
  const p2 = t.parts.find((p) => p.index === 2);
  if (!p1 || !p2) return 'it does not have two partitions';
  if (p1.start !== P1_START) return `its partition 1 starts at sector ${p1.start}, not ${P1_START}`;
  if (p2.sectors !== P2_SECTORS) return `its partition 2 is ${p2.sectors} sectors, not ${P2_SECTORS}`;
  return null;
}

const isIso = (p: string) => /\.iso$/i.test(p);

/** Read a device or image: its Ventoy facts, or the reason it is not one. */
export function probe(path: string, kind: Stick['kind']): Stick | { problem: string } {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    return { problem: `cannot read it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` };
  }
  try {
    const t = readTable(fd);
    const bad = layoutProblem(t);
    if (bad) return { problem: bad };
    const [p1, p2] = [1, 2].map((i) => t!.parts.find((p) => p.index === i)!);
    const efi = openFat16(fd, p2!.start * SECTOR);
    if (!efi) return { problem: 'its partition 2 is not FAT16' };
    if (efi.label !== EFI_LABEL)
      return { problem: `its partition 2 is labelled ${JSON.stringify(efi.label)}, not ${EFI_LABEL}` };
    const cfg = efi.read('/grub/grub.cfg');
    const ex = openExfat(fd, p1!.start * SECTOR);
    const isos = ex
      ? ex
          .files((d) => d.toLowerCase() === '/ventoy' || basename(d).startsWith('.'))
          .filter((f) => isIso(f.path))
          .map((f) => f.path)
      : [];
    const size = kind === 'image' ? fs.fstatSync(fd).size : deviceSize(path, fd);
    return {
      name: path,
      kind,
      size,
      version: cfg ? ventoyVersion(cfg.toString('latin1')) : null,
      style: t!.style,
      free: ex ? ex.free : null,
      isos,
      p1: { offset: p1!.start * SECTOR, length: p1!.sectors * SECTOR },
      p2: { offset: p2!.start * SECTOR, length: p2!.sectors * SECTOR },
    };
  } finally {
    fs.closeSync(fd);
  }
}

/** A block device's size in bytes: sysfs on Linux, else the end of the device. */
function deviceSize(path: string, fd: number): number {
  try {
    return Number(fs.readFileSync(`/sys/class/block/${basename(fs.realpathSync(path))}/size`, 'utf8').trim()) * SECTOR;
  } catch {
    return fs.fstatSync(fd).size;
  }
}

/** The whole disks of this machine that could be sticks (not partitions, not idle loop devices). */
export async function candidates(): Promise<string[]> {
  if (process.platform === 'darwin') {
    const r = await run('diskutil', ['list', 'external', 'physical']);
    return [...r.stdout.matchAll(/^(\/dev\/disk\d+)\b/gm)].map((m) => m[1]!);
  }
  let names: string[];
  try {
    names = fs.readdirSync('/sys/block');
  } catch {
    return [];
  }
  return names
    .filter((n) => !/^(ram|zram|dm-|md|sr|fd|nbd)/.test(n))
    .filter((n) => !n.startsWith('loop') || fs.existsSync(`/sys/block/${n}/loop/backing_file`))
    .filter((n) => readNum(`/sys/block/${n}/size`) > 0)
    .sort()
    .map((n) => `/dev/${n}`);
}

const readNum = (p: string) => {
  try {
    return Number(fs.readFileSync(p, 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
};

/** Every Ventoy disk found; `skipped` says which candidates could not be read. */
export async function findSticks(): Promise<{ sticks: Stick[]; unreadable: string[] }> {
  const sticks: Stick[] = [];
  const unreadable: string[] = [];
  for (const dev of await candidates()) {
    const r = probe(dev, 'device');
    if ('problem' in r) {
      if (r.problem.startsWith('cannot read')) unreadable.push(dev);
    } else sticks.push(r);
  }
  return { sticks, unreadable };
}

/** What `--stick X` names: a block device or an image file (66 when neither). */
export function stickKind(path: string): Stick['kind'] {
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch {
    throw new PimError(EXIT.NOINPUT, `no such stick: ${path} does not exist; see pim-ventoy list`);
  }
  if (st.isBlockDevice() || (process.platform === 'darwin' && st.isCharacterDevice())) return 'device';
  if (st.isFile()) return 'image';
  throw new PimError(EXIT.USAGE, `${path} is neither a block device nor an image file`);
}

/**
 * The stick a command works on: `--stick` (checked to be a Ventoy disk:
 * 65 when it is not), else the only one `list` finds (66 for none, 64 for
 * several, listing them).
 */
export async function pickStick(given: string | undefined): Promise<Stick> {
  if (given) {
    const path = given.startsWith('/dev/') ? given : resolve(given);
    const kind = stickKind(path);
    const r = probe(path, kind);
    if ('problem' in r) {
      const code = r.problem.startsWith('cannot read') ? EXIT.NOPERM : EXIT.DATAERR;
      throw new PimError(
        code,
        `${given} is not a Ventoy disk: ${r.problem}${code === EXIT.NOPERM ? ' (run as root, or through sudo)' : '; make one with pim-ventoy install'}`,
      );
    }
    return r;
  }
  const { sticks, unreadable } = await findSticks();
  if (sticks.length === 1) return sticks[0]!;
  if (sticks.length > 1)
    throw new PimError(
      EXIT.USAGE,
      `${sticks.length} Ventoy disks found (${sticks.map((s) => s.name).join(', ')}); pick one with --stick`,
    );
  const hint = unreadable.length ? ` (${unreadable.join(', ')} could not be read: run as root, or through sudo)` : '';
  throw new PimError(
    EXIT.NOINPUT,
    `no Ventoy disk found${hint}; plug one in, give an image with --stick, or make one with pim-ventoy install`,
  );
}

/** A partition's device node: /dev/sdb1, /dev/loop3p1, /dev/nvme0n1p1, /dev/disk4s1. */
export function partDevice(dev: string, n: number): string {
  if (process.platform === 'darwin') return `${dev}s${n}`;
  return /\d$/.test(dev) ? `${dev}p${n}` : `${dev}${n}`;
}

/** The image a loop device reads, when it is one. */
export function loopBacking(dev: string): string | null {
  try {
    return fs.readFileSync(join('/sys/block', basename(dev), 'loop', 'backing_file'), 'utf8').trim();
  } catch {
    return null;
  }
}
