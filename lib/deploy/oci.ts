/**
 * An OCI registry as a deploy target (type: oci): the build is pushed as a
 * KubeVirt containerDisk image with pim's record in its annotations, tagged
 * PROFILE-KEY12 and PROFILE (lib/oci/push.ts). There is no domain to make:
 * a cluster (KubeVirt's containerDisk: REF:TAG) or another pim
 * (pim-build pull REF:TAG) takes it from there. An unchanged build is a
 * no-op: the layer's digest is known here and the registry answers HEAD.
 */
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { cacheDir } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { log } from '../core/log.ts';
import { findBuild } from '../image/registry.ts';
import type { DeployOpts, DeployResult, Deployed } from './libvirt.ts';
import type { OciTarget } from './targets.ts';
import { acquireLock } from '../core/lock.ts';

export const destOf = (t: OciTarget) => ({ ref: t.ref, insecure: t.insecure, credsEnv: t.credsEnv, label: t.name });

export async function deployOci(ref: string, t: OciTarget, o: DeployOpts & { name?: string }): Promise<DeployResult> {
  if (o.name !== undefined)
    throw new PimError(
      EXIT.USAGE,
      `${t.name} is a registry (type: oci): the image is tagged PROFILE-KEY12 and PROFILE, there is no --name`,
    );
  const b = findBuild(ref);
  const dir = ensurePrivateDir(join(cacheDir(), 'deploy'));
  const lock = await acquireLock(join(dir, `.${t.name}-${b.id}.lock`), `pushing ${b.id} to ${t.name}`);
  try {
    const { pushBuild } = await import('../oci/push.ts');
    const p = await pushBuild(b, destOf(t), { signal: o.signal, dryRun: o.dryRun, say: (s) => log.info(s) });
    const plan = [
      {
        step: 'upload' as const,
        action: p.upload === 'uploaded' ? 'upload' : 'skip',
        detail: `${b.id}'s layer to ${p.ref}`,
      },
      {
        step: 'domain' as const,
        action: p.tagged ? 'tag' : 'keep',
        detail: p.tags.map((x) => `${t.ref.registry}/${t.ref.repo}:${x}`).join(' '),
      },
    ];
    return {
      name: b.profile,
      build: b.id,
      volume: p.ref,
      outcome: {
        plan,
        upload: p.upload === 'uploaded' ? 'uploaded' : 'skipped',
        domain: p.tagged ? 'defined' : 'kept',
        started: false,
        removed: [],
      },
    };
  } finally {
    await lock.release();
  }
}

/** The pim builds in the repository: its PROFILE-KEY12 tags. */
export async function listOci(t: OciTarget): Promise<Deployed[]> {
  const { OciClient } = await import('../oci/client.ts');
  const c = new OciClient(t.ref, { insecure: t.insecure, credsEnv: t.credsEnv, label: t.name });
  try {
    const tags = await c.tags();
    return tags
      .map((tag) => /^(.+)-([0-9a-f]{12})$/.exec(tag))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({
        name: m[0],
        build: m[0],
        profile: m[1]!,
        volume: `${t.ref.registry}/${t.ref.repo}:${m[0]}`,
        state: 'pushed',
        key: m[2]!,
      }))
      .sort((a, b) => a.name.localeCompare(b.name));
  } finally {
    await c.close();
  }
}
