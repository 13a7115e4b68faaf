/**
 * Deploy targets: targets.d/*.yml, each a mapping of target names to
 * settings that merge over `default`, as profiles and VM definitions do:
 *
 *   lab:  {type: libvirt, uri: "qemu+ssh://root@kvm1/system", pool: pim, virt_type: kvm, network: default}
 *   pve:  {type: proxmox, api: "https://pve1:8006", node: pve1, token_env: PIM_PVE_TOKEN, storage: local-lvm}
 *   box:  {type: ssh, host: me@box}
 *   reg:  {type: oci, ref: registry.example:5000/team/images, creds_env: PIM_REG_CREDS}
 *
 * Secrets come from the environment variables a target names (token_env),
 * never from the file. A missing or wrong setting is 78 at FILE:LINE.
 */
import { loadCatalog, entryNames, resolveEntry, type Catalog, type Resolved } from '../config/catalog.ts';
import { configError } from '../config/tree.ts';
import { EXIT, PimError } from '../core/exit.ts';
import { checkCpus, checkMem } from '../vm/plan.ts';
import { parseRef } from '../oci/ref.ts';

/** 'AB:CD:...' or 'abcd...' -> 64 lowercase hex digits, or null. */
export const normFingerprint = (s: string): string | null => {
  const h = s.replace(/:/g, '').toLowerCase();
  return /^[0-9a-f]{64}$/.test(h) ? h : null;
};

/** How a deploy checks that the new guest is up: the agent's ping, a TCP port, or a line on the serial console. */
export type Health = { kind: 'agent' } | { kind: 'tcp'; port: number } | { kind: 'serial'; marker: string };

interface Common {
  name: string;
  health: Health;
  healthTimeoutS: number;
  shutdownTimeoutS: number;
  /** the build's recorded settings, overridden for this target */
  overrides: { mem?: string; cpus?: number; machine?: string; disk_bus?: string };
  resolved: Resolved;
}

export interface LibvirtTarget extends Common {
  type: 'libvirt';
  uri: string;
  pool: string;
  poolPath: string;
  virtType: 'kvm' | 'qemu';
  /** a libvirt network's name, or "user" (QEMU's user-mode network) */
  network: string;
  bridge: string | null;
}

export interface ProxmoxTarget extends Common {
  type: 'proxmox';
  api: string;
  node: string;
  tokenEnv: string;
  /** where the VM's disk is made (local-lvm) */
  storage: string;
  /** where the image is uploaded as content "import": a file-based storage (default: storage) */
  importStorage: string;
  vmid: number | null;
  /** root@pve1: for PVE before 8.4 (no qcow2 upload as import), the image goes over SSH to qm disk import */
  ssh: string | null;
  /** the sha256 of the API's certificate, 64 hex digits (pinned) */
  fingerprint: string | null;
  insecure: boolean;
  /** the bridge of net0 (vmbr0) */
  bridge: string;
}

export interface SshTarget extends Common {
  type: 'ssh';
  host: string;
  port: number | null;
  identity: string | null;
}

export interface OciTarget extends Common {
  type: 'oci';
  /** the repository the build is pushed to (REGISTRY[:PORT]/REPO); tags are PROFILE-KEY12 and PROFILE */
  ref: import('../oci/ref.ts').OciRef;
  /** plain http or an unverified certificate (a loopback or lab registry) */
  insecure: boolean;
  /** the environment variable holding USER:PASSWORD (else ~/.docker/config.json) */
  credsEnv: string | null;
}

export type Target = LibvirtTarget | ProxmoxTarget | SshTarget | OciTarget;

export const loadTargetCatalog = (): Promise<Catalog> => loadCatalog('targets');

export async function targetNames(): Promise<string[]> {
  return entryNames(await loadTargetCatalog());
}

/** The target `name`, merged over default and checked (66 when there is none, 78 when it is wrong). */
export async function loadTarget(name: string, cat?: Catalog): Promise<Target> {
  const c = cat ?? (await loadTargetCatalog());
  if (name === 'default')
    throw new PimError(
      EXIT.USAGE,
      'default is what every target merges over, not a target; name one of pim-deploy targets',
    );
  return target(resolveEntry(c, name));
}

/** A target's raw values, and how to read them: `need` (a string, 78 without it), `wrap` (a check's 64 made 78 at the key). */
interface TargetReader {
  r: Resolved;
  v: Resolved['value'];
  where: (k: string) => string;
  need: (k: string) => string;
  wrap: <T>(k: string, f: () => T) => T;
}

function targetReader(r: Resolved): TargetReader {
  const v = r.value;
  const where = (k: string) => r.origins[k] ?? `deploy target "${r.name}"`;
  const need = (k: string): string => {
    const s = v[k];
    if (typeof s !== 'string' || !s)
      throw configError(
        where(k === 'type' ? k : 'type'),
        `deploy target "${r.name}" needs ${k}: (see targets.d/default.yml)`,
      );
    return s;
  };
  const wrap = <T>(k: string, f: () => T): T => {
    try {
      return f();
    } catch (e) {
      throw e instanceof PimError ? configError(where(k), e.message) : e;
    }
  };
  return { r, v, where, need, wrap };
}

