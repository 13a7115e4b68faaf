/** qemu-img, through lib/core/run.ts: creating disks and overlays, and reading what a disk holds. */
import { EXIT, PimError } from '../core/exit.ts';
import { run } from '../core/run.ts';

export const qemuImg = () => process.env.PIM_QEMU_IMG ?? 'qemu-img';
const HINT = 'install qemu-utils (Debian) or qemu (Homebrew), or set PIM_QEMU_IMG';

/** Errors from qemu-img: a full disk is 73, everything else 70 with qemu-img's own words. */
function failure(what: string, stderr: string): PimError {
  const last = stderr.trim().split('\n').filter(Boolean).pop() ?? 'failed';
  if (/No space left on device|Disk quota exceeded|File too large/i.test(stderr))
    return new PimError(EXIT.CANTCREAT, `${what}: ${last}; free some space and try again`);
  return new PimError(EXIT.SOFTWARE, `${what}: ${last}`);
}

/** A new empty disk of `size` (qemu-img's syntax: 8G, 512M, bytes). */
export async function createDisk(path: string, format: 'qcow2' | 'raw', size: string): Promise<void> {
  const r = await run(qemuImg(), ['create', '-q', '-f', format, path, size], { hint: HINT });
  if (r.code !== 0) throw failure(`cannot create the disk ${path}`, r.stderr);
}

/** A qcow2 overlay at `path` whose reads fall through to `backing` (never written). */
export async function createOverlay(path: string, backing: string, backingFormat: 'qcow2' | 'raw'): Promise<void> {
  const r = await run(qemuImg(), ['create', '-q', '-f', 'qcow2', '-F', backingFormat, '-b', backing, path], {
    hint: HINT,
  });
  if (r.code !== 0) throw failure(`cannot create the overlay ${path}`, r.stderr);
}

/** Point qcow2 overlay `path` at `backing`, which holds the same bytes at a new place (`rebase -u`: nothing is copied). */
export async function rebaseUnsafe(path: string, backing: string, backingFormat: 'qcow2' | 'raw'): Promise<void> {
  const r = await run(qemuImg(), ['rebase', '-u', '-f', 'qcow2', '-F', backingFormat, '-b', backing, path], {
    hint: HINT,
  });
  if (r.code !== 0) throw failure(`cannot point the overlay ${path} at ${backing}`, r.stderr);
}

/**
 * A qcow2 overlay of `backing` made without opening it for writing's lock
 * (`-u`, the size read with `info -U`): `backing` may be the disk of a
 * running VM (pim-run --clone).
 */
export async function createOverlayUnlocked(
  path: string,
  backing: string,
  backingFormat: 'qcow2' | 'raw',
): Promise<void> {
  const size = (await imgInfo(backing))['virtual-size'];
  const r = await run(
    qemuImg(),
    ['create', '-q', '-f', 'qcow2', '-F', backingFormat, '-b', backing, '-u', path, String(size)],
    { hint: HINT },
  );
  if (r.code !== 0) throw failure(`cannot create the overlay ${path}`, r.stderr);
}

export interface ImgInfo {
  'virtual-size': number;
  'actual-size'?: number;
  format: string;
  'backing-filename'?: string;
  /** internal snapshots (qcow2) */
  snapshots?: ImgSnapshot[];
}

/** One internal snapshot as qemu-img info and QMP's query-block name it. */
export interface ImgSnapshot {
  id: string;
  name: string;
  'vm-state-size': number;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
}

export async function imgInfo(path: string): Promise<ImgInfo> {
  const r = await run(qemuImg(), ['info', '--output=json', '-U', path], { hint: HINT });
  if (r.code !== 0) throw failure(`cannot read ${path}`, r.stderr);
  return JSON.parse(r.stdout) as ImgInfo;
}

/** `qemu-img check`: true when the image is consistent (a qcow2 after a clean stop). */
export async function imgCheck(path: string, format: 'qcow2' | 'raw'): Promise<{ ok: boolean; detail: string }> {
  if (format !== 'qcow2') return { ok: true, detail: 'raw' };
  const r = await run(qemuImg(), ['check', '-q', '-f', format, path], { hint: HINT });
  return { ok: r.code === 0, detail: (r.stderr || r.stdout).trim() };
}

/**
 * `qemu-img snapshot -c|-a|-d TAG` on a qcow2 image no VM has open. An image
 * that a QEMU holds is exit 75 (its write lock); other failures 70 with
 * qemu-img's own words.
 */
export async function imgSnapshot(path: string, op: 'create' | 'apply' | 'delete', tag: string): Promise<void> {
  const flag = { create: '-c', apply: '-a', delete: '-d' }[op];
  const r = await run(qemuImg(), ['snapshot', '-q', flag, tag, path], { hint: HINT, timeoutMs: 600_000 });
  if (r.code === 0) return;
  if (/Failed to get .* lock|Is another process using the image/i.test(r.stderr)) {
    throw new PimError(
      EXIT.TEMPFAIL,
      `${path} is in use by a running VM (qemu-img: ${r.stderr.trim().split('\n')[0]}); name that VM instead, or stop it first`,
    );
  }
  throw failure(`qemu-img snapshot ${flag} ${tag} ${path}`, r.stderr);
}

/** A full copy of `src` (its own format) as `dst` in `format`: no backing file, sparse where the source is. */
export async function convertDisk(
  src: string,
  srcFormat: 'qcow2' | 'raw',
  dst: string,
  format: 'qcow2' | 'raw',
  signal?: AbortSignal,
  opts: { compress?: boolean } = {},
): Promise<void> {
  const r = await run(
    qemuImg(),
    ['convert', '-q', ...(opts.compress ? ['-c'] : []), '-f', srcFormat, '-O', format, src, dst],
    { hint: HINT, signal },
  );
  if (r.code !== 0) throw failure(`cannot copy ${src} to ${dst}`, r.stderr);
}

/** Grow a disk no VM has open to `size` (qemu-img's syntax). */
export async function growDisk(path: string, format: 'qcow2' | 'raw', size: string): Promise<void> {
  const r = await run(qemuImg(), ['resize', '-q', '-f', format, path, size], { hint: HINT });
  if (r.code !== 0) throw failure(`cannot resize ${path} to ${size}`, r.stderr);
}
