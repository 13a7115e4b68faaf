/**
 * pim's own SSH key for the user (as lima keeps ~/.lima/_config/user): an
 * ed25519 key made on first use in <data>/pim/ssh/ (0700), the private half
 * 0600. pim-build adds its public half to every build's ssh_keys, the demo
 * guest has it (test/testbed/demo.sh), and pim-ssh and pim-cp log in with it
 * when nothing else is given. It is the user's, not a build's: it is never
 * part of a build's cache key (a build is the same whatever key reaches it;
 * pim-run warns when a build has no key the user holds).
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { dataDir } from '../core/paths.ts';
import { ensurePrivateDir, writeFileAtomic } from '../core/fs.ts';

/** <data>/pim/ssh: the directory of pim's user key */
export const userKeyDir = () => join(dataDir(), 'ssh');
/** the private half; the public half is this + ".pub" */
export const userKeyPath = () => join(userKeyDir(), 'id_ed25519');

/** The key's path when it exists (a regular file), else null: never makes it (pim-ssh's fast path). */
export function userKeyIfMade(): string | null {
  const p = userKeyPath();
  try {
    return fs.lstatSync(p).isFile() ? p : null;
  } catch {
    return null;
  }
}

/** "TYPE BASE64" of a public key line, for comparing keys whatever their comments. */
export const keyBlobOf = (line: string): string => line.trim().split(/\s+/).slice(0, 2).join(' ');

/** The public half ("ssh-ed25519 AAAA... comment"), or null when the key is not made or unreadable. */
export function userPublicKey(): string | null {
  try {
    const pub = fs.readFileSync(`${userKeyPath()}.pub`, 'utf8').trim();
    return /^ssh-ed25519 [A-Za-z0-9+/=]+/.test(pub) ? pub : null;
  } catch {
    return null;
  }
}

type Ssh2Utils = typeof import('ssh2').utils;

/**
 * A new ed25519 key pair in OpenSSH format that ssh2 itself can read back.
 * ssh2's generateKeyPairSync drops the leading zero bytes of the public key,
 * so about one key in 256 (a public key that starts with 0x00) is one its own
 * parseKey refuses ("Malformed OpenSSH private key": mscdex/ssh2#1390,
 * #1513); such a pair is thrown away and another made.
 */
export function generateSoundKey(utils: Ssh2Utils, comment: string): { private: string; public: string } {
  for (let i = 0; ; i++) {
    const kp = utils.generateKeyPairSync('ed25519', { comment });
    if (!(utils.parseKey(kp.private) instanceof Error) && !(utils.parseKey(kp.public) instanceof Error))
      return { private: kp.private, public: kp.public.trim() };
    if (i >= 20) throw new PimError(EXIT.SOFTWARE, 'ssh2 made 20 ed25519 keys in a row that it cannot read back');
  }
}

/**
 * pim's user key, made now if it is not there yet: its private path and its
 * public line. Two first uses at once make one key (the private half is
 * linked into place, never replaced; the public half is derived from it).
 */
export async function ensureUserKey(): Promise<{ path: string; public: string }> {
  const dir = ensurePrivateDir(userKeyDir());
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new PimError(EXIT.CANTCREAT, `${dir} is not a directory; remove it`);
  const path = userKeyPath();
  const m = (await import('ssh2')) as typeof import('ssh2') & { default?: typeof import('ssh2') };
  const { utils } = m.default && 'utils' in m.default ? m.default : m;
  if (!userKeyIfMade()) {
    const { hostname, userInfo } = await import('node:os');
    let who = 'user';
    try {
      who = userInfo().username;
    } catch {
      /* no passwd entry */
    }
    const kp = generateSoundKey(utils, `pim:${who}@${hostname()}`);
    try {
      writeFileAtomic(path, kp.private, 0o600, true);
    } catch (e) {
      if (!userKeyIfMade()) throw e; // another pim made it meanwhile: that one is the key
    }
  }
  if (fs.statSync(path).mode & 0o077) fs.chmodSync(path, 0o600);
  const parsed = utils.parseKey(fs.readFileSync(path));
  if (parsed instanceof Error)
    throw new PimError(
      EXIT.DATAERR,
      `pim's SSH key ${path} does not parse (${parsed.message}); remove it (and its .pub) and pim makes a new one`,
    );
  const key = Array.isArray(parsed) ? parsed[0] : parsed;
  const pub = `${key.type} ${key.getPublicSSH().toString('base64')} ${key.comment || 'pim'}`.trim();
  const have = userPublicKey();
  if (!have || keyBlobOf(have) !== keyBlobOf(pub)) writeFileAtomic(`${path}.pub`, pub + '\n', 0o600);
  return { path, public: pub };
}
