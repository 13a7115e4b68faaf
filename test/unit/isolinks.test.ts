/**
 * pim-build reads the installer's kernel and initrd out of an ISO, and the
 * ISO is untrusted: a crafted ISO (made here with real xorriso, Rock Ridge
 * symbolic links and all) must not make pim read, boot or chmod a host
 * file. Links are followed only inside the ISO's own tree.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootFiles, isoLinkTarget } from '../../lib/builder/iso-boot.ts';
import { PimError } from '../../lib/core/exit.ts';

let w: string;
let host: string;
const HOST_MODE = 0o640;

beforeAll(() => {
  w = fs.mkdtempSync(join(tmpdir(), 'pim-isolinks-'));
  process.env.XDG_CACHE_HOME = join(w, 'cache');
  host = join(w, 'host-secret');
  fs.writeFileSync(host, 'a host file\n');
  fs.chmodSync(host, HOST_MODE);
});
afterAll(() => fs.rmSync(w, { recursive: true, force: true }));

/** An ISO (xorriso, Rock Ridge) of a tree: [path, file text | {link: target}]. */
function iso(name: string, entries: Array<[string, string | { link: string }]>): string {
  const root = join(w, `${name}.d`);
  for (const [p, v] of entries) {
    fs.mkdirSync(join(root, p, '..'), { recursive: true });
    if (typeof v === 'string') fs.writeFileSync(join(root, p), v);
    else fs.symlinkSync(v.link, join(root, p));
  }
  const out = join(w, `${name}.iso`);
  execFileSync('xorriso', ['-as', 'mkisofs', '-R', '-quiet', '-o', out, root], { stdio: 'ignore' });
  return out;
}

const code = async (p: Promise<unknown>) =>
  p.then(
    () => 0,
    (e) => (e instanceof PimError ? e.code : -1),
  );
const cacheFiles = () =>
  (fs.readdirSync(join(w, 'cache'), { recursive: true }) as string[]).map((f) => join(w, 'cache', f));

// xorriso makes and reads each ISO: a loaded machine takes seconds for one
describe.skipIf(!fs.existsSync('/usr/bin/xorriso'))('files out of a crafted ISO', { timeout: 120_000 }, () => {
  it('an absolute link to a host file is refused (65): the host file is not read, and its mode does not change', async () => {
    const i = iso('abs', [
      ['install.amd/vmlinuz', { link: host }],
      ['install.amd/initrd.gz', 'initrd'],
    ]);
    expect(await code(bootFiles(i, 'sha256:' + 'a'.repeat(64), 'install.amd/vmlinuz', 'install.amd/initrd.gz'))).toBe(
      65,
    );
    expect(fs.statSync(host).mode & 0o7777).toBe(HOST_MODE);
    // nothing in pim's cache is a link, nor holds the host file
    for (const f of cacheFiles()) {
      expect(fs.lstatSync(f).isSymbolicLink()).toBe(false);
      if (fs.lstatSync(f).isFile()) expect(fs.readFileSync(f, 'utf8')).not.toContain('a host file');
    }
  });

  it('a relative link that climbs out of the ISO is refused (65), the host file untouched', async () => {
    const i = iso('up', [
      ['install.amd/vmlinuz', { link: '../../../../../../../../..' + host }],
      ['install.amd/initrd.gz', 'initrd'],
    ]);
    expect(await code(bootFiles(i, 'sha256:' + 'b'.repeat(64), 'install.amd/vmlinuz', 'install.amd/initrd.gz'))).toBe(
      65,
    );
    expect(fs.statSync(host).mode & 0o7777).toBe(HOST_MODE);
  });

  it('a link inside the ISO is followed there: the file it names, as a private regular file', async () => {
    const i = iso('inside', [
      ['install.amd/vmlinuz', { link: 'vmlinuz-6.1' }],
      ['install.amd/vmlinuz-6.1', 'the kernel'],
      ['install.amd/initrd.gz', { link: '../common/initrd.gz' }],
      ['common/initrd.gz', 'the initrd'],
    ]);
    const got = await bootFiles(i, 'sha256:' + 'c'.repeat(64), 'install.amd/vmlinuz', 'install.amd/initrd.gz');
    for (const [f, text] of [
      [got.kernel, 'the kernel'],
      [got.initrd, 'the initrd'],
    ] as const) {
      const st = fs.lstatSync(f);
      expect(st.isFile()).toBe(true);
      expect(st.mode & 0o777).toBe(0o600);
      expect(fs.readFileSync(f, 'utf8')).toBe(text);
    }
  });

  it('a cached link (left by an older pim) is replaced, never booted', async () => {
    const i = iso('cached', [
      ['install.amd/vmlinuz', 'kernel'],
      ['install.amd/initrd.gz', 'initrd'],
    ]);
    const sum = 'sha256:' + 'd'.repeat(64);
    const first = await bootFiles(i, sum, 'install.amd/vmlinuz', 'install.amd/initrd.gz');
    fs.rmSync(first.kernel);
    fs.symlinkSync(host, first.kernel);
    const again = await bootFiles(i, sum, 'install.amd/vmlinuz', 'install.amd/initrd.gz');
    expect(fs.lstatSync(again.kernel).isFile()).toBe(true);
    expect(fs.readFileSync(again.kernel, 'utf8')).toBe('kernel');
    expect(fs.statSync(host).mode & 0o7777).toBe(HOST_MODE);
  });

  it('a directory, or a loop of links, is refused (65)', async () => {
    const i = iso('odd', [
      ['install.amd/vmlinuz/x', 'not a kernel'],
      ['install.amd/a', { link: 'b' }],
      ['install.amd/b', { link: 'a' }],
    ]);
    expect(await code(bootFiles(i, 'sha256:' + 'e'.repeat(64), 'install.amd/vmlinuz', 'install.amd/a'))).toBe(65);
    expect(await code(bootFiles(i, 'sha256:' + 'f'.repeat(64), 'install.amd/a', 'install.amd/b'))).toBe(65);
  });

  it('where a link in the ISO points', () => {
    expect(isoLinkTarget('x.iso', 'install.amd/vmlinuz', 'vmlinuz-6')).toBe('install.amd/vmlinuz-6');
    expect(isoLinkTarget('x.iso', 'a/b/c', '../d')).toBe('a/d');
    expect(() => isoLinkTarget('x.iso', 'a/b', '/etc/shadow')).toThrow(/outside the ISO/);
    expect(() => isoLinkTarget('x.iso', 'a/b', '../../etc')).toThrow(/outside the ISO/);
  });
});
