/**
 * What a build of a profile is made of, and its cache key.
 *
 * The key is a sha256 over the content of every input: the merged profile,
 * the answer files as rendered for the build (pim's per-build SSH key left
 * out, the server's URL a fixed placeholder), every scripts.d, installs.d and sources.d
 * file the build uses, the ISO's checksum, the disk's size and format, the
 * firmware, and pim's own recipe version. The same inputs always give the
 * same key, so a build is never made twice; `pim-build show` lists them, so a
 * user can see why a build missed.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { EXIT, PimError } from '../core/exit.ts';
import type { Resolved } from '../config/catalog.ts';
import * as cfg from '../config/profile.ts';
import { BUILD_RECIPE, type BuildInputs } from '../image/registry.ts';
import { checkCpus, checkMem } from '../vm/plan.ts';
import { LAYOUTS, checkIsoPath, type Layout } from './iso-boot.ts';

export interface BuildFile {
  /** "scripts.d/dev.sh" */
  label: string;
  /** the file's name within its subdir */
  name: string;
  content: string;
}

export interface BuildPlan {
  name: string;
  profile: Resolved;
  builder: 'installer' | 'cloud-init';
  layout: Layout;
  /** the catalog entry the build starts from: the installer ISO, or (cloud-init) the base image ("" with from:) */
  iso: string;
  /** from: PROFILE: the build starts from that profile's build (its install stage), not from an ISO */
  from: string | null;
  boot: { kernel: string; initrd: string; append: string; inject: boolean };
  disk: { size: string; format: 'qcow2' | 'raw' };
  firmware: 'bios' | 'uefi';
  mem: string;
  cpus: number;
  timeoutMs: number;
  sshUser: string;
  keepKey: boolean;
  /** generalize the guest at the end of the build (machine-id, host keys, cloud-init state, logs, fstrim): `generalize`, default true */
  generalize: boolean;
  /** store the image compressed (qemu-img convert -c; qcow2 only): `compress`, default false */
  compress: boolean;
  /** provisioning scripts, in order */
  scripts: BuildFile[];
  /** late-command files the installer may fetch */
  installs: BuildFile[];
  /** builder: cloud-init: sources.d files put on the seed, as bytes */
  sources: Array<Omit<BuildFile, 'content'> & { content: Buffer }>;
}

/** The server URL the answer files are rendered with for the key: the port changes from build to build, the key must not. */
export const KEY_URL = 'http://10.0.2.2:0';

const where = (p: Resolved, key: string) => p.origins[key] ?? `profile "${p.name}"`;

/** A disk size as qemu-img takes it: 8G, 512M, 20000000000. */
function checkSize(p: Resolved, v: unknown): string {
  const s = String(v ?? '8G');
  if (!/^\d+(\.\d+)?[KMGT]?$/i.test(s))
    throw new PimError(
      EXIT.CONFIG,
      `${where(p, 'disk_size')}: disk_size must be a size such as 8G or 20G, not ${JSON.stringify(s)}`,
    );
  return s.toUpperCase();
}

