/**
 * What Proxmox VE itself checks, checked by pim before it sends a multi-gigabyte
 * image, each rule taken from PVE's own sources (the commit named beside it):
 *
 * - a VM's name is a DNS name: pve-common src/PVE/JSONSchema.pm pve_verify_dns_name
 *   (labels of letters, digits and '-', neither starting nor ending with '-', joined by '.');
 * - a description holds at most 8192 characters: qemu-server PVE/QemuServer.pm
 *   (description: maxLength => 1024 * 8), counted as Perl counts a decoded string
 *   (pve-http-server decodes form values as UTF-8): in code points;
 * - a task that ended with warnings worked: pve-common src/PVE/UPID.pm status_is_error
 *   (PVE::Tools::upid_status_is_error before 9.0): OK and "WARNINGS: N" are success;
 * - `qm disk import` says which volume it made in two ways: "Successfully imported disk as
 *   'unused0:local-lvm:vm-101-disk-0'" up to qemu-server 8.2.6, "unused0: successfully
 *   imported disk 'local-lvm:vm-101-disk-0'" from 8.2.7 (PVE 8.3, commit 60d7d9c7);
 * - the privileges each API call needs: qemu-server PVE/API2/Qemu.pm (create_vm: VM.Allocate;
 *   $check_vm_modify_config_perm: VM.Config.* per key; vm_start/vm_stop/vm_shutdown:
 *   VM.PowerMgmt; $check_storage_access: Datastore.AllocateSpace for a new disk, and
 *   pve-storage check_volume_access: Datastore.Audit or Datastore.AllocateSpace to read an
 *   import volume), PVE/API2/Qemu/Agent.pm (ping: VM.Monitor; from qemu-server 9.0, commit
 *   b92a40ce, VM.GuestAgent.Audit or VM.GuestAgent.Unrestricted), pve-storage src/PVE/API2/Storage/Status.pm (upload:
 *   Datastore.AllocateTemplate) and Content.pm (delete: Datastore.Allocate).
 */

/** Why PVE would refuse `name` as a VM's name (pve_verify_dns_name), or null. */
export function dnsNameProblem(name: string): string | null {
  const label = '[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?';
  if (new RegExp(`^(${label}\\.)*${label}$`).test(name)) return null;
  if (name.includes('_')) return 'it has "_"';
  if (/(^|\.)-|-($|\.)/.test(name)) return 'a part of it starts or ends with "-"';
  if (/^\.|\.$|\.\./.test(name)) return 'it starts or ends with "." or has an empty part';
  return 'it is not a DNS name';
}

/** qemu-server's maxLength of a VM's description. */
export const DESCRIPTION_MAX = 8192;

/** A description's length as PVE counts it (code points of the decoded string). */
export const descriptionLength = (s: string) => [...s].length;

/** A task's exit status that means it worked: OK, or WARNINGS: N (pve-common status_is_error). */
export const taskSucceeded = (exit: string) => exit === 'OK' || /^WARNINGS: \d+$/.test(exit);

/** The volume `qm disk import` says it made, in either form qemu-server prints, or null. */
export function importedVolume(out: string): string | null {
  const older = /Successfully imported disk as '(?:unused\d+:)?([^']+)'/.exec(out)?.[1];
  const newer = /^\w+: successfully imported disk '([^',]+)[^']*'/m.exec(out)?.[1];
  return newer ?? older ?? null;
}

/** A privilege a step needs on an ACL path; any one of `privs` is enough. */
export interface Need {
  path: string;
  privs: string[];
  step: string;
}

/** The privileges of a token per path, as GET /access/permissions?path=P answers: {P: {PRIV: 0|1}}. */
export type Perms = Record<string, Record<string, number>>;

/** The privileges any one of which lets a token ping the agent: VM.Monitor up to PVE 8; from 9 VM.GuestAgent.Audit (or VM.GuestAgent.Unrestricted). */
export const agentPrivs = (major: number) =>
  major >= 9 ? ['VM.GuestAgent.Audit', 'VM.GuestAgent.Unrestricted'] : ['VM.Monitor'];

/** The config keys pim sets, by the privilege qemu-server checks for each. */
const KEY_PRIV: Record<string, string> = {
  name: 'VM.Config.Options',
  bios: 'VM.Config.Options',
  agent: 'VM.Config.Options',
  ostype: 'VM.Config.Options',
  description: 'VM.Config.Options',
  memory: 'VM.Config.Memory',
  cores: 'VM.Config.CPU',
  machine: 'VM.Config.HWType',
  scsihw: 'VM.Config.HWType',
  boot: 'VM.Config.Disk',
  net0: 'VM.Config.Network',
};

