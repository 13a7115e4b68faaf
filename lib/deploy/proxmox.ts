/**
 * Proxmox VE as a deploy target: not done yet. The plan (issue 12): with PVE
 * 8.3's storage upload (`content=import`) and the API token from token_env,
 * upload, then create the disk with `import-from`; on older versions, copy
 * over SSH, then `qm disk import` and `qm set`. Its client is to be tested
 * against a recorded API transcript served by a real local HTTP server.
 */
import { EXIT, PimError } from '../core/exit.ts';
import type { DeployOpts, Deployed, Outcome } from './libvirt.ts';
import type { Source } from './source.ts';
import type { ProxmoxTarget } from './targets.ts';

const notYet = (t: ProxmoxTarget) => new PimError(EXIT.UNAVAILABLE, `${t.name}: deploying to Proxmox VE is not implemented yet; use a libvirt or ssh target`);

export async function deployProxmox(_s: Source, t: ProxmoxTarget, _o: DeployOpts): Promise<Outcome> {
  throw notYet(t);
}

export async function listProxmox(t: ProxmoxTarget): Promise<Deployed[]> {
  throw notYet(t);
}
