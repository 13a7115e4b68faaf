import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { checkIsoPath, installerCmdline } from '../../lib/build/iso-boot.ts';
import { buildInputs, buildKey, canonical, inputsDiff, planBuild } from '../../lib/build/plan.ts';
import { buildByKey, buildDisk, commitBuild, disksBackedBy, findBuild, latestBuild, listBuilds, removeBuild, type BuildRecord } from '../../lib/image/registry.ts';
import { overlayForBuild, resolveImage } from '../../lib/image/store.ts';
import { readQcow2Header } from '../../lib/image/qcow2.ts';
import { keyBlob } from '../../lib/build/ssh.ts';

let tmp: string;
const saved = { ...process.env };
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimu-build-'));
  process.env.XDG_CONFIG_HOME = join(tmp, 'config');
  process.env.XDG_DATA_HOME = join(tmp, 'data');
  process.env.XDG_CACHE_HOME = join(tmp, 'cache');
});
afterEach(() => {
  process.env = { ...saved };
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('the installer command line', () => {
  it("puts pim's words before ---, so nothing of the installer's leaks into the installed boot loader", () => {
    expect(installerCmdline('debian', 'http://10.0.2.2:4242')).toBe('auto=true priority=critical url=http://10.0.2.2:4242/preseed.cfg console=ttyS0,115200n8 ---');
    expect(installerCmdline('ubuntu', 'http://10.0.2.2:4242')).toBe('autoinstall ds=nocloud;s=http://10.0.2.2:4242/ console=ttyS0,115200n8 ---');
  });
  it('leaves url= out when the preseed is injected into the initrd', () => {
    expect(installerCmdline('debian', 'http://10.0.2.2:4242', '', true)).toBe('auto=true priority=critical console=ttyS0,115200n8 ---');
  });
  it("keeps a profile's own --- part after pim's", () => {
    expect(installerCmdline('debian', 'http://h:1', 'vga=788 --- quiet splash')).toBe('auto=true priority=critical url=http://h:1/preseed.cfg console=ttyS0,115200n8 vga=788 --- quiet splash');
  });
  it('refuses ISO paths that leave the ISO', () => {
    expect(checkIsoPath('/install.amd/vmlinuz', 'x')).toBe('install.amd/vmlinuz');
    for (const bad of ['', '../etc/passwd', 'a/../../b', 'a//b', '.']) expect(() => checkIsoPath(bad, 'boot.kernel')).toThrow(expect.objectContaining({ code: 78 }));
  });
});

function writeConfig(files: Record<string, string>) {
  for (const [p, text] of Object.entries(files)) {
    const f = join(tmp, 'config', 'pim', p);
    fs.mkdirSync(join(f, '..'), { recursive: true });
    fs.writeFileSync(f, text);
  }
}

describe('build plan and cache key', () => {
  it('reads the build settings with defaults, and the scripts the profile names', async () => {
    writeConfig({
      'profiles.d/t.yml': 'dev:\n  iso: tb\n  scripts: [a.sh, b.sh]\n  ssh_user: root\n  disk_size: 512M\n',
      'scripts.d/a.sh': 'echo a\n',
      'scripts.d/b.sh': 'echo b\n',
    });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const plan = await planBuild(await loadProfile('dev'));
    expect(plan).toMatchObject({ layout: 'debian', iso: 'tb', firmware: 'bios', disk: { size: '512M', format: 'qcow2' }, sshUser: 'root', keepKey: false, mem: '1G', cpus: 2 });
    expect(plan.boot).toEqual({ kernel: 'install.amd/vmlinuz', initrd: 'install.amd/initrd.gz', append: '', inject: false });
    expect(plan.scripts.map((s) => [s.label, s.content])).toEqual([
      ['scripts.d/a.sh', 'echo a\n'],
      ['scripts.d/b.sh', 'echo b\n'],
    ]);
  });
  it('runs scripts.d/PROFILE.sh (else default.sh) when the profile lists none; Ubuntu profiles use casper/', async () => {
    writeConfig({ 'profiles.d/t.yml': 'u:\n  distro: ubuntu\n  iso: x\n' });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const plan = await planBuild(await loadProfile('u'));
    expect(plan.layout).toBe('ubuntu');
    expect(plan.boot.kernel).toBe('casper/vmlinuz');
    expect(plan.scripts.map((s) => s.label)).toEqual(['scripts.d/default.sh']);
    expect(plan.sshUser).toBe('pim'); // username
  });
  it('refuses a bad disk size or boot path with 78 and where it was set', async () => {
    writeConfig({ 'profiles.d/t.yml': 'a:\n  iso: x\n  disk_size: lots\nb:\n  iso: x\n  boot: {kernel: ../x}\n' });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    await expect(planBuild(await loadProfile('a'))).rejects.toMatchObject({ code: 78, message: expect.stringMatching(/t\.yml:3: disk_size/) });
    await expect(planBuild(await loadProfile('b'))).rejects.toMatchObject({ code: 78, message: expect.stringContaining('boot.kernel') });
  });
  it('gives the same key for the same inputs (whatever the key order) and another for a changed script, answer, disk size or ISO', async () => {
    writeConfig({ 'profiles.d/t.yml': 'dev:\n  iso: tb\n  scripts: [a.sh]\n', 'scripts.d/a.sh': 'echo a\n' });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const plan = await planBuild(await loadProfile('dev'));
    const iso = { name: 'tb', checksum: 'sha256:' + '0'.repeat(64) };
    const base = buildInputs(plan, { '/preseed.cfg': 'd-i x\n' }, iso);
    const k = buildKey(base);
    expect(k).toMatch(/^[0-9a-f]{64}$/);
    expect(buildKey(JSON.parse(canonical(base)))).toBe(k);
    const reordered = { ...base, profile: Object.fromEntries(Object.entries(base.profile).reverse()) };
    expect(buildKey(reordered)).toBe(k);
    const script = { ...plan, scripts: [{ ...plan.scripts[0]!, content: 'echo b\n' }] };
    expect(buildKey(buildInputs(script, { '/preseed.cfg': 'd-i x\n' }, iso))).not.toBe(k);
    expect(buildKey(buildInputs(plan, { '/preseed.cfg': 'd-i y\n' }, iso))).not.toBe(k);
    expect(buildKey(buildInputs({ ...plan, disk: { size: '9G', format: 'qcow2' } }, { '/preseed.cfg': 'd-i x\n' }, iso))).not.toBe(k);
    expect(buildKey(buildInputs(plan, { '/preseed.cfg': 'd-i x\n' }, { ...iso, checksum: 'sha256:' + '1'.repeat(64) }))).not.toBe(k);
    expect(inputsDiff(base, buildInputs(script, { '/preseed.cfg': 'd-i x\n' }, iso))).toEqual(['files.scripts.d/a.sh']);
  });
});

/** A finished build in the registry, with a real (tiny) qcow2 image. */
function fakeBuild(profile: string, key: string, created: string): BuildRecord {
  const dir = join(tmp, `stage-${key}`);
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, `${profile}.qcow2`), '16M']);
  const rec = {
    id: `${profile}-${key.slice(0, 12)}`,
    profile,
    key,
    created,
    recipe: 1,
    inputs: {} as BuildRecord['inputs'],
    iso: { name: 'tb', checksum: 'sha256:00', path: '/x.iso' },
    disk: { file: `${profile}.qcow2`, format: 'qcow2' as const, virtual_size: 16 << 20, bytes: 0 },
    efivars: null,
    settings: { mem: '256M', cpus: 1, firmware: 'bios' as const, machine: 'q35', disk_bus: 'virtio', net: 'virtio-net', ssh_user: 'root' },
    times: { install: 1, provision: 1, total: 2 },
    log: 'build.log',
  };
  fs.mkdirSync(join(tmp, 'data', 'pim', 'builds'), { recursive: true });
  return commitBuild(dir, rec);
}

