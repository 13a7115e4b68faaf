import { describe, expect, it } from 'vitest';
import { domainXml, memKiB, metaOf, uuidOf, disksOf } from '../../lib/deploy/domain.ts';
import { parseHealth } from '../../lib/deploy/targets.ts';
import { parseUri, quoteVirsh, sshArgv } from '../../lib/deploy/virsh.ts';
import { volumeName, volumeRe } from '../../lib/deploy/source.ts';
import type { BuildRecord } from '../../lib/image/registry.ts';
import type { LibvirtTarget } from '../../lib/deploy/targets.ts';

describe('virsh words', () => {
  it('leaves plain words bare and single-quotes the rest', () => {
    expect(quoteVirsh('vol-upload')).toBe('vol-upload');
    expect(quoteVirsh('{"execute":"guest-ping"}')).toBe(`'{"execute":"guest-ping"}'`);
    expect(quoteVirsh("a'b; c")).toBe(`'a'\\''b; c'`);
  });
  it('reads the ssh part of a qemu+ssh:// URI as libvirt does', () => {
    const u = parseUri('qemu+ssh://root@kvm1:2222/system?keyfile=/k&no_verify=1');
    expect(u.transport).toBe('ssh');
    expect(sshArgv(u)).toEqual(['-o', 'BatchMode=yes', '-T', '-e', 'none', '-p', '2222', '-l', 'root', '-i', '/k', '-o', 'StrictHostKeyChecking=no', '--', 'kvm1']);
    expect(parseUri('qemu:///system?socket=/s').transport).toBe('local');
    expect(() => parseUri('not a uri')).toThrow(/not a libvirt URI/);
  });
});

describe('volumes and health', () => {
  it('names a volume after the name and the image hash, and knows its own', () => {
    const v = volumeName('web', 'ab'.repeat(32), 'qcow2');
    expect(v).toBe('web-abababababab.qcow2');
    expect(volumeRe('web').test(v)).toBe(true);
    expect(volumeRe('web').test('web2-abababababab.qcow2')).toBe(false);
    expect(volumeRe('web').test(`${v}.uploading`)).toBe(false);
  });
  it('parses agent, tcp:PORT and serial:TEXT, and refuses the rest', () => {
    expect(parseHealth('agent')).toEqual({ kind: 'agent' });
    expect(parseHealth('tcp:22')).toEqual({ kind: 'tcp', port: 22 });
    expect(parseHealth('serial:login:')).toEqual({ kind: 'serial', marker: 'login:' });
    expect(() => parseHealth('tcp:99999')).toThrow(/agent, tcp:PORT or serial:TEXT/);
  });
});

describe('domain XML', () => {
  const build = {
    id: 'web-0123456789ab', profile: 'web', key: '0123456789ab'.padEnd(64, '0'),
    disk: { file: 'web.qcow2', format: 'qcow2' },
    settings: { mem: '1G', cpus: 2, firmware: 'bios', machine: 'q35', disk_bus: 'virtio', net: 'virtio-net', ssh_user: 'root' },
  } as unknown as BuildRecord;
  const target = { name: 'lab', type: 'libvirt', pool: 'pim', virtType: 'kvm', network: 'default', bridge: null, overrides: { cpus: 4 }, health: { kind: 'agent' } } as unknown as LibvirtTarget;
  const meta = { build: build.id, key: build.key, profile: 'web', volume: 'web-aaaaaaaaaaaa.qcow2', sha256: 'a'.repeat(64) };
  it("is made from the build's settings with the target's overrides, keeps a UUID, and records pim's metadata", () => {
    const xml = domainXml({ name: 'web', uuid: '11111111-2222-3333-4444-555555555555', target, build, volume: meta.volume, nvram: null, meta, serialLog: null });
    expect(xml).toContain("<domain type='kvm'>");
    expect(xml).toContain("<memory unit='KiB'>1048576</memory>");
    expect(xml).toContain('<vcpu>4</vcpu>');
    expect(xml).toContain("machine='q35'");
    expect(xml).toContain("<source pool='pim' volume='web-aaaaaaaaaaaa.qcow2'/>");
    expect(xml).toContain("<source network='default'/>");
    expect(uuidOf(xml)).toBe('11111111-2222-3333-4444-555555555555');
    expect(disksOf(xml).volumes).toEqual(['pim/web-aaaaaaaaaaaa.qcow2']);
  });
  it('reads the metadata back as virsh dumpxml prints it', () => {
    const dumped = `<domain type='qemu'>\n  <metadata>\n    <pim:deploy xmlns:pim="urn:pim:deploy:1" build="${meta.build}" key="${meta.key}" profile="web" volume="${meta.volume}" sha256="${meta.sha256}"/>\n  </metadata>\n</domain>`;
    expect(metaOf(dumped)).toEqual(meta);
    expect(metaOf("<domain type='qemu'><name>x</name></domain>")).toBeNull();
  });
  it('turns sizes into KiB', () => {
    expect(memKiB('256M')).toBe(262144);
    expect(memKiB('2G')).toBe(2097152);
    expect(memKiB('512')).toBe(524288);
  });
});
