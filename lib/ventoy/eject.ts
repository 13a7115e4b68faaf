/**
 * pim-ventoy eject: sync, unmount what pim mounted (its mount dirs in the
 * runtime dir, left by a pim-ventoy that was killed before it could clean
 * up), and power the device off where the system allows it: udisksctl
 * power-off, else the kernel's /sys/block/NAME/device/delete. A loop device
 * or an image file has nothing to power off. A partition mounted by anyone
 * else is left alone, and then the device is not powered off (75).
 */
import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { runtimeDirPath } from '../core/paths.ts';
import { log } from '../core/log.ts';
import type { Stick } from './detect.ts';
import { asRoot, loopsOf, MOUNT_PREFIX, mountsOf } from './stick.ts';
import { run } from '../core/run.ts';
import { which } from '../core/which.ts';

export type EjectResult = {
  name: string;
  synced: boolean;
  /** how many of pim's mounts were unmounted */
  unmounted: number;
  powered_off: boolean;
};

export async function eject(stick: Stick): Promise<EjectResult> {
  await run('sync', []);
  const devs = stick.kind === 'image' ? loopsOf(stick.name) : [stick.name];
  const pimDir = join(runtimeDirPath(), MOUNT_PREFIX);
  let unmounted = 0;
  const others: string[] = [];
  for (const d of devs) {
    for (const m of mountsOf(d)) {
      if (!m.target.startsWith(pimDir)) {
        others.push(`${m.source} at ${m.target}`);
        continue;
      }
      await asRoot(`unmount ${m.target}`, 'umount', [m.target]);
      try {
        fs.rmdirSync(m.target);
      } catch {
        /* not empty, or gone: leave it */
      }
      unmounted++;
    }
  }
  await run('sync', []);
  if (others.length)
    throw new PimError(
      EXIT.TEMPFAIL,
      `${stick.name} is still mounted by someone else (${others.join(', ')}); unmount it, then eject again`,
    );
  if (process.platform === 'darwin') {
    const r = await run('diskutil', ['eject', stick.name]);
    return { name: stick.name, synced: true, unmounted, powered_off: r.code === 0 };
  }
  const name = basename(fs.realpathSync(stick.name));
  if (stick.kind === 'image' || name.startsWith('loop'))
    return { name: stick.name, synced: true, unmounted, powered_off: false };
  if (which('udisksctl')) {
    const r = await run('udisksctl', ['power-off', '-b', stick.name]);
    if (r.code === 0) return { name: stick.name, synced: true, unmounted, powered_off: true };
    log.debug(`udisksctl power-off: ${r.stderr.trim()}`);
  }
  const del = `/sys/block/${name}/device/delete`;
  if (!fs.existsSync(del)) return { name: stick.name, synced: true, unmounted, powered_off: false };
  await asRoot(`power off ${stick.name} (${del})`, 'tee', [del], { input: '1\n' });
  return { name: stick.name, synced: true, unmounted, powered_off: true };
}
