/**
 * A libvirt domain's XML, made from a build's recorded settings (memory,
 * CPUs, machine, firmware and EFI vars, disk bus, network: what pim-run
 * boots it with, lib/image/registry.ts) with the target's overrides on top;
 * no virt-install. An existing domain keeps its UUID. pim's own record (build
 * id, cache key, profile, volume, image sha256) goes in <metadata>, which is
 * what `pim-deploy list` reads back and what tells a re-deploy of the same
 * build that there is nothing to do.
 */
import type { BuildRecord } from '../image/registry.ts';
import type { LibvirtTarget } from './targets.ts';
import type { DeployMeta } from './source.ts';

/** pim's namespace in a domain's <metadata>. */
export const META_NS = 'urn:pim:deploy:1';

export type { DeployMeta };

export interface DomainSpec {
  name: string;
  uuid: string | null;
  target: LibvirtTarget;
  build: BuildRecord;
  volume: string;
  /** the far side's path of the volume with the UEFI vars (a UEFI build) */
  nvram: string | null;
  meta: DeployMeta;
  /** where the serial console is logged, for a serial health check */
  serialLog: string | null;
}

export const xmlEscape = (s: string) =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
const xmlUnescape = (s: string) =>
  s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&apos;/g, "'")
    .replace(/&quot;/g, '"')
    .replace(/&amp;/g, '&');

/** 512M, 2G, 1048576 (bytes... as QEMU's -m takes MiB when there is no unit) -> KiB. */
export function memKiB(mem: string): number {
  const m = /^(\d+)([KMGT]?)$/i.exec(mem);
  if (!m) throw new Error(`bad memory size ${mem}`);
  const n = Number(m[1]);
  switch ((m[2] || 'M').toUpperCase()) {
    case 'K':
      return n;
    case 'M':
      return n * 1024;
    case 'G':
      return n * 1024 * 1024;
    default:
      return n * 1024 * 1024 * 1024;
  }
}

const DISK: Record<string, { dev: string; bus: string }> = {
  virtio: { dev: 'vda', bus: 'virtio' },
  sata: { dev: 'sda', bus: 'sata' },
  scsi: { dev: 'sda', bus: 'scsi' },
  ide: { dev: 'hda', bus: 'ide' },
};

/** QEMU's device name (the build's `net`) -> libvirt's interface model. */
const netModel = (net: string) =>
  net === 'virtio-net' || net === 'virtio-net-pci' || net === 'virtio' ? 'virtio' : net;

export function domainXml(d: DomainSpec): string {
  const s = d.build.settings;
  const o = d.target.overrides;
  const mem = memKiB(o.mem ?? s.mem);
  const cpus = o.cpus ?? s.cpus;
  const machine = o.machine ?? s.machine ?? 'q35';
  const disk = DISK[o.disk_bus ?? s.disk_bus] ?? DISK.virtio!;
  const t = d.target;
  const uefi = s.firmware === 'uefi';
  const m = d.meta;
  const iface =
    t.bridge !== null
      ? `<interface type='bridge'><source bridge='${xmlEscape(t.bridge)}'/>`
      : t.network === 'user'
        ? `<interface type='user'>`
        : `<interface type='network'><source network='${xmlEscape(t.network)}'/>`;
  return [
    `<domain type='${t.virtType}'>`,
    `  <name>${xmlEscape(d.name)}</name>`,
    ...(d.uuid ? [`  <uuid>${xmlEscape(d.uuid)}</uuid>`] : []),
    `  <metadata>`,
    `    <pim:deploy xmlns:pim='${META_NS}' build='${xmlEscape(m.build)}' key='${xmlEscape(m.key)}' profile='${xmlEscape(m.profile)}' volume='${xmlEscape(m.volume)}' sha256='${m.sha256}'/>`,
    `  </metadata>`,
    `  <memory unit='KiB'>${mem}</memory>`,
    `  <vcpu>${cpus}</vcpu>`,
    uefi ? `  <os firmware='efi'>` : `  <os>`,
    `    <type arch='x86_64' machine='${xmlEscape(machine)}'>hvm</type>`,
    ...(uefi && d.nvram ? [`    <nvram>${xmlEscape(d.nvram)}</nvram>`] : []),
    `    <boot dev='hd'/>`,
    `  </os>`,
    `  <features><acpi/><apic/></features>`,
    ...(t.virtType === 'kvm' ? [`  <cpu mode='host-passthrough'/>`] : []),
    `  <on_poweroff>destroy</on_poweroff>`,
    `  <on_reboot>restart</on_reboot>`,
    `  <on_crash>destroy</on_crash>`,
    `  <devices>`,
    `    <disk type='volume' device='disk'>`,
    `      <driver name='qemu' type='${d.build.disk.format}'/>`,
    `      <source pool='${xmlEscape(t.pool)}' volume='${xmlEscape(d.volume)}'/>`,
    `      <target dev='${disk.dev}' bus='${disk.bus}'/>`,
    `    </disk>`,
    ...(disk.bus === 'scsi' ? [`    <controller type='scsi' model='virtio-scsi'/>`] : []),
    `    ${iface}<model type='${xmlEscape(netModel(s.net))}'/></interface>`,
    `    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`,
    d.serialLog
      ? `    <serial type='pty'><log file='${xmlEscape(d.serialLog)}' append='off'/></serial>`
      : `    <serial type='pty'/>`,
    `    <console type='pty'/>`,
    `    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>`,
    `  </devices>`,
    `</domain>`,
    '',
  ].join('\n');
}

/** The UUID of a domain's XML. */
export const uuidOf = (xml: string): string | null => /<uuid>([0-9a-f-]{36})<\/uuid>/i.exec(xml)?.[1] ?? null;

/** pim's record in a domain's XML (as virsh dumpxml prints it), or null for a domain pim did not deploy. */
export function metaOf(xml: string): DeployMeta | null {
  const prefix = /xmlns:(\w+)=["']urn:pim:deploy:1["']/.exec(xml)?.[1];
  const el = prefix ? new RegExp(`<${prefix}:deploy\\s([^>]*?)/?>`).exec(xml) : null;
  if (!el) return null;
  const attrs: Record<string, string> = {};
  for (const a of el[1]!.matchAll(/(\w+)=(["'])(.*?)\2/g)) attrs[a[1]!] = xmlUnescape(a[3]!);
  if (!attrs.build || !attrs.volume || !attrs.sha256) return null;
  return {
    build: attrs.build,
    key: attrs.key ?? '',
    profile: attrs.profile ?? '',
    volume: attrs.volume,
    sha256: attrs.sha256,
  };
}

/** The volumes (pool/volume) and file paths a domain's XML uses. */
export function disksOf(xml: string): { volumes: string[]; files: string[] } {
  const volumes = [...xml.matchAll(/<source pool=["']([^"']+)["'] volume=["']([^"']+)["']/g)].map(
    (m) => `${xmlUnescape(m[1]!)}/${xmlUnescape(m[2]!)}`,
  );
  const files = [
    ...xml.matchAll(/<source file=["']([^"']+)["']/g),
    ...xml.matchAll(/<nvram[^>]*>([^<]+)<\/nvram>/g),
  ].map((m) => xmlUnescape(m[1]!));
  return { volumes, files };
}
