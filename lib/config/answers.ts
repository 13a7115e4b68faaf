/**
 * What every answer file of a profile may rely on, made in one place when a
 * profile is loaded (loadProfile), before any template renders it:
 *
 *   - `password` (plain) becomes `password_hash` (crypt SHA-512, `$6$`), and
 *     `password` is gone: a plain password is never in a rendered file, a
 *     build record, a build log or `pim-build show`. No password at all (the
 *     default) leaves `password_hash` unset: the templates lock the account
 *     and turn sshd's password login off.
 *   - `packages` is pim's required packages for the builder, then the
 *     profile's own: a profile adds packages, it cannot drop pim's.
 *   - values that would break out of a one-line answer (a newline in an SSH
 *     key, a `:` in a password hash) are refused (78 at FILE:LINE).
 *
 * The crypt salt is derived from the password, the profile's name and a
 * random secret kept once per user (dataDir/password-salt.key, 0600): the
 * same password gives the same hash from build to build (so a build's cache
 * key is stable) while the salt tells nothing about the password, and two
 * users or two profiles never share one. Hashing: `unixcrypt` (a maintained
 * SHA-crypt implementation, byte for byte `openssl passwd -6`; macOS's
 * LibreSSL has no `-6`).
 */
import { createHmac, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { encrypt } from 'unixcrypt';
import { dataDir } from '../core/paths.ts';
import { ensurePrivateDir, createExclusive } from '../core/fs.ts';
import { configError } from './tree.ts';
import type { Resolved } from './catalog.ts';

/**
 * Packages pim installs whatever the profile says. An installed system needs
 * SSH (pim-build logs in), the guest agent (pim-build pins the host key and
 * stops the VM through it), sudo (scripts run as root through `sudo -n`) and
 * cloud-init (a deploy-time NoCloud seed sets the copy up). A cloud image
 * (builder: cloud-init) brings its own: listing them there would only make
 * cloud-init run apt on every build.
 */
export const REQUIRED_PACKAGES: Record<'installer' | 'cloud-init', readonly string[]> = {
  installer: ['openssh-server', 'qemu-guest-agent', 'sudo', 'cloud-init'],
  'cloud-init': [],
};

/** The file that holds the per-user secret the crypt salts are derived from. */
export const SALT_KEY_FILE = 'password-salt.key';

/** The alphabet of crypt(3) salts. */
const CRYPT_B64 = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

function saltSecret(): Buffer {
  const dir = ensurePrivateDir(dataDir());
  const p = join(dir, SALT_KEY_FILE);
  for (let i = 0; i < 2; i++) {
    try {
      const s = fs.readFileSync(p, 'utf8').trim();
      if (/^[0-9a-f]{64}$/.test(s)) return Buffer.from(s, 'hex');
      throw configError(p, `not a salt key (64 hex digits); remove it and pim makes a new one`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    try {
      const fd = createExclusive(p, 0o600);
      fs.writeSync(fd, randomBytes(32).toString('hex') + '\n');
      fs.closeSync(fd);
    } catch {
      /* another pim made it meanwhile: read that one */
    }
  }
  throw configError(p, 'cannot create the password salt key');
}

/** crypt(3) SHA-512 of `password`, with a salt stable for (this user, `profile`, `password`). */
export function hashPassword(password: string, profile: string): string {
  const mac = createHmac('sha256', saltSecret()).update(`${profile}\0${password}`).digest();
  let salt = '';
  for (let i = 0; i < 16; i++) salt += CRYPT_B64[mac[i]! % 64];
  return encrypt(password, `$6$${salt}`);
}

const where = (p: Resolved, key: string) => p.origins[key] ?? `profile "${p.name}"`;

/** The packages an image of this profile gets: pim's required ones, then the profile's (each once). */
export function profilePackages(builder: unknown, own: unknown): string[] {
  const req = REQUIRED_PACKAGES[builder === 'cloud-init' ? 'cloud-init' : 'installer'];
  return [...new Set([...req, ...(Array.isArray(own) ? own.map(String) : [])])];
}

/** The profile as the templates see it (see the top of this file). Returns a new Resolved. */
export function answerProfile(p: Resolved): Resolved {
  const value = { ...p.value };
  const origins = { ...p.origins };
  const pw = value.password;
  const hash = value.password_hash;
  if (typeof pw === 'string' && typeof hash === 'string') {
    throw configError(
      where(p, 'password'),
      `set password or password_hash, not both (password_hash is set at ${where(p, 'password_hash')}); set the other to null`,
    );
  }
  if (typeof hash === 'string' && !/^[^\s:]+$/.test(hash)) {
    throw configError(
      where(p, 'password_hash'),
      'password_hash must be one crypt(3) hash (openssl passwd -6), with no spaces or ":"',
    );
  }
  if (typeof pw === 'string') {
    if (!pw)
      throw configError(
        where(p, 'password'),
        'password is empty; remove it (or set it to null) for no password: login by key only',
      );
    value.password_hash = hashPassword(pw, p.name);
    origins.password_hash = `${where(p, 'password')} (password, hashed)`;
  }
  if (value.password_hash === null) delete value.password_hash;
  delete value.password;
  delete origins.password;
  // they go on the installer's kernel command line and into one-line answers
  if (
    value.hostname !== undefined &&
    !(typeof value.hostname === 'string' && /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(value.hostname))
  ) {
    throw configError(
      where(p, 'hostname'),
      `hostname must be letters, digits and "-" (at most 63), not ${JSON.stringify(value.hostname)}`,
    );
  }
  if (
    value.domain !== undefined &&
    !(typeof value.domain === 'string' && /^([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)?$/.test(value.domain))
  ) {
    throw configError(
      where(p, 'domain'),
      `domain must be a DNS name such as example.com, not ${JSON.stringify(value.domain)}`,
    );
  }
  const keys = Array.isArray(value.ssh_keys) ? (value.ssh_keys as string[]) : [];
  keys.forEach((k, i) => {
    if (/[\r\n\0]/.test(k) || !k.trim())
      throw configError(
        origins[`ssh_keys.${i}`] ?? where(p, 'ssh_keys'),
        `ssh_keys: each key is one non-empty line (an authorized_keys line), not ${JSON.stringify(k.slice(0, 40))}`,
      );
  });
  const pkgs = Array.isArray(value.packages) ? (value.packages as string[]) : [];
  pkgs.forEach((n, i) => {
    if (!/^[a-z0-9][a-z0-9+.:=~-]*$/i.test(n))
      throw configError(
        origins[`packages.${i}`] ?? where(p, 'packages'),
        `packages: ${JSON.stringify(n)} is not a package name`,
      );
  });
  value.packages = profilePackages(value.builder, pkgs);
  return { ...p, value, origins };
}
