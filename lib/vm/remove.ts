/**
 * Removing what a stopped VM left: its kept log and any runtime file of that
 * name (every kind RUNTIME_EXT names, so a kind added there is removed here
 * too), under the VM's lock so that no start of that name runs meanwhile; and,
 * only when asked, its image in the store. A running VM is refused (75).
 */
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { exists } from '../core/fs.ts';
import { acquireLock } from '../core/lock.ts';
import { efivarsOf, existingRuntimeDir, imagesDir, type VmFiles } from '../core/paths.ts';
import { IMAGE_EXTS } from '../image/store.ts';
import { cleanupFiles, listVms, vmInfo, loggedNames, runtimeNames } from './state.ts';
import type { VmRef } from './ref.ts';
import { loadVmCatalog } from '../config/vms.ts';
import { entryNames } from '../config/catalog.ts';

/** The image files of NAME in the store: NAME.qcow2 (or .img, .raw) and its UEFI vars. */
export function storeFiles(name: string): string[] {
  const dir = imagesDir();
  return [...IMAGE_EXTS.map((e) => join(dir, name + e)), join(dir, efivarsOf(name))].filter(existsSync);
}

/**
 * Remove stopped VM `ref`'s runtime files and kept log (and with `image`, its
 * store image). Returns the paths removed; 66 when there was nothing, 75 when
 * it runs or is starting, or when another running VM uses the image.
 */
export async function removeVm(ref: VmRef, o: { image?: boolean } = {}): Promise<string[]> {
  const lock = await acquireLock(ref.files.lock, `VM ${ref.name}`);
  try {
    const info = await vmInfo(ref);
    if (info.state === 'running')
      throw new PimError(
        EXIT.TEMPFAIL,
        `${ref.name} is running (pid ${info.pid}); stop it first (pim-stop ${ref.name})`,
      );
    const removed: string[] = [];
    for (const [k, p] of Object.entries(ref.files) as Array<[keyof VmFiles, string]>) {
      if (k === 'lock' || !exists(p)) continue;
      rmSync(p, { recursive: true, force: true });
      removed.push(p);
    }
    cleanupFiles(ref.files);
    if (o.image) {
      const files = storeFiles(ref.name);
      const dir = existingRuntimeDir();
      const users = dir
        ? (await listVms(dir)).filter((v) => v.state === 'running' && files.includes(v.meta?.image ?? ''))
        : [];
      if (users.length)
        throw new PimError(
          EXIT.TEMPFAIL,
          `the image of ${ref.name} is the disk of running VM ${users[0]!.name}; stop it first (pim-stop ${users[0]!.name})`,
        );
      for (const f of files) {
        rmSync(f, { force: true });
        removed.push(f);
      }
    }
    if (!removed.length) {
      throw new PimError(
        EXIT.NOINPUT,
        `nothing of ${ref.name} to remove: no log or runtime file in ${ref.dir}${o.image ? ` and no image in ${imagesDir()}` : ''}; see pim-ps --all`,
      );
    }
    return removed;
  } finally {
    await lock.release();
  }
}

/**
 * What `pim-rm --stale` removes: names with a kept log or runtime files in the
 * runtime dir whose VM does not run (or start) — what builds, pim-kboot VMs
 * and failed starts leave, which pim-ps --all lists as stopped — but never
 * anything a user keeps: a VM defined in vms.d, a name with an image in the
 * store (its log stays for a post-mortem), a running VM. VM definitions that
 * do not load are an error (78): without them pim cannot tell what is kept.
 */
export async function staleNames(): Promise<string[]> {
  const dir = existingRuntimeDir();
  if (!dir) return [];
  const { storeImages } = await import('../image/store.ts');
  const kept = new Set([...storeImages().map((i) => i.name), ...entryNames(await loadVmCatalog())]);
  const live = new Set((await listVms(dir)).filter((v) => v.state !== 'stale').map((v) => v.name));
  return [...new Set([...loggedNames(dir), ...runtimeNames(dir)])].filter((n) => !kept.has(n) && !live.has(n)).sort();
}
