/**
 * Resolving what `pim-run NAME|IMAGE` should boot: a name in the image store
 * (~/.local/share/pim/images/NAME.qcow2), a path to an image file, or a
 * profile that pim-build has built.
 *
 * A VM never boots a build itself (builds are immutable). It boots a qcow2
 * overlay in the image store, images/NAME.qcow2, backed by the build: made on
 * the first run, kept between runs (the VM's changes live in it), and made
 * anew when the profile has a newer build, the previous one kept as
 * NAME.prev.qcow2 (bootable as "NAME.prev") until the next refresh.
 */
import {
  accessSync,
  chmodSync,
  closeSync,
  constants,
  copyFileSync,
  existsSync,
  openSync,
  readSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { efivarsOf, imagesDir, STORE_FILES } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { checkName, nameProblem } from '../core/names.ts';
import { log } from '../core/log.ts';
import { buildDisk, buildEfivars, buildOfDisk, isBuildDisk, latestBuild, type BuildRecord } from './registry.ts';
import { createOverlay } from './qemu-img.ts';

export const IMAGE_EXTS = ['.qcow2', '.img', '.raw'];

export interface ImageRef {
  name: string; // VM name
  path: string;
  format: 'qcow2' | 'raw';
  efivars: string | null; // UEFI vars next to the image, if any
  /** the build this disk is an overlay of, if any */
  build: string | null;
}

export const looksLikePath = (s: string) => s.includes('/') || IMAGE_EXTS.includes(extname(s));

export function imageFormat(path: string): 'qcow2' | 'raw' {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(4);
    readSync(fd, b, 0, 4, 0);
    return b.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb])) ? 'qcow2' : 'raw';
  } finally {
    closeSync(fd);
  }
}

/** EFI vars that come with an image: NAME.efivars.fd beside NAME.qcow2. */
export function efivarsFor(path: string): string | null {
  const base = path.slice(0, path.length - extname(path).length);
  for (const p of [efivarsOf(base), efivarsOf(path)]) if (existsSync(p)) return p;
  return null;
}

/** A VM name made from a file name: invalid characters become '-'. */
export function nameFromPath(p: string): string {
  let n = basename(p, extname(p))
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .replace(/\.\.+/g, '.')
    .replace(/^[-.]+/, '');
  if (n.length > 64) n = n.slice(0, 64);
  return n || 'vm';
}

/**
 * The store disk `images/NAME.qcow2` as an overlay of `build`. An overlay of
 * another build is moved to NAME.prev.qcow2 first (with its vars).
 */
export async function overlayForBuild(
  name: string,
  build: BuildRecord,
  inUse?: (name: string) => Promise<boolean>,
): Promise<string> {
  const dir = ensurePrivateDir(imagesDir());
  const disk = join(dir, `${name}.qcow2`);
  const vars = join(dir, efivarsOf(name));
  const current = existsSync(disk) ? buildOfDisk(disk) : null;
  if (current?.id === build.id) return disk;
  if (existsSync(disk)) {
    if (!current)
      throw new PimError(
        EXIT.CANTCREAT,
        `${disk} exists and is not a disk of a pim build; remove it or run it by its path`,
      );
    if (await inUse?.(name)) {
      throw new PimError(
        EXIT.TEMPFAIL,
        `${name} is running on build ${current.id}; the profile's newest build is ${build.id}: stop ${name} (pim-stop ${name}) and run it again`,
      );
    }
    renameSync(disk, join(dir, `${name}.prev.qcow2`));
    if (existsSync(vars)) renameSync(vars, join(dir, name + STORE_FILES.prevEfivars));
    else rmSync(join(dir, name + STORE_FILES.prevEfivars), { force: true });
    log.info(`${name}: the profile has a newer build (${build.id}); the disk on ${current.id} is kept as ${name}.prev`);
  }
  const tmp = join(dir, `.${name}.qcow2.${process.pid}.tmp`);
  try {
    await createOverlay(tmp, buildDisk(build), build.disk.format);
    chmodSync(tmp, 0o600);
    const bv = buildEfivars(build);
    if (bv) {
      copyFileSync(bv, vars);
      chmodSync(vars, 0o600); // the build's copy is read-only; the VM writes its own
    }
    renameSync(tmp, disk);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  return disk;
}

/**
 * What to boot for TARGET: an image path, a store image, or the newest build
 * of a profile. `inUse` says whether a VM of a name runs (its disk is then
 * not refreshed under it).
 */
export async function resolveImage(
  target: string,
  nameOverride?: string,
  inUse?: (name: string) => Promise<boolean>,
): Promise<ImageRef> {
  let path: string;
  let name: string;
  if (looksLikePath(target)) {
    path = resolve(target);
    if (!existsSync(path)) throw new PimError(EXIT.NOINPUT, `image ${path} does not exist; check the path`);
    const b = buildOfDisk(path);
    if (b && isBuildDisk(b, path)) {
      // a build's own image: boot it through the store overlay, never the build itself
      name = checkName(nameOverride ?? b.profile);
      path = await overlayForBuild(name, b, inUse);
    } else name = nameOverride ?? nameFromPath(path);
  } else {
    const why = nameProblem(target);
    if (why) throw new PimError(EXIT.USAGE, `bad VM name ${JSON.stringify(target)}: ${why}`);
    name = nameOverride ?? target;
    const dir = imagesDir();
    const found = storeImage(target);
    const build = latestBuild(target);
    if (build && (!found || buildOfDisk(found))) path = await overlayForBuild(target, build, inUse);
    else if (found) path = found;
    else {
      throw new PimError(
        EXIT.NOINPUT,
        `no image named ${target} in ${dir} (looked for ${IMAGE_EXTS.map((e) => target + e).join(', ')}) and no build of a profile ${target}; build one with pim-build run ${target}, or pass a path to an image file`,
      );
    }
  }
  checkName(name);
  if (!statSync(path).isFile()) throw new PimError(EXIT.NOINPUT, `${path} is not a file`);
  try {
    accessSync(path, constants.R_OK);
  } catch {
    throw new PimError(EXIT.NOPERM, `cannot read image ${path}; check its permissions`);
  }
  return { name, path, format: imageFormat(path), efivars: efivarsFor(path), build: buildOfDisk(path)?.id ?? null };
}

/** The store's image NAME (NAME.qcow2, .img or .raw, the first there), or null. */
export function storeImage(name: string): string | null {
  const dir = imagesDir();
  return IMAGE_EXTS.map((e) => join(dir, name + e)).find((p) => existsSync(p)) ?? null;
}

/** Images in the store, by name. */
export function storeImages(): Array<{ name: string; path: string }> {
  const dir = imagesDir();
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch {
    return [];
  }
  return files
    .filter((f) => IMAGE_EXTS.includes(extname(f)) && !nameProblem(basename(f, extname(f))))
    .map((f) => ({ name: basename(f, extname(f)), path: join(dir, f) }))
    .sort((a, b) => a.name.localeCompare(b.name));
}
