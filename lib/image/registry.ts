/**
 * The registry of finished builds: one read-only directory per build in
 * ~/.local/share/pim/builds/, named PROFILE-KEY12 after the profile and the
 * build's cache key, holding
 *
 *   PROFILE.qcow2 (or .raw)   the image, mode 0444: a build never changes
 *   PROFILE.efivars.fd        the UEFI vars the install left (UEFI builds)
 *   build.json                the record: inputs, ISO, sizes, times, settings
 *   build.log                 the build's log (installer console, requests,
 *                             provisioning output)
 *
 * A build appears by an atomic rename of its finished directory, so readers
 * see a whole build or none. VMs never write to a build: their disks are
 * qcow2 overlays backed by it (lib/image/store.ts), and a build that a disk
 * still backs cannot be removed.
 */
import * as fs from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { buildsDir, imagesDir, STORE_FILES } from '../core/paths.ts';
import { ensurePrivateDir, readRegular, realOr, sameFile, writeFileAtomic } from '../core/fs.ts';
import { acquireLock } from '../core/lock.ts';
import { readQcow2Header } from './qcow2.ts';

/** Bumped when what a build does changes, so older cache entries are not reused. */
export const BUILD_RECIPE = 1;

export interface BuildInputs {
  recipe: number;
  /** how the image is made: an installer (absent: the records before raw builds were), an empty disk, or a cloud image and cloud-init */
  builder?: 'raw' | 'cloud-init';
  /** the merged profile (a raw build: {}, nothing of it goes into an empty disk) */
  profile: Record<string, unknown>;
  /** answer files as rendered for the build (pim's per-build key left out): route -> sha256 */
  answers: Record<string, string>;
  /** scripts.d, installs.d and sources.d files the build uses: "scripts.d/NAME" -> sha256 */
  files: Record<string, string>;
  /** the installer ISO, or a cloud-init build's base image (null for a raw build) */
  iso: { name: string; checksum: string } | null;
  disk: { size: string; format: 'qcow2' | 'raw' };
  firmware: 'bios' | 'uefi';
  boot: { kernel: string; initrd: string; append: string; inject: boolean } | null;
}

export interface BuildRecord {
  id: string;
  profile: string;
  key: string;
  created: string;
  recipe: number;
  inputs: BuildInputs;
  iso: { name: string; checksum: string; path: string } | null;
  disk: { file: string; format: 'qcow2' | 'raw'; virtual_size: number; bytes: number };
  efivars: string | null;
  /** what it takes to run it (and, later, to deploy it) */
  /** user_key: the public half of pim's own key (lib/guest/userkey.ts), when the build put it in */
  settings: {
    mem: string;
    cpus: number;
    firmware: 'bios' | 'uefi';
    machine: string;
    disk_bus: string;
    net: string;
    ssh_user: string;
    user_key?: string;
  };
  times: { install: number; provision: number; total: number };
  log: string;
  /** the build's stage chain (lib/builder/stages.ts): absent for builds made before stages, raw and pulled ones */
  stages?: StageLink[];
}

/** One link of a build's stage chain: its key, what the key covers, when it was made, and whether this build made it or reused it. */
export interface StageLink {
  stage: 'install' | 'provision' | 'finish';
  key: string;
  made: boolean;
  created: string;
  seconds: number;
  inputs: Record<string, unknown>;
}

export const buildId = (profile: string, key: string) => `${profile}-${key.slice(0, 12)}`;
export const buildDir = (id: string) => join(buildsDir(), id);
export const buildDisk = (r: BuildRecord) => join(buildDir(r.id), r.disk.file);
export const buildEfivars = (r: BuildRecord) => (r.efivars ? join(buildDir(r.id), r.efivars) : null);
export const buildLog = (r: BuildRecord) => join(buildDir(r.id), r.log);

const ID_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*-[0-9a-f]{12}$/;

function readRecord(id: string): BuildRecord | null {
  const text = readRegular(join(buildDir(id), STORE_FILES.buildRecord));
  if (text === null) return null;
  try {
    const r = JSON.parse(text) as BuildRecord;
    return r && r.id === id && typeof r.key === 'string' ? r : null;
  } catch {
    return null;
  }
}

/** Every finished build, oldest first. */
export function listBuilds(): BuildRecord[] {
  let names: string[];
  try {
    names = fs.readdirSync(buildsDir());
  } catch {
    return [];
  }
  return names
    .filter((n) => ID_RE.test(n))
    .map(readRecord)
    .filter((r): r is BuildRecord => r !== null)
    .sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
}

/** A build directory whose record cannot be read: listed as damaged, removable with rm. */
export interface DamagedBuild {
  id: string;
  /** the build's directory */
  dir: string;
  /** the file that is broken (build.json) */
  file: string;
  problem: string;
}

