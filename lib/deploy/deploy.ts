/**
 * pim-deploy's entry: resolve the build, take the lock of (target, name) so
 * two deploys of one name from this machine never interleave, and hand over
 * to the target's kind: lib/deploy/libvirt.ts, proxmox.ts, sshhost.ts, oci.ts.
 */
import { join } from 'node:path';
import { cacheDir } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { resolveSource } from './source.ts';
import type { DeployOpts, DeployResult, Deployed, Outcome } from './libvirt.ts';
import type { Target } from './targets.ts';
import { acquireLock } from '../core/lock.ts';

export type { DeployResult };

export async function deploy(ref: string, t: Target, o: DeployOpts & { name?: string }): Promise<DeployResult> {
  // a registry: the build itself is pushed (no domain, so no --name); the layer is hashed as it goes up
  if (t.type === 'oci') return (await import('./oci.ts')).deployOci(ref, t, o);
  const src = await resolveSource(ref, o.name);
  const dir = ensurePrivateDir(join(cacheDir(), 'deploy'));
  const lock = await acquireLock(join(dir, `.${t.name}-${src.name}.lock`), `deploying ${src.name} to ${t.name}`);
  try {
    let outcome: Outcome;
    if (t.type === 'libvirt') outcome = await (await import('./libvirt.ts')).deployLibvirt(src, t, o);
    else if (t.type === 'proxmox') outcome = await (await import('./proxmox.ts')).deployProxmox(src, t, o);
    else outcome = await (await import('./sshhost.ts')).deploySsh(src, t, o);
    return { name: src.name, build: src.build.id, volume: src.volume, outcome };
  } finally {
    await lock.release();
  }
}

export async function listDeployed(t: Target): Promise<Deployed[]> {
  if (t.type === 'libvirt') return (await import('./libvirt.ts')).listLibvirt(t);
  if (t.type === 'proxmox') return (await import('./proxmox.ts')).listProxmox(t);
  if (t.type === 'oci') return (await import('./oci.ts')).listOci(t);
  return (await import('./sshhost.ts')).listSsh(t);
}