/** The VM privileges for setting `keys` (disks: VM.Config.Disk). */
export function configPrivs(keys: string[]): string[] {
  return [...new Set(keys.map((k) => KEY_PRIV[k] ?? 'VM.Config.Disk'))].sort();
}

/**
 * The privileges at `path` from an answer of /access/permissions: the path's own entry (what
 * PVE answers when asked with ?path=), else, in an answer of the whole tree, the nearest
 * ancestor's privileges that propagate (1).
 */
export function permsAt(answer: Perms | null | undefined, path: string): Record<string, number> {
  if (!answer || typeof answer !== 'object') return {};
  if (answer[path]) return answer[path]!;
  for (let p = path; p.includes('/'); ) {
    p = p.slice(0, p.lastIndexOf('/')) || '/';
    const at = answer[p];
    if (at) return Object.fromEntries(Object.entries(at).filter(([, v]) => Number(v) === 1));
    if (p === '/') break;
  }
  return {};
}

/** The needs that `perms` does not meet, one per (path, privs). */
export function unmet(needs: Need[], perms: Perms): Need[] {
  return needs.filter((n) => !n.privs.some((p) => perms[n.path]?.[p] !== undefined));
}

/** "VM.Allocate on /vms/101 (creating the VM), ...": what to grant, grouped by path. */
export function describeNeeds(needs: Need[]): string {
  const byPath = new Map<string, Need[]>();
  for (const n of needs) byPath.set(n.path, [...(byPath.get(n.path) ?? []), n]);
  return [...byPath]
    .map(
      ([path, ns]) =>
        `${[...new Set(ns.map((n) => n.privs.join(' or ')))].join(', ')} on ${path} (${[...new Set(ns.map((n) => n.step))].join(', ')})`,
    )
    .join('; ');
}

/**
 * The privileges one API request of pim's needs, for a 403's hint: what qemu-server and
 * pve-storage check for that method and path. `major` is PVE's major version.
 */
export function privilegesFor(
  method: string,
  path: string,
  o: { storage: string; importStorage: string; major: number },
): string {
  const p = path.split('?')[0]!;
  let m: RegExpExecArray | null;
  if ((m = /^\/nodes\/[^/]+\/storage\/([^/]+)\/upload$/.exec(p)))
    return `Datastore.AllocateTemplate on /storage/${decodeURIComponent(m[1]!)}`;
  if ((m = /^\/nodes\/[^/]+\/storage\/([^/]+)\/content\/./.exec(p)) && method === 'DELETE')
    return `Datastore.Allocate on /storage/${decodeURIComponent(m[1]!)}`;
  if ((m = /^\/nodes\/[^/]+\/storage\/([^/]+)\/content$/.exec(p)))
    return `Datastore.Audit or Datastore.AllocateSpace on /storage/${decodeURIComponent(m[1]!)}`;
  if (/^\/nodes\/[^/]+\/storage$/.test(p))
    return `Datastore.Audit or Datastore.AllocateSpace on /storage/${o.importStorage}`;
  const disk = `Datastore.AllocateSpace on /storage/${o.storage} and Datastore.Audit on /storage/${o.importStorage}`;
  const cfg = configPrivs(Object.keys(KEY_PRIV).concat('scsi0')).join(', ');
  if (/^\/nodes\/[^/]+\/qemu$/.test(p) && method === 'POST')
    return `VM.Allocate, ${cfg} on /vms/VMID (or the pool), ${disk}`;
  if (/^\/nodes\/[^/]+\/qemu$/.test(p)) return 'VM.Audit on /vms';
  if ((m = /^\/nodes\/[^/]+\/qemu\/(\d+)\/config$/.exec(p)))
    return method === 'GET' ? `VM.Audit on /vms/${m[1]}` : `${cfg} on /vms/${m[1]}, ${disk}`;
  if ((m = /^\/nodes\/[^/]+\/qemu\/(\d+)\/status\//.exec(p))) return `VM.PowerMgmt on /vms/${m[1]}`;
  if ((m = /^\/nodes\/[^/]+\/qemu\/(\d+)\/agent\//.exec(p)))
    return `${agentPrivs(o.major).join(' or ')} on /vms/${m[1]}`;
  if ((m = /^\/nodes\/[^/]+\/qemu\/(\d+)$/.exec(p)) && method === 'DELETE') return `VM.Allocate on /vms/${m[1]}`;
  if ((m = /^\/nodes\/([^/]+)\/tasks\//.exec(p)))
    return `Sys.Audit on /nodes/${m[1]} (or run the task as the token itself)`;
  return 'the privilege PVE names';
}