/** What is wrong with build `id`'s build.json, or null when it reads as a record of that build. */
function recordProblem(id: string): string | null {
  const file = join(buildDir(id), STORE_FILES.buildRecord);
  if (!fs.existsSync(file)) return 'is missing';
  const text = readRegular(file);
  if (text === null) return 'cannot be read (not a regular file?)';
  let r: Partial<BuildRecord> | null;
  try {
    r = JSON.parse(text) as Partial<BuildRecord> | null;
  } catch (e) {
    return `is not valid JSON (${(e as Error).message}; truncated?)`;
  }
  if (!r || typeof r !== 'object') return 'is not a build record';
  if (r.id !== id) return `names another build (${JSON.stringify(r.id)})`;
  if (
    typeof r.key !== 'string' ||
    typeof r.created !== 'string' ||
    typeof r.profile !== 'string' ||
    !r.disk ||
    typeof r.disk.file !== 'string'
  )
    return 'lacks the fields of a build record';
  return null;
}

/** Build directories whose build.json is broken, by id (pim-build list shows them as damaged). */
export function damagedBuilds(): DamagedBuild[] {
  let names: string[];
  try {
    names = fs.readdirSync(buildsDir());
  } catch {
    return [];
  }
  const out: DamagedBuild[] = [];
  for (const id of names.filter((n) => ID_RE.test(n)).sort()) {
    const problem = recordProblem(id);
    if (problem) out.push({ id, dir: buildDir(id), file: join(buildDir(id), STORE_FILES.buildRecord), problem });
  }
  return out;
}

/** Remove a damaged build's directory; refused (75) while a VM disk is backed by a file in it. */
export function removeDamaged(d: DamagedBuild): void {
  const users = disksBackedByDir(d.dir);
  if (users.length)
    throw new PimError(
      EXIT.TEMPFAIL,
      `build ${d.id} backs ${users.join(', ')}; remove ${users.length > 1 ? 'those disks' : 'that disk'} first (its VM's changes go with it)`,
    );
  removeDir(d.id);
}

function disksBackedByDir(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(imagesDir());
  } catch {
    return [];
  }
  return names
    .map((n) => join(imagesDir(), n))
    .filter((p) => readQcow2Header(p)?.backingFile?.startsWith(dir + '/'))
    .sort();
}

/** Make a build's read-only directory removable, move it out of sight, then delete it. */
function removeDir(id: string): void {
  const dir = buildDir(id);
  const trash = join(buildsDir(), `.rm-${id}-${process.pid}`);
  fs.chmodSync(dir, 0o700);
  fs.renameSync(dir, trash);
  fs.rmSync(trash, { recursive: true, force: true });
}

/** The build with this cache key, if it is in the registry. */
export function buildByKey(profile: string, key: string): BuildRecord | null {
  const r = readRecord(buildId(profile, key));
  return r && r.key === key && fs.existsSync(buildDisk(r)) ? r : null;
}

/**
 * A build of `profile` with cache key `key`: the registered one (a hit, unless
 * `force`), else what `make` builds and registers, under the build's lock; the
 * registry is asked again once the lock is ours, since another process may
 * have finished the same build while we waited. With `force` the new build
 * replaces the registered one (refused, 75, before anything is built, while
 * a VM disk is backed by it: its overlays would read another image).
 */
export async function cachedBuild(
  profile: string,
  key: string,
  force: boolean | undefined,
  make: () => Promise<BuildRecord>,
): Promise<{ record: BuildRecord; hit: boolean; path: string }> {
  const out = (record: BuildRecord, hit: boolean) => ({ record, hit, path: buildDisk(record) });
  const found = () => (force ? null : buildByKey(profile, key));
  const before = found();
  if (before) return out(before, true);
  const id = buildId(profile, key);
  ensurePrivateDir(buildsDir());
  const lock = await acquireLock(join(buildsDir(), `.${id}.lock`), `build ${id}`);
  try {
    const meanwhile = found();
    if (meanwhile) return out(meanwhile, true);
    const old = force ? readRecord(id) : null;
    if (old) refuseIfBacking(old, 'replace');
    return out(await make(), false);
  } finally {
    await lock.release();
  }
}

/** 75 while a VM disk in the store is backed by the build (its overlays would lose their base). */
function refuseIfBacking(r: BuildRecord, what: 'remove' | 'replace'): void {
  const users = disksBackedBy(r);
  if (!users.length) return;
  const then = what === 'replace' ? ' and build again with --force' : '';
  throw new PimError(
    EXIT.TEMPFAIL,
    `build ${r.id} backs ${users.join(', ')}; remove ${users.length > 1 ? 'those disks' : 'that disk'} first${then} (its VM's changes go with it)`,
  );
}

/** The newest build of a profile, or null. */
export function latestBuild(profile: string): BuildRecord | null {
  const all = listBuilds().filter((r) => r.profile === profile);
  return all[all.length - 1] ?? null;
}

/**
 * A build named by the user: its id, a prefix of its key (4+ hex digits), or
 * a profile name (its newest build). 66 when none matches, 64 when several do.
 */
