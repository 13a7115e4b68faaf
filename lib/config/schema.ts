/**
 * The schemas of pim's config files, and the one checker for them. A wrong
 * type or value is a config error (exit 78) at FILE:LINE of the key. Unknown
 * keys are refused in strict mappings (pim.yml, ISO entries, a profile's
 * `boot`) and kept in profiles, whose templates may use them.
 */
import { isPlainObject, type Plain } from './merge.ts';
import { configError } from './tree.ts';

/** A type a value must have. */
export type Ty =
  | 'string'
  | 'number'
  | 'boolean'
  | 'string|number'
  /** a string, or null to unset what a profile below set */
  | 'string|null'
  | 'string[]'
  | 'object'
  /** a finite number above 0 */
  | 'positive'
  | { enum: readonly string[] }
  | { mapping: Schema; strict?: boolean };
export type Schema = { [k: string]: Ty };

export const oneOf = (...values: string[]): Ty => ({ enum: values });
/** A nested mapping; `strict` refuses unknown keys in it whatever the file's kind. */
export const mapping = (keys: Schema, strict?: boolean): Ty => ({ mapping: keys, strict });

export const PROFILE_SCHEMA: Schema = {
  distro: 'string',
  iso: 'string',
  hostname: 'string',
  domain: 'string',
  locale: 'string',
  keyboard: 'string',
  timezone: 'string',
  username: 'string',
  fullname: 'string',
  /** a plain password: pim hashes it (lib/config/answers.ts) before any template sees it; null or absent: no password, key login only */
  password: 'string|null',
  /** a crypt(3) hash (openssl passwd -6); null or absent: no password */
  password_hash: 'string|null',
  mirror: 'string',
  packages: 'string[]',
  ssh_keys: 'string[]',
  installs: 'string[]',
  scripts: 'string[]',
  preseed: 'string',
  user_data: 'string',
  mem: 'string|number',
  cpus: 'number',
  disk_size: 'string|number',
  vars: 'object',
  // for pim-build
  /** the user pim-build logs in as over SSH (pim-build defaults it to `username`) */
  ssh_user: 'string',
  firmware: oneOf('bios', 'uefi'),
  /** direct kernel boot of the installer: its kernel, initrd and command line; inject: add the answer file to the initrd */
  boot: mapping({ kernel: 'string', initrd: 'string', append: 'string', inject: 'boolean' }, true),
  /** seconds the install may take */
  timeout: 'positive',
  disk_format: oneOf('qcow2', 'raw'),
  /** keep the per-build SSH key in the image's authorized_keys */
  keep_build_key: 'boolean',
  /** pim-build generalizes the guest at the end of every build (machine-id, host keys, cloud-init state, logs, fstrim); false keeps them */
  generalize: 'boolean',
  /** pim-build stores the image compressed (qemu-img convert -c; qcow2) */
  compress: 'boolean',
  /**
   * how pim-build makes the image: installer (from iso, the default), raw (an
   * empty disk of disk_size) or cloud-init (a copy of the catalog's `kind:
   * image` entry named by image, set up by cloud-init from a NoCloud seed)
   */
  builder: oneOf('installer', 'raw', 'cloud-init'),
  /** builder: cloud-init: the base image, an isos.d entry with kind: image */
  image: 'string',
  /** builder: cloud-init: more files (in sources.d) put on the NoCloud seed beside user-data and meta-data */
  sources: 'string[]',
  /** builder: cloud-init: cloud-config keys that pim's default user-data template adds (write_files, runcmd, ...) */
  cloud_config: 'object',
  /** pim-build: start from this profile's build (built first when it is not up to date) instead of an ISO or image */
  from: 'string',
  /** a program in hooks.d whose KEY=VALUE lines on stdout are set in vars for the templates (pim-build, pim-serve) */
  env_hook: 'string',
};
export const ISO_SCHEMA: Schema = {
  url: 'string',
  checksum: 'string',
  checksum_url: 'string',
  filename: 'string',
  insecure: 'boolean',
  /** a local file (url: file:///path): copied into the cache instead of used in place */
  copy: 'boolean',
  distro: 'string',
  arch: 'string',
  version: 'string',
  description: 'string',
  /** iso (an installer, the default) or image (a disk image for builder: cloud-init) */
  kind: oneOf('iso', 'image'),
};
/** VM definitions (vms.d/*.yml, lib/config/vms.ts): what pim-run's flags say, and qemu_args with ${...} variables */
export const VM_SCHEMA: Schema = {
  image: 'string',
  mem: 'string|number',
  cpus: 'positive',
  net: oneOf('user', 'bridged'),
  bridge: 'string',
  ssh_port: 'positive',
  ports: 'string[]',
  firmware: oneOf('bios', 'uefi'),
  snapshot: 'boolean',
  accel: oneOf('kvm', 'hvf', 'tcg'),
  qemu_args: 'string[]',
  vars: 'object',
};
/** Deploy targets (targets.d/*.yml, lib/deploy/targets.ts): where pim-deploy puts a build */
export const TARGET_SCHEMA: Schema = {
  type: oneOf('libvirt', 'proxmox', 'ssh', 'oci'),
  // oci: a registry's repository (insecure: below), credentials from creds_env or ~/.docker/config.json
  ref: 'string',
  creds_env: 'string',
  // libvirt
  uri: 'string',
  pool: 'string',
  pool_path: 'string',
  virt_type: oneOf('kvm', 'qemu'),
  network: 'string',
  bridge: 'string',
  // what the build recorded, overridden for this target
  mem: 'string|number',
  cpus: 'positive',
  machine: 'string',
  disk_bus: oneOf('virtio', 'sata', 'scsi', 'ide'),
  // proxmox
  api: 'string',
  node: 'string',
  token_env: 'string',
  storage: 'string',
  import_storage: 'string',
  vmid: 'positive',
  fingerprint: 'string',
  insecure: 'boolean',
  // ssh (and proxmox before 8.4: the node over SSH)
  host: 'string',
  port: 'positive',
  identity: 'string',
  ssh: 'string',
  // every kind
  health: 'string',
  health_timeout: 'positive',
  shutdown_timeout: 'positive',
};
export const PIM_SCHEMA: Schema = {
  serve: mapping({ port: 'number', bind: 'string' }),
  vars: 'object',
  /** pim-build: remote_cache, a registry repository that holds builds by key (lib/oci/cache.ts) */
  build: mapping({
    remote_cache: mapping({ ref: 'string', insecure: 'boolean', push: 'boolean', creds_env: 'string' }),
  }),
};

