/**
 * What an installer ISO boots: its kernel and initrd, read out of the ISO
 * with a maintained tool (xorriso, else bsdtar), never a hand-written ISO
 * 9660 reader; and the kernel command line that points the installer at
 * pim's answer file.
 *
 * Extracted files are cached by the ISO's checksum, so a rebuild from the
 * same ISO does not read it again.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { cacheDir } from '../core/paths.ts';
import { ensurePrivateDir } from '../core/fs.ts';
import { which } from '../core/which.ts';
import { run } from '../core/run.ts';

export type Layout = 'debian' | 'ubuntu';

/** Where installers of each layout keep their kernel and initrd. */
export const LAYOUTS: Record<Layout, { kernel: string; initrd: string; answers: string[] }> = {
  debian: { kernel: 'install.amd/vmlinuz', initrd: 'install.amd/initrd.gz', answers: ['/preseed.cfg'] },
  ubuntu: { kernel: 'casper/vmlinuz', initrd: 'casper/initrd', answers: ['/user-data', '/meta-data'] },
};

/** A path inside an ISO: relative, no "..", no empty parts. */
export function checkIsoPath(p: string, what: string): string {
  const clean = p.replace(/^\/+/, '');
  if (!clean || clean.split('/').some((s) => s === '' || s === '.' || s === '..') || clean.includes('\0')) {
    throw new PimError(
      EXIT.CONFIG,
      `${what}: ${JSON.stringify(p)} is not a path inside the ISO (like install.amd/vmlinuz)`,
    );
  }
  return clean;
}

/**
 * The kernel command line for an unattended install. pim's words come before
 * any `---`: d-i copies the words after `---` into the installed system's
 * boot loader, and installer arguments must not leak there. A user's
 * `append` may carry its own `---` part for the installed system.
 *
 * Debian: a preseed fetched with url= comes after the network is set up, so
 * its netcfg answers are too late; the profile's hostname and domain go on
 * the command line (installation guide, appendix B.4). Ubuntu:
 * `ds=nocloud-net;s=URL/` works with every cloud-init (before 23.2 only
 * nocloud-net fetches over HTTP; later ones still take it, as subiquity's own
 * quick start uses it), where `ds=nocloud;s=http://...` needs 23.2.
 */
export function installerCmdline(
  layout: Layout,
  answerUrl: string,
  userAppend = '',
  injected = false,
  host: { hostname?: unknown; domain?: unknown } = {},
): string {
  const word = (k: string, v: unknown) => (typeof v === 'string' && /^[A-Za-z0-9.-]+$/.test(v) ? [`${k}=${v}`] : []);
  // an injected preseed is /preseed.cfg in the initrd, which d-i reads by itself: no url=
  const pim =
    layout === 'debian'
      ? [
          'auto=true',
          'priority=critical',
          ...(injected
            ? []
            : [`url=${answerUrl}/preseed.cfg`, ...word('hostname', host.hostname), ...word('domain', host.domain)]),
          'console=ttyS0,115200n8',
        ]
      : ['autoinstall', `ds=nocloud-net;s=${answerUrl}/`, 'console=ttyS0,115200n8'];
  const words = userAppend.trim() ? userAppend.trim().split(/\s+/) : [];
  const dd = words.indexOf('---');
  const before = dd >= 0 ? words.slice(0, dd) : words;
  const after = dd >= 0 ? words.slice(dd + 1) : [];
  return [...pim, ...before, '---', ...after].join(' ');
}

/** Links inside an ISO that pim follows for one file, at most. */
const MAX_ISO_LINKS = 8;

/**
 * Where a symbolic link at `from` (a path inside the ISO) points, inside
 * the ISO: a relative target, taken from the link's directory, that stays
 * in the ISO's tree. An absolute target, or one that climbs out, is refused
 * (65): it would name a file of whatever machine reads the ISO.
 */
export function isoLinkTarget(iso: string, from: string, target: string): string {
  const { posix } = process.getBuiltinModule('node:path') as typeof import('node:path');
  const refuse = (why: string) =>
    new PimError(
      EXIT.DATAERR,
      `${from} in ${iso} is a symbolic link to ${JSON.stringify(target)}, ${why}; pim reads only files inside the ISO`,
    );
  if (!target || target.startsWith('/')) throw refuse('outside the ISO');
  const p = posix.normalize(posix.join(posix.dirname(from), target));
  if (p === '..' || p.startsWith('../') || p === '.' || p.includes('\0')) throw refuse('outside the ISO');
  return p;
}

