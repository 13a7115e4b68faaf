/**
 * pim-vm clone and resize: new store images from old ones, and bigger disks.
 *   cloneImage    a copy of a stopped VM's disk (reflinked where the filesystem
 *                 can), or an overlay of a build, as images/NEW.qcow2
 *   resizeImage   qemu-img resize of a stopped VM's disk in the store
 * A disk that a running VM holds is refused (75), and so is a stored build
 * (65: builds are never changed; clone one, then resize the clone).
 */
import { chmodSync, constants, copyFileSync, existsSync, realpathSync, renameSync, rmSync } from 'node:fs';
import { extname, join, resolve } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { efivarsOf, imagesDir, runtimeDirPath } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { checkName } from '../core/names.ts';
import { buildDisk, buildEfivars, buildOfDisk, findBuild, latestBuild, type BuildRecord } from '../image/registry.ts';
import { efivarsFor, IMAGE_EXTS, imageFormat, looksLikePath, storeImage } from '../image/store.ts';
import { listVms } from './state.ts';
import { createOverlay, qemuImg, imgInfo } from '../image/qemu-img.ts';
import { run } from '../core/run.ts';

/** A build's own disk (not a store overlay of it). */
function isBuildDisk(path: string): BuildRecord | null {
  const b = buildOfDisk(path);
  return b && realpathSync(path) === realpathSync(buildDisk(b)) ? b : null;
}

/** The running VM that boots `path` and holds its lock (a --clone VM holds none), if any. */
async function holder(path: string): Promise<string | null> {
  const real = realpathSync(path);
  for (const v of await listVms(runtimeDirPath())) {
    if (v.state !== 'running' || !v.meta || v.meta.clone) continue;
    try {
      if (realpathSync(v.meta.image) === real) return v.name;
    } catch {
      /* its image is gone */
    }
  }
  return null;
}

/** Write `make(tmp)` as `dest` all at once: nothing half-written is left when it fails. */
async function writeAtomically(dest: string, make: (tmp: string) => Promise<void> | void): Promise<void> {
  const tmp = join(imagesDir(), `.${dest.split('/').pop()}.${process.pid}.tmp`);
  try {
    await make(tmp);
    chmodSync(tmp, 0o600);
    renameSync(tmp, dest);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * images/NEW from SRC: a store image's name or a path (a copy; its UEFI vars
 * too), or a build (its id, or a profile's newest: an overlay of it). Returns
 * the new image's path. NEW taken: 73; SRC in use by a running VM: 75.
 */
export async function cloneImage(src: string, newName: string): Promise<string> {
  checkName(newName);
  const dir = ensurePrivateDir(imagesDir());
  const taken = storeImage(newName);
  if (taken)
    throw new PimError(
      EXIT.CANTCREAT,
      `image ${newName} exists already (${taken}); choose another name, or remove it with pim-rm ${newName}`,
    );
  let path = looksLikePath(src) ? resolve(src) : storeImage(src);
  if (path && !existsSync(path)) throw new PimError(EXIT.NOINPUT, `image ${path} does not exist; check the path`);
  const build = path ? isBuildDisk(path) : (latestBuild(src) ?? findBuild(src));
  if (build) {
    const dest = join(dir, `${newName}.qcow2`);
    await writeAtomically(dest, (tmp) => createOverlay(tmp, buildDisk(build), build.disk.format));
    const bv = buildEfivars(build);
    if (bv) await writeAtomically(join(dir, efivarsOf(newName)), (tmp) => copyFileSync(bv, tmp));
    return dest;
  }
  path = path!;
  const user = await holder(path);
  if (user)
    throw new PimError(
      EXIT.TEMPFAIL,
      `${path} is in use by running VM ${user}; stop it first (pim-stop ${user}) for a consistent copy, or boot a throwaway copy with pim-run ${src} --name ${newName} --clone`,
    );
  const dest = join(dir, newName + (IMAGE_EXTS.includes(extname(path)) ? extname(path) : '.qcow2'));
  // a reflink where the filesystem has them (btrfs, xfs), else a plain copy
  await writeAtomically(dest, (tmp) => copyFileSync(path, tmp, constants.COPYFILE_FICLONE));
  const vars = efivarsFor(path);
  if (vars) await writeAtomically(join(dir, efivarsOf(newName)), (tmp) => copyFileSync(vars, tmp));
  return dest;
}

/**
 * qemu-img resize of a stopped VM's disk: NAME in the store, or a path. SIZE
 * is absolute (20G) or relative (+5G). A running VM's disk: 75; a stored
 * build: 65; what qemu-img refuses (a shrink): 65 with its words.
 */
export async function resizeImage(name: string, size: string): Promise<{ path: string; bytes: number }> {
  if (!/^\+?\d+[KMGT]?$/i.test(size))
    throw new PimError(EXIT.USAGE, `SIZE must be a size such as 20G or +5G, not ${JSON.stringify(size)}`);
  const path = looksLikePath(name) ? resolve(name) : storeImage(name);
  const stored = (b: BuildRecord) =>
    new PimError(
      EXIT.DATAERR,
      `${name} is the stored build ${b.id}, which pim never changes; clone it first (pim-vm clone ${name} NEW) and resize NEW`,
    );
  if (!path || !existsSync(path)) {
    const b = looksLikePath(name) ? null : latestBuild(name);
    if (b) throw stored(b);
    throw new PimError(
      EXIT.NOINPUT,
      `no image ${name}${path ? '' : ` in ${imagesDir()}`}; see pim-ps --all or ls ${imagesDir()}`,
    );
  }
  const b = isBuildDisk(path);
  if (b) throw stored(b);
  const user = await holder(path);
  if (user)
    throw new PimError(
      EXIT.TEMPFAIL,
      `${path} is the disk of running VM ${user}; stop it first (pim-stop ${user}), then resize`,
    );
  const r = await run(qemuImg(), ['resize', '-q', '-f', imageFormat(path), path, size]);
  if (r.code !== 0) throw new PimError(EXIT.DATAERR, `cannot resize ${path}: ${r.stderr.trim().split('\n').pop()}`);
  return { path, bytes: (await imgInfo(path))['virtual-size'] };
}