export function target(r: Resolved): Target {
  const rd = targetReader(r);
  const { v, where, need, wrap } = rd;
  const common: Common = {
    name: r.name,
    health: wrap('health', () => parseHealth(typeof v.health === 'string' ? v.health : 'agent')),
    healthTimeoutS: (v.health_timeout as number | undefined) ?? 120,
    shutdownTimeoutS: (v.shutdown_timeout as number | undefined) ?? 60,
    overrides: {
      mem: v.mem === undefined ? undefined : wrap('mem', () => checkMem(v.mem as string | number, 'mem')),
      cpus: v.cpus === undefined ? undefined : wrap('cpus', () => checkCpus(v.cpus as number, 'cpus')),
      machine: v.machine as string | undefined,
      disk_bus: v.disk_bus as string | undefined,
    },
    resolved: r,
  };
  const type = need('type');
  if (type === 'libvirt') return libvirtTarget(rd, common);
  if (type === 'proxmox') return proxmoxTarget(rd, common);
  if (type === 'oci') return ociTarget(rd, common);
  if (type !== 'ssh')
    throw configError(
      where('type'),
      `deploy target "${r.name}": type must be libvirt, proxmox, ssh or oci, not ${JSON.stringify(type)}`,
    );
  return {
    ...common,
    type: 'ssh',
    host: need('host'),
    port: (v.port as number | undefined) ?? null,
    identity: (v.identity as string | undefined) ?? null,
  };
}

function libvirtTarget({ v, where }: TargetReader, common: Common): LibvirtTarget {
  const type = 'libvirt';
  const pool = typeof v.pool === 'string' ? v.pool : 'pim';
  if (!/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(pool))
    throw configError(
      where('pool'),
      `pool ${JSON.stringify(pool)} is not a pool name (letters, digits, ".", "_", "-")`,
    );
  return {
    ...common,
    type,
    uri: typeof v.uri === 'string' ? v.uri : 'qemu:///system',
    pool,
    poolPath: typeof v.pool_path === 'string' ? v.pool_path : `/var/lib/libvirt/images/${pool}`,
    virtType: v.virt_type === 'qemu' ? 'qemu' : 'kvm',
    network: typeof v.network === 'string' ? v.network : 'default',
    bridge: typeof v.bridge === 'string' ? v.bridge : null,
  };
}

function proxmoxTarget({ r, v, where, need }: TargetReader, common: Common): ProxmoxTarget {
  const type = 'proxmox';
  const tokenEnv = need('token_env');
  const api = need('api').replace(/\/+$/, '');
  if (!/^https:\/\/[^/]+$/.test(api))
    throw configError(
      where('api'),
      `api must be the https:// address of a PVE node, such as https://pve1:8006, not ${JSON.stringify(api)}`,
    );
  if (common.health.kind !== 'agent')
    throw configError(
      where('health'),
      `deploy target "${r.name}": on Proxmox the health check is the guest agent's ping (health: agent)`,
    );
  const fp = v.fingerprint === undefined ? null : normFingerprint(String(v.fingerprint));
  if (v.fingerprint !== undefined && !fp)
    throw configError(
      where('fingerprint'),
      'fingerprint must be the sha256 of the certificate, 64 hex digits (pvenode cert info shows it as AA:BB:...)',
    );
  const storage = need('storage');
  return {
    ...common,
    type,
    api,
    node: need('node'),
    tokenEnv,
    storage,
    importStorage: typeof v.import_storage === 'string' ? v.import_storage : storage,
    vmid: (v.vmid as number | undefined) ?? null,
    ssh: (v.ssh as string | undefined) ?? null,
    fingerprint: fp,
    insecure: v.insecure === true,
    bridge: typeof v.bridge === 'string' ? v.bridge : 'vmbr0',
  };
}

function ociTarget({ v, where, need, wrap }: TargetReader, common: Common): OciTarget {
  const type = 'oci';
  const ref = wrap('ref', () => parseRef(need('ref'), { what: 'ref', code: EXIT.CONFIG, repoOnly: true }));
  const credsEnv = typeof v.creds_env === 'string' ? v.creds_env : null;
  if (credsEnv !== null && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(credsEnv))
    throw configError(
      where('creds_env'),
      `creds_env names an environment variable (such as PIM_REG_CREDS), not ${JSON.stringify(credsEnv)}`,
    );
  return { ...common, type, ref, insecure: v.insecure === true, credsEnv };
}

/** health: agent | tcp:PORT | serial:TEXT (64-style message, made 78 at the key by the caller). */
export function parseHealth(s: string): Health {
  if (s === 'agent') return { kind: 'agent' };
  const tcp = /^tcp:(\d+)$/.exec(s);
  if (tcp && Number(tcp[1]) >= 1 && Number(tcp[1]) <= 65535) return { kind: 'tcp', port: Number(tcp[1]) };
  if (s.startsWith('serial:') && s.length > 7) return { kind: 'serial', marker: s.slice(7) };
  throw new PimError(EXIT.CONFIG, `health must be agent, tcp:PORT or serial:TEXT, not ${JSON.stringify(s)}`);
}
