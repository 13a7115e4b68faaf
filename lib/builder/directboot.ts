/**
 * The build VM's direct kernel boot: the kernel, initrd and command line of
 * GRUB's default entry, read out of the disk on the host, handed to QEMU
 * (-kernel, -initrd, -append). The guest boots as GRUB would boot it, without
 * SeaBIOS's disk boot and GRUB's own loading of the kernel and initrd through
 * the BIOS, which under TCG took 4-6 s of every build boot (0.6 s this way).
 *
 * Only for a BIOS build whose disk has a plain GRUB configuration: the default
 * is entry 0, that entry has one `linux` line and its `initrd` lines, no GRUB
 * variable but $vt_handoff in them, and the files are on an ext2/3/4 file
 * system this reader can read. Anything else (UEFI, BLS entries, LVM, XFS, a
 * saved default, a hostile or broken image) boots through the firmware as
 * before, and the build log says why. The image is not changed: its clones
 * boot through GRUB.
 */
import fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { DiskReadError, openDisk, partitions, type DiskReader } from '../image/diskread.ts';
import { ExtError, ExtFs, isExt } from '../image/extfs.ts';

export interface GrubEntry {
  /** the kernel's path on the file system GRUB's `root` names */
  linux: string;
  /** the command line after the path */
  args: string;
  /** the initrds, loaded one after the other (as GRUB concatenates them) */
  initrd: string[];
  /** the UUID the entry's `search --fs-uuid --set=root` names, when it has one */
  uuid: string | null;
}

const CONFIGS = ['/boot/grub/grub.cfg', '/grub/grub.cfg', '/boot/grub2/grub.cfg', '/grub2/grub.cfg'];
const MAX_CFG = 1 << 20;
const MAX_KERNEL = 256 << 20;
/** the initrds together */
const MAX_INITRD = 512 << 20;

/** GRUB's default entry in grub.cfg, or why it cannot be taken from the file alone. */
export function grubDefault(cfg: string): GrubEntry | string {
  const lines = cfg.split('\n').map((l) => l.trim());
  for (const l of lines) {
    const m = /^set default=["']?([^"'\s]*)["']?$/.exec(l);
    if (m && m[1] !== '0' && m[1] !== '${next_entry}') return `GRUB's default is ${m[1]}, not entry 0`;
  }
  const first = lines.findIndex((l) => /^(menuentry|submenu)\s/.test(l));
  if (first < 0) return 'grub.cfg has no menuentry (BLS entries or another loader)';
  if (lines[first]!.startsWith('submenu')) return "GRUB's first entry is a submenu";
  const body: string[] = [];
  let depth = 0;
  for (const l of lines.slice(first)) {
    if (l.endsWith('{')) depth++;
    else if (l === '}' && --depth === 0) break;
    else if (depth === 1) body.push(l);
  }
  const linux = body.filter((l) => /^linux(16|efi)?\s/.test(l));
  const initrd = body.filter((l) => /^initrd(16|efi)?\s/.test(l));
  if (linux.length !== 1 || initrd.length > 1)
    return `GRUB's default entry has ${linux.length} linux and ${initrd.length} initrd lines`;
  const uuids = new Set(body.flatMap((l) => (/^search\s.*--fs-uuid\b/.test(l) ? [l.split(/\s+/).pop()!] : [])));
  if (uuids.size > 1) return "GRUB's default entry searches more than one file system";
  const words = (l: string) =>
    l
      .replace(/\$\{?vt_handoff\}?/g, '')
      .split(/\s+/)
      .filter(Boolean)
      .slice(1);
  const all = [...linux, ...initrd].join(' ');
  if (/[$"'\\`;|&<>]/.test(all.replace(/\$\{?vt_handoff\}?/g, '')))
    return "GRUB's default entry uses variables or quoting";
  // printable ASCII only: the line goes into the build log, and onto QEMU's command line
  if (/[^\x20-\x7e]/.test(all.replace(/\t/g, ' ')))
    return "GRUB's default entry holds bytes that are not printable ASCII";
  const [path, ...args] = words(linux[0]!);
  // the kernel's own limit (x86's COMMAND_LINE_SIZE is 2048): QEMU refuses a longer one
  if (args.join(' ').length > 1900) return "GRUB's default entry has a command line over 1900 bytes";
  const paths = [path!, ...(initrd[0] ? words(initrd[0]) : [])];
  if (!paths.every((p) => p.startsWith('/'))) return "GRUB's default entry names a file on another device";
  return { linux: path!, args: args.join(' '), initrd: paths.slice(1), uuid: [...uuids][0] ?? null };
}

export interface DirectBoot {
  kernel: string;
  initrd?: string;
  append: string;
  /** what the build log says */
  label: string;
}

/**
 * Read GRUB's default entry's kernel and initrd out of `disk` into `dir`
 * (vmlinuz and initrd, 0600). A string: why the VM boots through its firmware.
 */
export function directBoot(disk: string, dir: string): DirectBoot | string {
  let d: DiskReader | null = null;
  try {
    d = openDisk(disk);
    const found = findGrub(d);
    if (typeof found === 'string') return found;
    const { entry, fs: cfgFs, all } = found;
    const root = entry.uuid ? all.find((f) => f.uuid === entry.uuid?.toLowerCase()) : cfgFs;
    if (!root)
      return `GRUB's default entry is on file system ${entry.uuid}, which is not an ext file system of the disk`;
    const kernel = root.readFile(entry.linux, MAX_KERNEL);
    if (!kernel) return `${entry.linux} is not on the disk`;
    const parts: Buffer[] = [];
    let left = MAX_INITRD;
    for (const p of entry.initrd) {
      const b = root.readFile(p, left);
      if (!b) return `${p} is not on the disk`;
      parts.push(b);
      left -= b.length;
    }
    const out: DirectBoot = {
      kernel: join(dir, 'vmlinuz'),
      append: `BOOT_IMAGE=${entry.linux} ${entry.args}`.trim(),
      label: `${entry.linux}${entry.initrd.length ? ` with ${entry.initrd.join(', ')}` : ''}`,
    };
    fs.writeFileSync(out.kernel, kernel, { mode: 0o600, flag: 'wx' });
    if (parts.length) {
      out.initrd = join(dir, 'initrd');
      fs.writeFileSync(out.initrd, Buffer.concat(parts), { mode: 0o600, flag: 'wx' });
    }
    return out;
  } catch (e) {
    if (e instanceof DiskReadError || e instanceof ExtError) return e.message;
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOSPC' || err.code === 'EDQUOT')
      throw new PimError(
        EXIT.CANTCREAT,
        `cannot write the build's kernel and initrd into ${dir}: no space left; free some space and try again`,
      );
    if (err.code) return err.message;
    throw e;
  } finally {
    d?.close();
  }
}

function findGrub(d: DiskReader): { entry: GrubEntry; fs: ExtFs; all: ExtFs[] } | string {
  const all = partitions(d)
    .filter((p) => isExt(d, p.start))
    .map((p) => new ExtFs(d, p.start));
  if (!all.length) return 'the disk has no ext2/3/4 file system';
  for (const f of all)
    for (const path of CONFIGS) {
      const cfg = f.readFile(path, MAX_CFG);
      if (!cfg) continue;
      const entry = grubDefault(cfg.toString('utf8'));
      return typeof entry === 'string' ? entry : { entry, fs: f, all };
    }
  return 'no grub.cfg on the disk';
}
