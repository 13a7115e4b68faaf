/**
 * builder: cloud-init: from a cloud image in the catalog (an isos.d entry with
 * kind: image, downloaded and verified like an ISO) to a provisioned image.
 *
 *   - the disk is a full copy of the base image (no backing file: the build
 *     stays whole when the download is removed), grown to disk_size;
 *   - the NoCloud seed is an ISO 9660 volume labelled cidata (xorriso) with
 *     the profile's user-data and meta-data templates, rendered with pim's
 *     per-build key, and the profile's sources (sources.d), attached as a
 *     read-only virtio disk (cloud kernels have no AHCI for a CD);
 *   - the guest boots once with it, cloud-init applies the user-data and
 *     powers the guest off (power_state, which pim's template sets): that
 *     poweroff is the signal the build waits for, bounded by the timeout;
 *   - then the same provisioning as an installer's build (build.ts), which
 *     first reads cloud-init's /var/lib/cloud/data/result.json over SSH: a
 *     run with errors, or none at all, fails the build (65).
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { checkAborted } from '../core/signals.ts';
import { readLog, waitPoweroff, type BootEnv } from './boot.ts';

/** Where cloud-init writes the outcome of its run (its datasource and every error). */
export const RESULT_JSON = '/var/lib/cloud/data/result.json';

/** cloud-init's first boot: copy and grow the base image, make the seed, boot, wait for the poweroff. */
export async function cloudInitBoot(env: BootEnv): Promise<void> {
  const { o, plan, c, disk, log } = env;
  const st = o.status;
  st.set(`copying ${plan.iso} for ${plan.name}`);
  const { convertDisk, growDisk, imgInfo } = await import('../image/qemu-img.ts');
  const base = await imgInfo(c.iso.path);
  if (base.format !== 'qcow2' && base.format !== 'raw') {
    throw new PimError(EXIT.DATAERR, `${plan.iso} (${c.iso.path}) is a ${base.format} image; builder: cloud-init takes qcow2 or raw cloud images`);
  }
  if (base['backing-filename']) {
    // a downloaded image that points at another file would read that file into the build
    throw new PimError(EXIT.DATAERR, `${plan.iso} (${c.iso.path}) has a backing file (${base['backing-filename']}); a cloud image must stand alone`);
  }
  await convertDisk(c.iso.path, base.format, disk, plan.disk.format, o.signal);
  checkAborted(o.signal);
  const want = sizeBytes(plan.disk.size);
  if (want < base['virtual-size']) {
    const where = plan.profile.origins.disk_size ?? `profile "${plan.name}"`;
    throw new PimError(EXIT.CONFIG, `${where}: disk_size ${plan.disk.size} is smaller than ${plan.iso}'s ${base['virtual-size']} bytes; a cloud image is only grown`);
  }
  if (want > base['virtual-size']) await growDisk(disk, plan.disk.format, plan.disk.size);
  log.line(`disk: ${plan.iso} (${base.format}, ${base['virtual-size']} bytes) copied as ${plan.disk.format}, ${want > base['virtual-size'] ? `grown to ${plan.disk.size}` : 'its own size'}`);

  const seed = await makeSeed(env);
  st.set(`cloud-init is setting up ${plan.name}`);
  const vm = await env.bootVm(true, { drives: [{ path: seed, format: 'raw', readonly: true }], noReboot: true });
  st.say(`${plan.name} booted with its cidata seed; its console: pim-console ${env.ref.name} --ro`);
  await waitPoweroff(env, vm, 'cloud-init');
  log.section('cloud-init console', readLog(env.ref));
  await env.exited();
  fs.rmSync(seed, { force: true });
}

/** The NoCloud seed: user-data, meta-data and the sources, on an ISO 9660 volume labelled cidata. */
async function makeSeed(env: BootEnv): Promise<string> {
  const { plan, tmp, log, served } = env;
  const { renderAnswer } = await import('../install/serve.ts');
  const { KEY_URL } = await import('./plan.ts');
  const dir = join(tmp, 'seed');
  fs.mkdirSync(dir, { mode: 0o700 });
  for (const route of ['/user-data', '/meta-data'] as const) {
    const r = renderAnswer(route, served, KEY_URL);
    if (!r) throw new PimError(EXIT.CONFIG, `profile "${plan.name}" has no ${route.slice(1)} template in preseeds.d; add one`);
    fs.writeFileSync(join(dir, route.slice(1)), r.body, { mode: 0o600, flag: 'wx' });
    log.line(`seed: ${route.slice(1)} from ${r.label}`);
  }
  for (const f of plan.sources) {
    fs.writeFileSync(join(dir, f.name), f.content, { mode: 0o600, flag: 'wx' });
    log.line(`seed: ${f.name} from ${f.label}`);
  }
  const iso = join(tmp, 'seed.iso');
  const { runOk } = await import('../core/run.ts');
  await runOk('xorriso', ['-as', 'mkisofs', '-quiet', '-output', iso, '-volid', 'cidata', '-joliet', '-rock', dir], {
    what: 'cannot make the cidata seed with xorriso',
    hint: 'install xorriso (Debian: xorriso; Homebrew: xorriso)',
  });
  fs.rmSync(dir, { recursive: true, force: true });
  return iso;
}

/** qemu-img's size syntax (8G, 512M, 20000000000) in bytes. */
export function sizeBytes(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)$/i.exec(s);
  if (!m) return NaN;
  const mult = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  return Math.round(Number(m[1]) * mult);
}

/**
 * Over the provisioning connection: cloud-init's own account of its run. No
 * result.json means it did not finish (or never ran); errors in it fail the
 * build with cloud-init's words (65).
 */
export async function checkCloudInit(readFile: (path: string) => Promise<{ code: number; stdout: string }>): Promise<{ datasource: string }> {
  const r = await readFile(RESULT_JSON);
  if (r.code !== 0) throw new PimError(EXIT.DATAERR, `cloud-init did not finish: the guest has no ${RESULT_JSON}; check that the image runs cloud-init with the NoCloud datasource (the build log has the console)`);
  let v1: { datasource?: string; errors?: unknown[] };
  try {
    v1 = (JSON.parse(r.stdout) as { v1: typeof v1 }).v1;
  } catch {
    throw new PimError(EXIT.DATAERR, `cloud-init left a ${RESULT_JSON} that is not JSON`);
  }
  const errors = (v1?.errors ?? []).map(String);
  if (errors.length) throw new PimError(EXIT.DATAERR, `cloud-init reported ${errors.length} error${errors.length > 1 ? 's' : ''}: ${errors.join('; ')}`);
  return { datasource: String(v1?.datasource ?? 'unknown') };
}