/** xorriso (or bsdtar) copies `inside` out of the ISO to `tmp`, as it is there: a file, a directory, or a symbolic link, never followed. */
async function extractRaw(iso: string, inside: string, tmp: string): Promise<void> {
  fs.rmSync(tmp, { recursive: true, force: true });
  const xorriso = which('xorriso');
  let r;
  if (xorriso) {
    r = await run(xorriso, ['-osirrox', 'on', '-indev', iso, '-extract', '/' + inside, tmp]);
    // xorriso exits 0 and warns when a path is missing: look for the file (a link itself counts)
    if (r.code === 0 && !fs.lstatSync(tmp, { throwIfNoEntry: false }))
      r = { ...r, code: 1, stderr: r.stderr + '\nnot found' };
  } else {
    const bsdtar = which('bsdtar');
    if (!bsdtar)
      throw new PimError(
        EXIT.UNAVAILABLE,
        'reading files out of an ISO needs xorriso or bsdtar; install xorriso (apt-get install xorriso) or libarchive-tools',
      );
    const dir = `${tmp}.d`;
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    r = await run(bsdtar, ['-xf', iso, '-C', dir, inside]);
    if (r.code === 0 && fs.lstatSync(join(dir, inside), { throwIfNoEntry: false }))
      fs.renameSync(join(dir, inside), tmp);
    else if (r.code === 0) r = { ...r, code: 1 };
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (r.code !== 0) {
    fs.rmSync(tmp, { recursive: true, force: true });
    const missing = /not found|Not found in archive|Cannot find|No such file/i.test(r.stderr) || r.code === 1;
    if (missing)
      throw new PimError(
        EXIT.NOINPUT,
        `${iso} has no ${inside}; set boot.kernel and boot.initrd in the profile to the installer's paths inside the ISO`,
      );
    throw new PimError(EXIT.DATAERR, `cannot read ${inside} out of ${iso}: ${r.stderr.trim().split('\n').pop()}`);
  }
}

/**
 * One file out of the ISO into `dest` (in pim's private cache). Nothing out
 * of an ISO may resolve outside pim's own directory: a symbolic link in the
 * ISO is followed inside the ISO's tree only (isoLinkTarget), by reading
 * its target out of the ISO in turn; anything but a regular file in the
 * end is refused (65). Its mode is set through a descriptor opened with
 * O_NOFOLLOW, never through a link.
 */
async function extractOne(iso: string, inside: string, dest: string): Promise<void> {
  const tmp = `${dest}.${process.pid}.tmp`;
  let path = inside;
  try {
    for (let hops = 0; ; hops++) {
      await extractRaw(iso, path, tmp);
      const st = fs.lstatSync(tmp);
      if (st.isSymbolicLink()) {
        const target = fs.readlinkSync(tmp);
        fs.unlinkSync(tmp);
        if (hops >= MAX_ISO_LINKS)
          throw new PimError(
            EXIT.DATAERR,
            `${inside} in ${iso} goes through more than ${MAX_ISO_LINKS} symbolic links; pim reads only files inside the ISO`,
          );
        path = isoLinkTarget(iso, path, target);
        continue;
      }
      if (!st.isFile())
        throw new PimError(
          EXIT.DATAERR,
          `${path} in ${iso} is not a file (${st.isDirectory() ? 'a directory' : 'a special file'}); set boot.kernel and boot.initrd to the installer's files`,
        );
      const fd = fs.openSync(tmp, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      try {
        fs.fchmodSync(fd, 0o600);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, dest);
      return;
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** The installer's kernel and initrd out of the ISO (cached by the ISO's checksum). */
export async function bootFiles(
  iso: string,
  checksum: string,
  kernel: string,
  initrd: string,
): Promise<{ kernel: string; initrd: string }> {
  const dir = ensurePrivateDir(join(cacheDir(), 'build', `iso-${checksum.replace(/^sha\d+:/, '').slice(0, 16)}`));
  const out: { kernel: string; initrd: string } = { kernel: '', initrd: '' };
  for (const [k, inside] of [
    ['kernel', kernel],
    ['initrd', initrd],
  ] as const) {
    const dest = join(dir, inside.replace(/\//g, '__'));
    // a cached entry is used only when it is a regular file (an older pim kept links out of an ISO)
    const st = fs.lstatSync(dest, { throwIfNoEntry: false });
    if (st && !st.isFile()) fs.rmSync(dest, { recursive: true, force: true });
    if (!st?.isFile()) await extractOne(iso, inside, dest);
    out[k] = dest;
  }
  return out;
}
