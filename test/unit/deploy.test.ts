import { describe, expect, it } from 'vitest';
import { domainXml, memKiB, metaOf, uuidOf, disksOf } from '../../lib/deploy/domain.ts';
import { normFingerprint, parseHealth } from '../../lib/deploy/targets.ts';
import {
  IMPORT_SINCE,
  metaLine,
  metaOfDescription,
  restoreForm,
  versionAtLeast,
  vmParams,
  volumesOf,
} from '../../lib/deploy/proxmox.ts';
import {
  agentPrivs,
  configPrivs,
  describeNeeds,
  descriptionLength,
  dnsNameProblem,
  importedVolume,
  permsAt,
  privilegesFor,
  taskSucceeded,
  unmet,
} from '../../lib/deploy/pvecheck.ts';
import { parseUri, quoteVirsh, sshArgv } from '../../lib/deploy/virsh.ts';
import { volumeName, volumeRe } from '../../lib/deploy/source.ts';
import { receiveThrough, sendThrough } from '../../lib/deploy/stream.ts';
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
    expect(sshArgv(u)).toEqual([
      '-o',
      'BatchMode=yes',
      '-T',
      '-e',
      'none',
      '-p',
      '2222',
      '-l',
      'root',
      '-i',
      '/k',
      '-o',
      'StrictHostKeyChecking=no',
      '--',
      'kvm1',
    ]);
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
    id: 'web-0123456789ab',
    profile: 'web',
    key: '0123456789ab'.padEnd(64, '0'),
    disk: { file: 'web.qcow2', format: 'qcow2' },
    settings: {
      mem: '1G',
      cpus: 2,
      firmware: 'bios',
      machine: 'q35',
      disk_bus: 'virtio',
      net: 'virtio-net',
      ssh_user: 'root',
    },
  } as unknown as BuildRecord;
  const target = {
    name: 'lab',
    type: 'libvirt',
    pool: 'pim',
    virtType: 'kvm',
    network: 'default',
    bridge: null,
    overrides: { cpus: 4 },
    health: { kind: 'agent' },
  } as unknown as LibvirtTarget;
  const meta = {
    build: build.id,
    key: build.key,
    profile: 'web',
    volume: 'web-aaaaaaaaaaaa.qcow2',
    sha256: 'a'.repeat(64),
  };
  it("is made from the build's settings with the target's overrides, keeps a UUID, and records pim's metadata", () => {
    const xml = domainXml({
      name: 'web',
      uuid: '11111111-2222-3333-4444-555555555555',
      target,
      build,
      volume: meta.volume,
      nvram: null,
      meta,
      serialLog: null,
    });
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

describe('Proxmox', () => {
  const meta = {
    build: 'web-0123456789ab',
    key: 'k'.repeat(64),
    profile: 'web',
    volume: 'web-aaaaaaaaaaaa.qcow2',
    sha256: 'a'.repeat(64),
  };
  it("keeps pim's record as one line of the description, beside the user's own text", () => {
    expect(metaOfDescription(`my notes\n${metaLine(meta)}\n`)).toEqual(meta);
    expect(metaOfDescription('my notes')).toBeNull();
    expect(metaOfDescription(undefined)).toBeNull();
  });
  it('needs 8.4 for a qcow2 upload as content import (8.3.x takes only .ova), and reads fingerprints with or without colons', () => {
    expect(versionAtLeast('8.4.0', IMPORT_SINCE)).toBe(true);
    expect(versionAtLeast('9.0.1', IMPORT_SINCE)).toBe(true);
    expect(versionAtLeast('8.3.2', IMPORT_SINCE)).toBe(false);
    expect(versionAtLeast('8.3.5', IMPORT_SINCE)).toBe(false);
    expect(versionAtLeast('8.2.7', IMPORT_SINCE)).toBe(false);
    expect(normFingerprint('AB:'.repeat(31) + 'AB')).toBe('ab'.repeat(32));
    expect(normFingerprint('AB:CD')).toBeNull();
  });
  it("makes the VM from the build's settings: UEFI gets OVMF and an EFI disk, the disk comes from import-from", () => {
    const src = {
      name: 'web',
      volume: meta.volume,
      build: {
        id: meta.build,
        key: meta.key,
        profile: 'web',
        settings: {
          mem: '2G',
          cpus: 2,
          firmware: 'uefi',
          machine: 'q35',
          disk_bus: 'sata',
          net: 'e1000',
          ssh_user: 'root',
        },
      },
    } as unknown as Parameters<typeof vmParams>[0];
    const t = {
      storage: 'local-lvm',
      importStorage: 'local',
      bridge: 'vmbr1',
      overrides: { cpus: 4 },
    } as unknown as Parameters<typeof vmParams>[1];
    const p = vmParams(src, t, meta, {
      description: `keep this\n${metaLine({ ...meta, sha256: 'b'.repeat(64) })}`,
      net0: 'e1000=BC:24:11:5E:3A:01,bridge=vmbr0',
    });
    expect(p).toMatchObject({
      memory: '2048',
      cores: '4',
      bios: 'ovmf',
      efidisk0: 'local-lvm:1,efitype=4m,pre-enrolled-keys=0',
      sata0: 'local-lvm:0,import-from=local:import/web-aaaaaaaaaaaa.qcow2',
      boot: 'order=sata0',
      net0: 'e1000=BC:24:11:5E:3A:01,bridge=vmbr1',
      agent: '1',
    });
    expect(p.description).toBe(`keep this\n${metaLine(meta)}`);
    expect(vmParams(src, t, meta, { efidisk0: 'local-lvm:vm-101-disk-1,efitype=4m,size=4M' }).efidisk0).toBeUndefined(); // its EFI vars kept
    expect(vmParams(src, t, meta, null).net0).toBe('e1000,bridge=vmbr1');
  });
  it('rolls back by putting back what pim set: old values, a key the VM lacked deleted; its volumes known', () => {
    const old = {
      name: 'web',
      cores: 1,
      scsi0: 'local-lvm:vm-101-disk-0,size=64M',
      unused0: 'local-lvm:vm-101-disk-3',
      description: 'mine\n',
    };
    expect(restoreForm(old, ['name', 'cores', 'scsi0', 'efidisk0', 'bios', 'description'])).toEqual({
      name: 'web',
      cores: '1',
      scsi0: 'local-lvm:vm-101-disk-0,size=64M',
      description: 'mine\n',
      delete: 'efidisk0,bios',
    });
    expect(restoreForm(old, ['cores'])).toEqual({ cores: '1' });
    expect([...volumesOf(old)]).toEqual(['local-lvm:vm-101-disk-0', 'local-lvm:vm-101-disk-3']);
  });
});

describe('Proxmox as its sources say it behaves', () => {
  it('takes a name as pve_verify_dns_name does: labels of letters, digits and "-", not at either end, joined by dots', () => {
    for (const ok of ['web', 'web-1', 'a', 'web.lab', 'w3b.l4b-x', '1web']) expect(dnsNameProblem(ok)).toBeNull();
    expect(dnsNameProblem('web_1')).toBe('it has "_"');
    expect(dnsNameProblem('web-')).toMatch(/ends with "-"/);
    expect(dnsNameProblem('-web')).toMatch(/starts or ends with "-"/);
    expect(dnsNameProblem('web.-x')).toMatch(/"-"/);
    expect(dnsNameProblem('web.')).toMatch(/"\."/);
    expect(dnsNameProblem('web..x')).toMatch(/empty part/);
    expect(dnsNameProblem('wéb')).not.toBeNull();
  });
  it("counts a task that ended with warnings as done, as pve-common's status_is_error does", () => {
    expect(taskSucceeded('OK')).toBe(true);
    expect(taskSucceeded('WARNINGS: 1')).toBe(true);
    expect(taskSucceeded('WARNINGS: 12')).toBe(true);
    expect(taskSucceeded('WARNINGS: x')).toBe(false);
    expect(taskSucceeded('unexpected status')).toBe(false);
    expect(taskSucceeded("checksum mismatch: got 'a' != expect 'b'")).toBe(false);
  });
  it('reads both forms of qm disk import (qemu-server up to 8.2.6, and from 8.2.7 = PVE 8.3)', () => {
    expect(
      importedVolume(
        "importing disk '/var/tmp/pim/web.qcow2' to VM 101 ...\nSuccessfully imported disk as 'unused0:local-lvm:vm-101-disk-0'\n",
      ),
    ).toBe('local-lvm:vm-101-disk-0');
    expect(
      importedVolume(
        "transferred 64.0 MiB of 64.0 MiB (100.00%)\nunused0: successfully imported disk 'local-lvm:vm-101-disk-0'\n",
      ),
    ).toBe('local-lvm:vm-101-disk-0');
    expect(importedVolume("scsi0: successfully imported disk 'local-lvm:vm-101-disk-0,size=64M'\n")).toBe(
      'local-lvm:vm-101-disk-0',
    );
    expect(importedVolume('something else')).toBeNull();
  });
  it("counts a description's length in code points, as PVE's decoded string", () => {
    expect(descriptionLength('abc')).toBe(3);
    expect(descriptionLength('é€😀')).toBe(3);
  });
  it('knows the privileges of each step, per PVE version, and names what is missing', () => {
    expect(agentPrivs(8)).toEqual(['VM.Monitor']);
    expect(agentPrivs(9)).toEqual(['VM.GuestAgent.Audit', 'VM.GuestAgent.Unrestricted']);
    expect(configPrivs(['name', 'memory', 'cores', 'scsi0', 'boot', 'net0', 'machine'])).toEqual([
      'VM.Config.CPU',
      'VM.Config.Disk',
      'VM.Config.HWType',
      'VM.Config.Memory',
      'VM.Config.Network',
      'VM.Config.Options',
    ]);
    const needs = [
      { path: '/storage/local', privs: ['Datastore.AllocateTemplate'], step: 'the upload' },
      { path: '/vms/101', privs: ['VM.PowerMgmt'], step: 'the start' },
      { path: '/vms/101', privs: ['VM.Monitor'], step: 'the agent ping' },
    ];
    const miss = unmet(needs, { '/storage/local': { 'Datastore.Audit': 1 }, '/vms/101': { 'VM.PowerMgmt': 0 } });
    expect(describeNeeds(miss)).toBe(
      'Datastore.AllocateTemplate on /storage/local (the upload); VM.Monitor on /vms/101 (the agent ping)',
    );
    // a ?path= answer, or the whole tree: the nearest ancestor's propagating privileges
    expect(permsAt({ '/vms/101': { 'VM.Audit': 0 } }, '/vms/101')).toEqual({ 'VM.Audit': 0 });
    expect(permsAt({ '/vms': { 'VM.Audit': 1, 'VM.Allocate': 0 }, '/': { 'Sys.Audit': 1 } }, '/vms/101')).toEqual({
      'VM.Audit': 1,
    });
    expect(permsAt({ '/': { 'Datastore.Audit': 1 } }, '/storage/local')).toEqual({ 'Datastore.Audit': 1 });
    expect(permsAt({}, '/vms')).toEqual({});
    const o = { storage: 'local-lvm', importStorage: 'local', major: 9 };
    expect(privilegesFor('POST', '/nodes/pve1/qemu/101/agent/ping', o)).toBe(
      'VM.GuestAgent.Audit or VM.GuestAgent.Unrestricted on /vms/101',
    );
    expect(privilegesFor('POST', '/nodes/pve1/qemu/101/agent/ping', { ...o, major: 8 })).toBe('VM.Monitor on /vms/101');
    expect(privilegesFor('POST', '/nodes/pve1/storage/local/upload', o)).toBe(
      'Datastore.AllocateTemplate on /storage/local',
    );
    expect(privilegesFor('DELETE', '/nodes/pve1/storage/local/content/local%3Aimport%2Fweb-0.qcow2', o)).toBe(
      'Datastore.Allocate on /storage/local',
    );
    expect(privilegesFor('POST', '/nodes/pve1/qemu/101/status/start', o)).toBe('VM.PowerMgmt on /vms/101');
    expect(privilegesFor('POST', '/nodes/pve1/qemu', o)).toMatch(
      /^VM\.Allocate, VM\.Config\.CPU, .* on \/vms\/VMID \(or the pool\), Datastore\.AllocateSpace on \/storage\/local-lvm/,
    );
  });
});

describe('FIFO streams (the upload on a terminal, the download of a far volume)', () => {
  it('sends a file through a FIFO to a reader, hashing it, and does not hang when the reader fails before opening it', async () => {
    const { mkdtempSync, readFileSync, rmSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { createHash } = await import('node:crypto');
    const { run } = await import('../../lib/core/run.ts');
    const dir = mkdtempSync(join(tmpdir(), 'pimt-'));
    const src = join(dir, 'src');
    const data = Buffer.alloc(20 << 20, 7);
    data.write('pim', 12345);
    writeFileSync(src, data);
    const sha = createHash('sha256').update(data).digest('hex');
    let seen = 0;
    expect(
      await sendThrough(
        src,
        (fifo) => run('cp', [fifo, join(dir, 'out')]),
        (n) => (seen = n),
      ),
    ).toBe(sha);
    expect(seen).toBe(data.length);
    expect(readFileSync(join(dir, 'out')).equals(data)).toBe(true);
    await expect(sendThrough(src, () => Promise.reject(new Error('virsh failed')))).rejects.toThrow('virsh failed');
    expect(await receiveThrough((fifo) => run('cp', [src, fifo]))).toBe(sha);
    rmSync(dir, { recursive: true, force: true });
  });
});
