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
import { buildsDir, efivarsOf, STORE_FILES } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { checkAborted } from '../core/signals.ts';
import { ovmfVarsTemplate } from '../qemu/host.ts';
import type { Resolved } from '../config/catalog.ts';
import {
  BUILD_RECIPE,
  buildId,
  cachedBuild,
  commitBuild,
  type BuildInputs,
  type BuildRecord,
} from '../image/registry.ts';
import { createDisk, imgInfo } from '../image/qemu-img.ts';
import { buildKey, diskSettings, vmSettings } from './plan.ts';
import type { BuildOpts, BuildOutcome } from './types.ts';

/** What goes into a raw build's key. */
export function rawInputs(profile: Resolved): BuildInputs {
  return {
    recipe: BUILD_RECIPE,
    builder: 'raw',
    profile: {},
    answers: {},
    files: {},
    iso: null,
    ...diskSettings(profile),
    boot: null,
  };
}

export async function buildRaw(o: BuildOpts, profile: Resolved, t0: number): Promise<BuildOutcome> {
  const inputs = rawInputs(profile);
  const run = vmSettings(profile); // what pim-run boots it with
  const key = buildKey(inputs);
  return cachedBuild(profile.name, key, o.force, () => makeRaw(o, profile, inputs, key, run, t0));
}

async function makeRaw(
  o: BuildOpts,
  profile: Resolved,
  inputs: BuildInputs,
  key: string,
  run: { mem: string; cpus: number },
  t0: number,
): Promise<BuildRecord> {
  const v = profile.value;
  const id = buildId(profile.name, key);
  const tmp = join(buildsDir(), `.tmp-${id}-${process.pid}`);
  let ok = false;
  try {
    o.status.set(`creating ${profile.name}'s empty ${inputs.disk.size} ${inputs.disk.format} disk`);
    fs.rmSync(tmp, { recursive: true, force: true });
    ensurePrivateDir(tmp);
    const file = `${profile.name}.${inputs.disk.format}`;
    const disk = join(tmp, file);
    await createDisk(disk, inputs.disk.format, inputs.disk.size);
    checkAborted(o.signal);
    let efivars: string | null = null;
    if (inputs.firmware === 'uefi') {
      efivars = efivarsOf(profile.name);
      fs.copyFileSync(ovmfVarsTemplate(), join(tmp, efivars));
    }
    const info = await imgInfo(disk);
    const total = Math.round(((Date.now() - t0) / 1000) * 10) / 10;
    fs.writeFileSync(
      join(tmp, STORE_FILES.buildLog),
      `pim-build ${profile.name}: raw, key ${key}: an empty ${inputs.disk.size} ${inputs.disk.format} disk (${inputs.firmware}) in ${total} s\n`,
      { mode: 0o600, flag: 'wx' },
    );
    const record: BuildRecord = {
      id,
      profile: profile.name,
      key,
      created: new Date().toISOString(),
      recipe: inputs.recipe,
      inputs,
      iso: null,
      disk: {
        file,
        format: inputs.disk.format,
        virtual_size: info['virtual-size'],
        bytes: fs.statSync(disk).blocks * 512,
      },
      efivars,
      settings: {
        mem: run.mem,
        cpus: run.cpus,
        firmware: inputs.firmware,
        machine: 'q35',
        disk_bus: 'virtio',
        net: 'virtio-net',
        ssh_user: String(v.ssh_user ?? v.username ?? 'root'),
      },
      times: { install: 0, provision: 0, total },
      log: STORE_FILES.buildLog,
    };
    const stored = commitBuild(tmp, record, o.force === true);
    ok = true;
    return stored;
  } finally {
    if (!ok) fs.rmSync(tmp, { recursive: true, force: true });
  }
}
