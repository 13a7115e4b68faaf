/**
 * builder: raw: a profile's image is an empty disk of disk_size, in
 * disk_format (and, for firmware: uefi, a fresh copy of OVMF's vars beside
 * it). Nothing boots to make it, so only what shapes the disk is in the cache
 * key (size, format, firmware): a change to the profile's other keys is still
 * a hit. Cached, locked and registered like an installer's build, with the
 * same rule: the build appears whole (an atomic rename) or not at all.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { buildsDir } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { acquireLock } from '../core/lock.ts';
import { checkAborted } from '../core/signals.ts';
import type { Resolved } from '../config/catalog.ts';
import { BUILD_RECIPE, buildByKey, buildDir, buildId, commitBuild, type BuildInputs, type BuildRecord } from '../image/registry.ts';
import { buildKey, checkSize, wrap } from './plan.ts';
import { checkCpus, checkMem } from '../vm/plan.ts';
import type { BuildOpts, BuildOutcome } from './build.ts';

/** What goes into a raw build's key. */
export function rawInputs(profile: Resolved): BuildInputs {
  const v = profile.value;
  return {
    recipe: BUILD_RECIPE,
    builder: 'raw',
    profile: {},
    answers: {},
    files: {},
    iso: null,
    disk: { size: checkSize(profile, v.disk_size), format: v.disk_format === 'raw' ? 'raw' : 'qcow2' },
    firmware: v.firmware === 'uefi' ? 'uefi' : 'bios',
    boot: null,
  };
}

export async function buildRaw(o: BuildOpts, profile: Resolved, t0: number): Promise<BuildOutcome> {
  const v = profile.value;
  const inputs = rawInputs(profile);
  // what pim-run boots it with (checked like an installer build's settings)
  const mem = wrap(profile, 'mem', () => checkMem((v.mem as string | number | undefined) ?? '1G', 'mem'));
  const cpus = wrap(profile, 'cpus', () => checkCpus((v.cpus as number | undefined) ?? 2, 'cpus'));
  const key = buildKey(inputs);
  const id = buildId(profile.name, key);
  const pathOf = (r: BuildRecord) => join(buildDir(r.id), r.disk.file);
  if (!o.force) {
    const hit = buildByKey(profile.name, key);
    if (hit) return { record: hit, hit: true, path: pathOf(hit) };
  }
  ensurePrivateDir(buildsDir());
  const lock = await acquireLock(join(buildsDir(), `.${id}.lock`), `build ${id}`);
  const tmp = join(buildsDir(), `.tmp-${id}-${process.pid}`);
  let ok = false;
  try {
    if (!o.force) {
      const hit = buildByKey(profile.name, key); // finished while we waited for the lock
      if (hit) return { record: hit, hit: true, path: pathOf(hit) };
    }
    o.status.set(`creating ${profile.name}'s empty ${inputs.disk.size} ${inputs.disk.format} disk`);
    fs.rmSync(tmp, { recursive: true, force: true });
    ensurePrivateDir(tmp);
    const file = `${profile.name}.${inputs.disk.format}`;
    const disk = join(tmp, file);
    const { createDisk, imgInfo } = await import('../image/qemu-img.ts');
    await createDisk(disk, inputs.disk.format, inputs.disk.size);
    checkAborted(o.signal);
    let efivars: string | null = null;
    if (inputs.firmware === 'uefi') {
      const { ovmfVarsTemplate } = await import('../qemu/host.ts');
      efivars = `${profile.name}.efivars.fd`;
      fs.copyFileSync(ovmfVarsTemplate(), join(tmp, efivars));
    }
    const info = await imgInfo(disk);
    const total = Math.round(((Date.now() - t0) / 1000) * 10) / 10;
    fs.writeFileSync(join(tmp, 'build.log'), `pim-build ${profile.name}: raw, key ${key}: an empty ${inputs.disk.size} ${inputs.disk.format} disk (${inputs.firmware}) in ${total} s\n`, { mode: 0o600, flag: 'wx' });
    const record: BuildRecord = {
      id,
      profile: profile.name,
      key,
      created: new Date().toISOString(),
      recipe: inputs.recipe,
      inputs,
      iso: null,
      disk: { file, format: inputs.disk.format, virtual_size: info['virtual-size'], bytes: fs.statSync(disk).blocks * 512 },
      efivars,
      settings: { mem, cpus, firmware: inputs.firmware, machine: 'q35', disk_bus: 'virtio', net: 'virtio-net', ssh_user: String(v.ssh_user ?? v.username ?? 'root') },
      times: { install: 0, provision: 0, total },
      log: 'build.log',
    };
    const stored = commitBuild(tmp, record);
    ok = true;
    return { record: stored, hit: false, path: pathOf(stored) };
  } finally {
    if (!ok) fs.rmSync(tmp, { recursive: true, force: true });
    await lock.release();
  }
}