describe('the build registry and the image store', () => {
  const k1 = 'a'.repeat(64);
  const k2 = 'b'.repeat(64);
  it('stores builds read-only and finds them by id, key prefix and profile', () => {
    const b1 = fakeBuild('dev', k1, '2026-01-01T00:00:00.000Z');
    const b2 = fakeBuild('dev', k2, '2026-01-02T00:00:00.000Z');
    expect(listBuilds().map((b) => b.id)).toEqual([b1.id, b2.id]);
    expect(fs.statSync(buildDisk(b1)).mode & 0o777).toBe(0o444);
    expect(buildByKey('dev', k1)?.id).toBe(b1.id);
    expect(buildByKey('dev', 'c'.repeat(64))).toBeNull();
    expect(latestBuild('dev')?.id).toBe(b2.id);
    expect(findBuild('dev').id).toBe(b2.id);
    expect(findBuild('aaaa').id).toBe(b1.id);
    expect(findBuild(b1.id).id).toBe(b1.id);
    expect(() => findBuild('nosuch')).toThrow(expect.objectContaining({ code: 66 }));
  });
  it('boots a profile through an overlay in the image store, refreshed (old one kept as .prev) when a newer build comes', async () => {
    const b1 = fakeBuild('dev', k1, '2026-01-01T00:00:00.000Z');
    const img = await resolveImage('dev');
    expect(img).toMatchObject({ name: 'dev', format: 'qcow2', build: b1.id });
    expect(readQcow2Header(img.path)?.backingFile).toBe(buildDisk(b1));
    expect(disksBackedBy(b1)).toEqual([img.path]);
    // a build's own path boots through the same overlay, never the build itself
    expect((await resolveImage(buildDisk(b1))).path).toBe(img.path);
    expect(() => removeBuild(b1)).toThrow(expect.objectContaining({ code: 75, message: expect.stringContaining(img.path) }));
    const b2 = fakeBuild('dev', k2, '2026-01-02T00:00:00.000Z');
    await expect(overlayForBuild('dev', b2, async () => true)).rejects.toMatchObject({ code: 75 });
    const again = await resolveImage('dev');
    expect(again.build).toBe(b2.id);
    expect(readQcow2Header(join(tmp, 'data', 'pim', 'images', 'dev.prev.qcow2'))?.backingFile).toBe(buildDisk(b1));
    fs.rmSync(join(tmp, 'data', 'pim', 'images', 'dev.prev.qcow2'));
    removeBuild(b1);
    expect(listBuilds().map((b) => b.id)).toEqual([b2.id]);
  });
  it('says how to build when there is neither an image nor a build', async () => {
    await expect(resolveImage('nothing')).rejects.toMatchObject({ code: 66, message: expect.stringContaining('pim-build run nothing') });
  });
});

describe('SSH host keys', () => {
  it('takes the key blob out of an OpenSSH public key line', () => {
    const blob = Buffer.from('\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20' + 'k'.repeat(32), 'latin1');
    expect(keyBlob(`ssh-ed25519 ${blob.toString('base64')} root@pim`)?.equals(blob)).toBe(true);
    expect(keyBlob('no key here')).toBeNull();
  });
});
