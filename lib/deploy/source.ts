/**
 * What a deploy sends: a build of the registry (by id, key prefix or
 * profile), its image's sha256, and the volume name made from it,
 * `<name>-<sha12>.<format>`. The sha256 of a build never changes (a build is
 * read-only), so it is kept in ~/.cache/pim/deploy/<id>.sha256 beside the
 * size and mtime it was taken at: a re-deploy with nothing to do reads no
 * image.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { cacheDir } from '../core/paths.ts';
import { ensurePrivateDir, readRegular, writeFileAtomic } from '../core/fs.ts';
import { checkName } from '../core/names.ts';
import { buildDisk, buildEfivars, findBuild, type BuildRecord } from '../image/registry.ts';
import { hashFile } from '../install/iso.ts';

export interface Source {
  build: BuildRecord;
  /** the domain's name on the target */
  name: string;
  path: string;
  size: number;
  sha256: string;
  /** `<name>-<sha12>.qcow2` */
  volume: string;
  efivars: string | null;
}

/** What pim records of a deploy on the far side (a libvirt domain's metadata, a Proxmox VM's description). */
export interface DeployMeta {
  build: string;
  key: string;
  profile: string;
  volume: string;
  sha256: string;
}

/** The record of deploying `src`. */
export const deployMeta = (src: Source): DeployMeta => ({
  build: src.build.id,
  key: src.build.key,
  profile: src.build.profile,
  volume: src.volume,
  sha256: src.sha256,
});

/** The sha256 of a build's image, from the cache when the image is the one it was taken of. */
export async function buildHash(b: BuildRecord): Promise<string> {
  const disk = buildDisk(b);
  const st = fs.statSync(disk);
  const file = join(cacheDir(), 'deploy', `${b.id}.sha256`);
  const stamp = `${st.size} ${Math.floor(st.mtimeMs)}`;
  const cached = readRegular(file)?.trim().split(' ');
  if (cached && cached.length === 3 && `${cached[1]} ${cached[2]}` === stamp && /^[0-9a-f]{64}$/.test(cached[0]!))
    return cached[0]!;
  const sha = await hashFile(disk, 'sha256');
  ensurePrivateDir(join(cacheDir(), 'deploy'));
  writeFileAtomic(file, `${sha} ${stamp}\n`);
  return sha;
}

export const volumeName = (name: string, sha256: string, format: string) => `${name}-${sha256.slice(0, 12)}.${format}`;
/** A volume pim made for `name`: NAME-<12 hex>.qcow2|raw, and the UEFI vars beside it */
export const volumeRe = (name: string) => new RegExp(`^${name.replace(/[.]/g, '\\.')}-([0-9a-f]{12})\\.(qcow2|raw)$`);

/** BUILD|PROFILE and the domain name (--name, else the build's profile). */
export async function resolveSource(ref: string, nameOverride?: string): Promise<Source> {
  const build = findBuild(ref);
  const name = checkName(nameOverride ?? build.profile);
  const path = buildDisk(build);
  const sha256 = await buildHash(build);
  return {
    build,
    name,
    path,
    size: fs.statSync(path).size,
    sha256,
    volume: volumeName(name, sha256, build.disk.format),
    efivars: buildEfivars(build),
  };
}