/** Read the profile's build settings (defaults filled in) and the files it uses. */
export async function planBuild(profile: Resolved, opts: { timeoutS?: number } = {}): Promise<BuildPlan> {
  const v = profile.value as Record<string, unknown>;
  const layout: Layout = v.distro === 'ubuntu' ? 'ubuntu' : 'debian';
  const builder = v.builder === 'cloud-init' ? 'cloud-init' : 'installer';
  const srcKey = builder === 'cloud-init' ? 'image' : 'iso';
  const from = checkFrom(profile);
  const src = from ? '' : v[srcKey];
  if (!from && (typeof src !== 'string' || !src)) {
    throw new PimError(
      EXIT.CONFIG,
      builder === 'cloud-init'
        ? `${where(profile, 'builder')}: profile "${profile.name}" (builder: cloud-init) names no image; set image: to an entry of pim-iso list with kind: image`
        : `${where(profile, 'iso')}: profile "${profile.name}" names no iso; set iso: to an entry of pim-iso list`,
    );
  }
  const bootIn = (v.boot ?? {}) as { kernel?: string; initrd?: string; append?: string; inject?: boolean };
  const boot = {
    kernel: checkIsoPath(bootIn.kernel ?? LAYOUTS[layout].kernel, `${where(profile, 'boot.kernel')}: boot.kernel`),
    initrd: checkIsoPath(bootIn.initrd ?? LAYOUTS[layout].initrd, `${where(profile, 'boot.initrd')}: boot.initrd`),
    append: bootIn.append ?? '',
    inject: bootIn.inject === true,
  };
  if (boot.inject && layout !== 'debian')
    throw new PimError(
      EXIT.CONFIG,
      `${where(profile, 'boot.inject')}: boot.inject puts preseed.cfg into a Debian installer's initrd; Ubuntu's reads its answers from the network`,
    );
  const { mem, cpus } = vmSettings(profile);
  const timeoutS = opts.timeoutS ?? (typeof v.timeout === 'number' ? v.timeout : 3600);
  if (!(timeoutS > 0))
    throw new PimError(EXIT.CONFIG, `${where(profile, 'timeout')}: timeout must be a positive number of seconds`);
  const sshUser = String(v.ssh_user ?? v.username ?? 'root');
  if (!/^[a-z_][a-z0-9_-]*$/i.test(sshUser))
    throw new PimError(
      EXIT.CONFIG,
      `${where(profile, 'ssh_user')}: ssh_user ${JSON.stringify(sshUser)} is not a user name`,
    );

  const { scripts, installs, sources } = await planFiles(profile, from ? 'installer' : builder, from);
  return {
    name: profile.name,
    profile,
    builder: from ? 'installer' : builder,
    layout,
    iso: src as string,
    from,
    boot,
    ...diskSettings(profile),
    mem,
    cpus,
    timeoutMs: Math.round(timeoutS * 1000),
    sshUser,
    keepKey: v.keep_build_key === true,
    generalize: v.generalize !== false,
    compress: checkCompress(profile),
    scripts,
    installs,
    sources,
  };
}

/** The files a build uses: its scripts, (an installer) its late commands, (cloud-init) its seed's sources; 78 for one missing. */
async function planFiles(
  profile: Resolved,
  builder: BuildPlan['builder'],
  from: string | null,
): Promise<Pick<BuildPlan, 'scripts' | 'installs' | 'sources'>> {
  const v = profile.value as Record<string, unknown>;
  const read = (f: { path: string | null; label: string; name: string }): BuildFile => ({
    label: f.label.replace(/^builtin:/, ''),
    name: f.name,
    content: cfg.readFound(f),
  });
  const scripts: BuildFile[] = [];
  const listed = Array.isArray(v.scripts) ? (v.scripts as string[]) : [];
  if (listed.length) {
    for (const n of listed) {
      const f = cfg.namedFile('scripts.d', n);
      if (!f) throw new PimError(EXIT.CONFIG, `${where(profile, 'scripts')}: scripts: scripts.d/${n} does not exist`);
      scripts.push(read(f));
    }
  } else {
    const f = cfg.profileFile('scripts.d', profile.name, '.sh');
    if (f) scripts.push(read(f));
  }
  // late commands are an installer's: a cloud image has none to fetch
  const installs: BuildFile[] = [];
  const named = builder === 'installer' && !from ? cfg.profileFile('installs.d', profile.name, '.sh') : null;
  if (named) installs.push(read(named));
  for (const n of builder === 'installer' && !from && Array.isArray(v.installs) ? (v.installs as string[]) : []) {
    const f = cfg.namedFile('installs.d', n);
    if (!f) throw new PimError(EXIT.CONFIG, `${where(profile, 'installs')}: installs: installs.d/${n} does not exist`);
    if (!installs.some((i) => i.label === f.label.replace(/^builtin:/, ''))) installs.push(read(f));
  }
  const sources: BuildPlan['sources'] = [];
  for (const n of builder === 'cloud-init' && Array.isArray(v.sources) ? (v.sources as string[]) : []) {
    if (n === 'user-data' || n === 'meta-data')
      throw new PimError(
        EXIT.CONFIG,
        `${where(profile, 'sources')}: sources: ${n} comes from the profile's ${n} template in preseeds.d, not from sources.d`,
      );
    const f = cfg.namedFile('sources.d', n);
    if (!f) throw new PimError(EXIT.CONFIG, `${where(profile, 'sources')}: sources: sources.d/${n} does not exist`);
    sources.push({
      label: f.label.replace(/^builtin:/, ''),
      name: f.name,
      content: f.path === null ? Buffer.from(cfg.readFound(f)) : readFileSync(f.path),
    });
  }
  return { scripts, installs, sources };
}