export function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (isPlainObject(v)) return 'a mapping';
  return `a ${typeof v}`;
}

/** What a value of type `t` must be, for a message: "a list of strings", "one of bios, uefi". */
function describe(t: Ty): string {
  if (typeof t === 'object') return 'enum' in t ? `one of ${t.enum.join(', ')}` : 'a mapping';
  switch (t) {
    case 'string[]':
      return 'a list of strings';
    case 'object':
      return 'a mapping';
    case 'positive':
      return 'a positive number';
    case 'string|null':
      return 'a string or null';
    default:
      return `a ${t.replace('|', ' or ')}`;
  }
}

const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

function typeOk(t: Ty, v: unknown): boolean {
  if (typeof t === 'object') return 'enum' in t ? typeof v === 'string' && t.enum.includes(v) : isPlainObject(v);
  switch (t) {
    case 'string':
      return typeof v === 'string';
    case 'number':
      return isNumber(v);
    case 'positive':
      return isNumber(v) && v > 0;
    case 'boolean':
      return typeof v === 'boolean';
    case 'string|number':
      return typeof v === 'string' || isNumber(v);
    case 'string|null':
      return typeof v === 'string' || v === null;
    case 'string[]':
      return Array.isArray(v) && v.every((x) => typeof x === 'string');
    case 'object':
      return isPlainObject(v);
  }
}

const shown = (v: unknown) =>
  typeof v === 'string' ? JSON.stringify(v) : typeof v === 'number' ? String(v) : typeName(v);

/** Check `v` against `schema`; `at(path)` names FILE:LINE for an error. */
export function checkSchema(
  v: Plain,
  schema: Schema,
  strict: boolean,
  at: (path: string[]) => string,
  prefix: string[] = [],
): void {
  for (const [k, val] of Object.entries(v)) {
    const path = [...prefix, k];
    const t = schema[k];
    if (t === undefined) {
      if (strict)
        throw configError(at(path), `unknown key "${path.join('.')}"; known keys: ${Object.keys(schema).join(', ')}`);
      continue;
    }
    if (!typeOk(t, val)) {
      // a value of the right type but not allowed says which value; a wrong type says which type
      const what = (typeof t === 'object' && 'enum' in t) || t === 'positive' ? shown(val) : typeName(val);
      throw configError(at(path), `"${path.join('.')}" must be ${describe(t)}, not ${what}`);
    }
    if (typeof t === 'object' && 'mapping' in t) checkSchema(val as Plain, t.mapping, t.strict ?? strict, at, path);
  }
}