export function findBuild(ref: string): BuildRecord {
  const all = listBuilds();
  const exact = all.find((r) => r.id === ref);
  if (exact) return exact;
  if (/^[0-9a-f]{4,64}$/.test(ref)) {
    const hits = all.filter((r) => r.key.startsWith(ref));
    if (hits.length === 1) return hits[0]!;
    if (hits.length > 1)
      throw new PimError(
        EXIT.USAGE,
        `${ref} matches ${hits.length} builds (${hits.map((r) => r.id).join(', ')}); give more of the key`,
      );
  }
  const byProfile = all.filter((r) => r.profile === ref);
  if (byProfile.length) return byProfile[byProfile.length - 1]!;
  throw new PimError(
    EXIT.NOINPUT,
    `no build ${JSON.stringify(ref)}; see pim-build list, or build one with pim-build run PROFILE`,
  );
}

/**
 * The build a disk image belongs to: the image itself, or the build its
 * qcow2 backing file is. Paths are compared as real paths and files by
 * device and inode, never as spelled: a symbolic link to a build's image,
 * a store reached through a link (XDG_DATA_HOME), a backing file recorded
 * under another spelling, or a hard link of the image, are all that build.
 */
export function buildOfDisk(path: string): BuildRecord | null {
  const root = realOr(buildsDir()) + '/';
  let real: string;
  try {
    real = fs.realpathSync(path);
  } catch {
    return null;
  }
  const candidates = [real];
  const backing = backingOf(real);
  if (backing) candidates.push(backing);
  for (const c of candidates) {
    if (!c.startsWith(root)) continue;
    const id = c.slice(root.length).split('/')[0]!;
    const r = readRecord(id);
    if (r && sameFile(buildDisk(r), c)) return r;
  }
  // a hard link of a build's image (or of the image it is backed by), outside the store
  const links = candidates.filter((c) => (fs.statSync(c, { throwIfNoEntry: false })?.nlink ?? 1) > 1);
  if (links.length) for (const r of listBuilds()) if (links.some((c) => sameFile(buildDisk(r), c))) return r;
  return null;
}

/** Is `path` a build's own image (not an overlay of it), however it is spelled? */
export const isBuildDisk = (r: BuildRecord, path: string): boolean => sameFile(buildDisk(r), path);

/** The real path of a qcow2 image's backing file (relative to the image's directory), if any. */
function backingOf(image: string): string | null {
  const b = readQcow2Header(image)?.backingFile;
  return b ? realOr(resolve(dirname(image), b)) : null;
}

/** Disks in the image store whose qcow2 backing file is this build's image (compared as files, not as spelled). */
export function disksBackedBy(r: BuildRecord): string[] {
  const disk = buildDisk(r);
  let names: string[];
  try {
    names = fs.readdirSync(imagesDir());
  } catch {
    return [];
  }
  return names
    .map((n) => join(imagesDir(), n))
    .filter((p) => {
      const b = backingOf(p);
      return b !== null && sameFile(b, disk);
    })
    .sort();
}

/** Remove a build; refused (75) while a VM disk is backed by it. */
export function removeBuild(r: BuildRecord): void {
  refuseIfBacking(r, 'remove');
  const dir = buildDir(r.id);
  // the build is read-only: make it removable, then move it out of sight before deleting
  const trash = join(buildsDir(), `.rm-${r.id}-${process.pid}`);
  fs.chmodSync(dir, 0o700);
  fs.renameSync(dir, trash);
  fs.rmSync(trash, { recursive: true, force: true });
}

/**
 * Put a finished build in place: its files read-only, then one rename of its
 * directory. When the same build appeared meanwhile (a build of the same
 * inputs that finished first), that one is kept and ours discarded, unless
 * `replace` (pim-build --force, which holds the build's lock): then the one
 * there is moved out of sight, ours renamed in, and the old one deleted.
 */
export function commitBuild(tmpDir: string, r: BuildRecord, replace = false): BuildRecord {
  writeFileAtomic(join(tmpDir, STORE_FILES.buildRecord), JSON.stringify(r, null, 2) + '\n', 0o444);
  for (const f of fs.readdirSync(tmpDir)) fs.chmodSync(join(tmpDir, f), 0o444);
  fs.chmodSync(tmpDir, 0o555);
  const dest = buildDir(r.id);
  let trash: string | null = null;
  if (replace && fs.existsSync(dest)) {
    const there = readRecord(r.id);
    if (there) refuseIfBacking(there, 'replace'); // a VM may have taken it while we built
    trash = join(buildsDir(), `.rm-${r.id}-${process.pid}`);
    fs.chmodSync(dest, 0o700);
    fs.renameSync(dest, trash);
  }
  try {
    fs.renameSync(tmpDir, dest);
  } catch (e) {
    if (trash) fs.renameSync(trash, dest); // the old build back where it was
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST')
      throw new PimError(EXIT.CANTCREAT, `cannot store build ${r.id}: ${(e as Error).message}`);
    fs.chmodSync(tmpDir, 0o700);
    fs.rmSync(tmpDir, { recursive: true, force: true });
    const there = readRecord(r.id);
    if (!there)
      throw new PimError(EXIT.CANTCREAT, `cannot store build ${r.id}: ${buildDir(r.id)} is in the way; remove it`);
    return there;
  }
  if (trash) fs.rmSync(trash, { recursive: true, force: true });
  return r;
}
