import { EXIT, PimError } from '../core/exit.ts';
import type { DeployOpts, Deployed, Outcome } from './libvirt.ts';
import type { Source } from './source.ts';
import type { SshTarget } from './targets.ts';
export async function deploySsh(_s: Source, _t: SshTarget, _o: DeployOpts): Promise<Outcome> {
  throw new PimError(EXIT.UNAVAILABLE, 'ssh: not yet');
}
export async function listSsh(_t: SshTarget): Promise<Deployed[]> {
  throw new PimError(EXIT.UNAVAILABLE, 'ssh: not yet');
}
