/**
 * pim's configuration tree under $XDG_CONFIG_HOME/pim (one constant per name):
 *
 *   pim.yml          runtime config (serve.port, serve.bind)
 *   isos.d/*.yml     ISO catalog: NAME -> {url, checksum | checksum_url, ...}
 *   profiles.d/*.yml installation profiles: NAME -> {hostname, packages, ...}
 *   vms.d/*.yml      VM definitions: NAME -> {image, mem, qemu_args, ...}
 *   targets.d/*.yml  deploy targets: NAME -> {type, uri, pool, ...} (pim-deploy)
 *   preseeds.d/      templates: PROFILE.cfg.* (preseed), PROFILE.user-data.*,
 *                    PROFILE.meta-data.* (Ubuntu autoinstall, nocloud-net)
 *   installs.d/      late-command scripts, fetched by the installer
 *   scripts.d/       provisioning scripts, run over SSH after the install
 *
 * and the ISO cache in $XDG_CACHE_HOME/pim/isos. Every config error is a
 * PimError (exit 78) that starts with FILE:LINE.
 */
import { join } from 'node:path';
import { cacheDir, configDir } from '../core/paths.ts';
import { EXIT, PimError } from '../core/exit.ts';

export const PIM_YML = 'pim.yml';
export const SUBDIRS = [
  'isos.d',
  'profiles.d',
  'vms.d',
  'targets.d',
  'preseeds.d',
  'installs.d',
  'scripts.d',
  'sources.d',
  'hooks.d',
] as const;
export type Subdir = (typeof SUBDIRS)[number];
export const isoDir = () => join(cacheDir(), 'isos');
export const subdir = (d: Subdir) => join(configDir(), d);

/** Every directory pim reads or writes for config and ISOs. */
export function configPaths(): Record<string, string> {
  const out: Record<string, string> = { config: configDir(), 'pim.yml': join(configDir(), PIM_YML) };
  for (const d of SUBDIRS) out[d] = subdir(d);
  out.isos = isoDir();
  return out;
}

/** A config error: exit 78, the message starting with `where` (FILE:LINE). */
export const configError = (where: string, msg: string) => new PimError(EXIT.CONFIG, `${where}: ${msg}`);