/** from: PROFILE, a profile name (78 at FILE:LINE), or null. */
function checkFrom(p: Resolved): string | null {
  const f = p.value.from;
  if (f === undefined || f === null) return null;
  if (typeof f !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(f))
    throw new PimError(EXIT.CONFIG, `${where(p, 'from')}: from: names a profile, not ${JSON.stringify(f)}`);
  if (f === p.name) throw new PimError(EXIT.CONFIG, `${where(p, 'from')}: from: ${f} is the profile itself (a cycle)`);
  return f;
}

/** compress: true needs a qcow2 disk (78 at FILE:LINE). */
function checkCompress(p: Resolved): boolean {
  if (p.value.compress !== true) return false;
  if (p.value.disk_format === 'raw')
    throw new PimError(
      EXIT.CONFIG,
      `${where(p, 'compress')}: compress: true needs disk_format: qcow2 (a raw image cannot be compressed)`,
    );
  return true;
}

/** The disk a build makes (size checked: 78 at FILE:LINE, and format) and its firmware. */
export function diskSettings(profile: Resolved): Pick<BuildPlan, 'disk' | 'firmware'> {
  const v = profile.value;
  return {
    disk: { size: checkSize(profile, v.disk_size), format: v.disk_format === 'raw' ? 'raw' : 'qcow2' },
    firmware: v.firmware === 'uefi' ? 'uefi' : 'bios',
  };
}

/** The memory and CPUs a build's VM gets, and pim-run boots it with: the profile's, checked (78 at FILE:LINE). */
export function vmSettings(profile: Resolved): { mem: string; cpus: number } {
  const v = profile.value;
  return {
    mem: wrap(profile, 'mem', () => checkMem((v.mem as string | number | undefined) ?? '1G', 'mem')),
    cpus: wrap(profile, 'cpus', () => checkCpus((v.cpus as number | undefined) ?? 2, 'cpus')),
  };
}

function wrap<T>(p: Resolved, key: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof PimError) throw new PimError(EXIT.CONFIG, `${where(p, key)}: ${e.message}`);
    throw e;
  }
}

const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

/** JSON with object keys sorted, so equal values hash equally. */
export function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v ?? null);
}

/** The inputs of a build, given its rendered answer files (route -> text) and its ISO's checksum. */
export function buildInputs(
  plan: BuildPlan,
  answers: Record<string, string>,
  iso: { name: string; checksum: string },
): BuildInputs {
  const files: Record<string, string> = {};
  for (const f of [...plan.scripts, ...plan.installs, ...plan.sources]) files[f.label] = sha256(f.content);
  const hashed: Record<string, string> = {};
  for (const [route, text] of Object.entries(answers)) hashed[route] = sha256(text);
  const common = {
    recipe: BUILD_RECIPE,
    profile: plan.profile.value as Record<string, unknown>,
    answers: hashed,
    files,
    iso,
    disk: plan.disk,
    firmware: plan.firmware,
  };
  // an installer's inputs have no builder key: the keys of builds made before other builders stay the same
  return plan.builder === 'cloud-init'
    ? { ...common, builder: 'cloud-init', boot: null }
    : { ...common, boot: plan.boot };
}

export const buildKey = (inputs: BuildInputs): string => sha256(canonical(inputs));

/** What differs between two builds' inputs: dotted paths. */
export function inputsDiff(a: BuildInputs, b: BuildInputs): string[] {
  const out: string[] = [];
  const walk = (x: unknown, y: unknown, path: string) => {
    if (canonical(x) === canonical(y)) return;
    if (x && y && typeof x === 'object' && typeof y === 'object' && !Array.isArray(x) && !Array.isArray(y)) {
      for (const k of new Set([...Object.keys(x), ...Object.keys(y)]))
        walk((x as Record<string, unknown>)[k], (y as Record<string, unknown>)[k], path ? `${path}.${k}` : k);
    } else out.push(path);
  };
  walk(a, b, '');
  return out;
}
