import { EXIT, PimError } from '../core/exit.ts';
import type { DeployOpts, Deployed, Outcome } from './libvirt.ts';
import type { Source } from './source.ts';
import type { ProxmoxTarget } from './targets.ts';
export async function deployProxmox(_s: Source, _t: ProxmoxTarget, _o: DeployOpts): Promise<Outcome> {
  throw new PimError(EXIT.UNAVAILABLE, 'proxmox: not yet');
}
export async function listProxmox(_t: ProxmoxTarget): Promise<Deployed[]> {
  throw new PimError(EXIT.UNAVAILABLE, 'proxmox: not yet');
}
