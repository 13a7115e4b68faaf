/**
 * How to reach a VM over SSH: the one place that says it (host, port, user,
 * key, known_hosts), for pim-ssh and pim-cp (the system's OpenSSH through a
 * per-VM config file) and pim-build's provisioning (ssh2 in-process).
 *
 * Where. A user-mode VM is reached through its forwarded port in the
 * metadata (127.0.0.1:ssh_port); a bridged VM at the address its guest agent
 * reports (the first global IPv4, else IPv6, as pim-ip shows them).
 *
 * Who. `--user`/`-i` (the caller's overrides), else PIM_SSH_USER/PIM_SSH_KEY,
 * else what the metadata recorded at start (a VM booted from a pim build: the
 * profile's ssh_user, and the user's own key when one of ~/.ssh/id_* is among
 * the profile's ssh_keys, else pim's own key, lib/guest/userkey.ts), else user
 * root with pim's own key and OpenSSH's default keys (~/.ssh/id_*).
 *
 * Files, in the VM's private directory `<runtime>/NAME.ssh/` (0700, made
 * with mkdir, never through a symlink; removed with the VM's runtime files):
 *   config        the ssh config pim-ssh and pim-cp pass with -F (Host NAME)
 *   known_hosts   the guest's host keys, pinned from the guest agent before
 *                 the first connection (StrictHostKeyChecking yes); without an
 *                 agent, accept-new, and that is said once
 *   c-USER        a control socket: the cached master connection of USER
 *                 (ControlPath c-%r, ControlPersist)
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { SOCKET_PATH_MAX } from '../core/paths.ts';
import type { RunningVm } from '../vm/state.ts';
import type { VmRef } from '../vm/ref.ts';
import { keyBlobOf, userKeyIfMade, userPublicKey } from './userkey.ts';
import { withGa } from '../vm/connect.ts';
import { readRegular, writeFileAtomic } from '../core/fs.ts';
import { hostKeysViaAgent } from './hostkeys.ts';
import { which } from '../core/which.ts';
import { acquireLock } from '../core/lock.ts';

/** How long a cached master connection lasts with no session on it. */
export const CONTROL_PERSIST = '10m';
/** Seconds an agent is given to answer with the host keys before the first connection. */
const AGENT_WAIT_MS = 5_000;
/** The longest a master connection may take to open (ConnectTimeout 30 bounds the TCP part). */
const MASTER_START_MS = 90_000;
/** OpenSSH binds a master's socket at ControlPath + "." + 16 random characters, then renames it. */
const CONTROL_TMP_SUFFIX = 17;

export interface SshWho {
  user?: string;
  key?: string;
}

export interface SshReach {
  name: string;
  host: string;
  port: number;
  user: string;
  /** an identity file, absolute; null: OpenSSH's defaults */
  key: string | null;
  /** the known_hosts line pattern for host and port: "[127.0.0.1]:PORT", or the address alone on port 22 */
  pattern: string;
}

export interface SshFiles {
  dir: string;
  config: string;
  knownHosts: string;
  /** ControlPath as written in the config (%r: the remote user) */
  controlPattern: string;
  /** the control socket of `user` */
  control: (user: string) => string;
}

export const sshFiles = (ref: VmRef): SshFiles => {
  const dir = ref.files.ssh;
  return {
    dir,
    config: join(dir, 'config'),
    knownHosts: join(dir, 'known_hosts'),
    controlPattern: join(dir, 'c-%r'),
    control: (u) => join(dir, `c-${u}`),
  };
};

const USER_RE = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/;

/** A login name (exit 64 otherwise): it goes into a file name (the control socket) and ssh's argv. */
export function checkUser(u: string, what = '--user'): string {
  if (!USER_RE.test(u))
    throw new PimError(
      EXIT.USAGE,
      `${what} must be a user name (letters, digits, _ . -; 32 at most), not ${JSON.stringify(u)}`,
    );
  return u;
}

/** An identity file: absolute, a readable regular file (66 otherwise). */
export function checkKey(k: string, what = '-i'): string {
  const p = absolute(k);
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    throw new PimError(EXIT.NOINPUT, `${what}: no key file ${p}`);
  }
  if (!st.isFile()) throw new PimError(EXIT.NOINPUT, `${what}: ${p} is not a key file`);
  return p;
}

function absolute(p: string): string {
  if (p === '~' || p.startsWith('~/')) p = join(process.env.HOME ?? '', p.slice(1));
  return p.startsWith('/') ? p : join(process.cwd(), p);
}

/** User and key: overrides, then PIM_SSH_USER/PIM_SSH_KEY, then the metadata, then root and OpenSSH's defaults. */
export function sshWho(
  vm: Pick<RunningVm, 'meta'>,
  over: SshWho = {},
  env: NodeJS.ProcessEnv = process.env,
): { user: string; key: string | null } {
  const user = over.user
    ? checkUser(over.user)
    : env.PIM_SSH_USER
      ? checkUser(env.PIM_SSH_USER, 'PIM_SSH_USER')
      : vm.meta?.ssh_user
        ? checkUser(vm.meta.ssh_user, 'the metadata ssh_user')
        : 'root';
  const k = over.key ?? (env.PIM_SSH_KEY || undefined) ?? vm.meta?.ssh_key ?? null;
  const key = k
    ? checkKey(k, over.key ? '-i' : env.PIM_SSH_KEY ? 'PIM_SSH_KEY' : `${vm.meta?.name ?? 'the VM'}'s metadata ssh_key`)
    : null;
  return { user, key };
}

/** The known_hosts pattern of host:port ("[h]:p", or h alone on port 22). */
export const hostPattern = (host: string, port: number) => (port === 22 ? host : `[${host}]:${port}`);

interface GaIface {
  name: string;
  'ip-addresses'?: Array<{ 'ip-address': string; 'ip-address-type': 'ipv4' | 'ipv6'; prefix: number }>;
}

/** The address to reach a bridged guest at, from guest-network-get-interfaces: the first global IPv4, else IPv6. */
export function bridgedAddress(ifaces: GaIface[]): string | null {
  const all = ifaces.filter((i) => i.name !== 'lo').flatMap((i) => i['ip-addresses'] ?? []);
  const v4 = all.find(
    (a) =>
      a['ip-address-type'] === 'ipv4' && !a['ip-address'].startsWith('127.') && !a['ip-address'].startsWith('169.254.'),
  );
  if (v4) return v4['ip-address'];
  const v6 = all.find((a) => a['ip-address-type'] === 'ipv6' && !/^(fe80|::1$)/i.test(a['ip-address']));
  return v6 ? v6['ip-address'] : null;
}

/** Where VM `vm` answers SSH (69 when that cannot be known). */
export async function sshAddress(vm: RunningVm, timeoutMs = AGENT_WAIT_MS): Promise<{ host: string; port: number }> {
  if (!vm.meta?.bridged) {
    const port = vm.meta?.ssh_port;
    if (!port)
      throw new PimError(
        EXIT.UNAVAILABLE,
        `${vm.name} has no SSH port forward in its metadata (a ${vm.meta?.kind ?? 'VM'} started without networking?)`,
      );
    return { host: '127.0.0.1', port };
  }
  if (!vm.meta.agent)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${vm.name} is bridged and has no guest agent channel, so pim cannot know its address; ssh to it yourself`,
    );
  const ifaces = (await withGa(vm, timeoutMs, (g) =>
    g.execute('guest-network-get-interfaces', undefined, timeoutMs),
  )) as GaIface[];
  const host = bridgedAddress(ifaces);
  if (!host)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${vm.name}'s guest agent reports no address on the bridge yet (see pim-ip ${vm.name}); try again once the guest has one`,
    );
  return { host, port: 22 };
}

// --- the config file -----------------------------------------------------------

/**
 * A value in an ssh config line: %-tokens escaped (%%), quoted when it has
 * blanks; a double quote or a control character cannot be written (73).
 */
export function configValue(v: string, tokens = true): string {
  if (/["\x00-\x1f\x7f]/.test(v))
    throw new PimError(
      EXIT.CANTCREAT,
      `cannot write ${JSON.stringify(v)} into an ssh config (a double quote or a control character); use another path`,
    );
  const e = tokens ? v.replace(/%/g, '%%') : v;
  return /[\s#'\\]/.test(e) ? `"${e}"` : e;
}

export interface ConfigInput {
  name: string;
  host: string;
  port: number;
  user: string;
  key: string | null;
  knownHosts: string;
  controlPath: string;
  /** the host keys are pinned (known_hosts holds the agent's keys) */
  pinned: boolean;
  /** with no `key`: the identity files to offer (pim's own key, then OpenSSH's defaults that exist) */
  identities?: string[];
}

/** OpenSSH's default identity files, in its order. */
const DEFAULT_IDENTITIES = ['id_rsa', 'id_ecdsa', 'id_ecdsa_sk', 'id_ed25519', 'id_ed25519_sk'];

/**
 * What pim-ssh offers when no key is given or recorded: pim's own key (when
 * it is made), then those of OpenSSH's default keys that exist. An ssh -F
 * config with IdentityFile lines offers only those (and an agent's keys), so
 * the defaults are listed too, not lost.
 */
export function defaultIdentities(): string[] {
  const out: string[] = [];
  const own = userKeyIfMade();
  if (own) out.push(own);
  const home = process.env.HOME;
  for (const n of home ? DEFAULT_IDENTITIES : []) {
    const p = join(home!, '.ssh', n);
    if (fs.existsSync(p)) out.push(p);
  }
  return out;
}

/** The text of the per-VM ssh config. */
export function sshConfigText(c: ConfigInput): string {
  const lines = [
    `# written by pim for VM ${c.name}: ssh -F THIS ${c.name}`,
    `Host ${c.name}`,
    `  HostName ${configValue(c.host, false)}`,
    `  Port ${c.port}`,
    `  User ${c.user}`,
  ];
  if (c.key) lines.push(`  IdentityFile ${configValue(c.key)}`, '  IdentitiesOnly yes');
  else for (const k of c.identities ?? []) lines.push(`  IdentityFile ${configValue(k)}`);
  lines.push(
    `  UserKnownHostsFile ${configValue(c.knownHosts)}`,
    '  GlobalKnownHostsFile /dev/null',
    `  StrictHostKeyChecking ${c.pinned ? 'yes' : 'accept-new'}`,
    '  UpdateHostKeys no',
    '  CheckHostIP no',
    '  ControlMaster auto',
    `  ControlPath ${configValue(c.controlPath.replace(/%(?!r$)/g, '%%'), false)}`,
    `  ControlPersist ${CONTROL_PERSIST}`,
    '  ConnectTimeout 30',
    '  ServerAliveInterval 15',
    '  ServerAliveCountMax 4',
    '  LogLevel ERROR',
  );
  return lines.join('\n') + '\n';
}

/** The known_hosts text that pins `keys` (OpenSSH lines "TYPE BASE64") for `pattern`. */
export function knownHostsText(pattern: string, keys: string[]): string {
  return keys.map((k) => `${pattern} ${k.trim().split(/\s+/).slice(0, 2).join(' ')}\n`).join('');
}

/** The control socket path for `user`, checked against the unix socket limit (73). */
export function checkControlPath(p: string): string {
  const n = Buffer.byteLength(p) + CONTROL_TMP_SUFFIX;
  if (n >= SOCKET_PATH_MAX) {
    throw new PimError(
      EXIT.CANTCREAT,
      `ssh's control socket path ${p} is ${Buffer.byteLength(p)} bytes, and ssh adds ${CONTROL_TMP_SUFFIX} while it binds: over the ${SOCKET_PATH_MAX - 1}-byte limit; use a shorter VM name, user or XDG_RUNTIME_DIR`,
    );
  }
  return p;
}

/** Make NAME.ssh/: a directory of ours, 0700, never a symlink (73/77 otherwise). */
function ensureSshDir(dir: string): void {
  let st = fs.lstatSync(dir, { throwIfNoEntry: false });
  if (!st) {
    try {
      fs.mkdirSync(dir, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST')
        throw new PimError(EXIT.CANTCREAT, `cannot create ${dir}: ${(e as Error).message}`);
    }
    st = fs.lstatSync(dir);
  }
  if (!st.isDirectory())
    throw new PimError(
      EXIT.CANTCREAT,
      `${dir} is not a directory (a file or a symlink someone put there); remove it and try again`,
    );
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid)
    throw new PimError(EXIT.NOPERM, `${dir} is owned by uid ${st.uid}, not you; remove it`);
  if ((st.mode & 0o077) !== 0) fs.chmodSync(dir, 0o700);
}

export interface Prepared {
  files: SshFiles;
  reach: SshReach;
  /** the user and key the config file names (reach's are the caller's, with its overrides) */
  base: { user: string; key: string | null };
  /** the control socket of reach.user */
  control: string;
  /** a master connection answers on it */
  master: boolean;
}

/**
 * A master connection listens on `sock`. On Linux the kernel's table of unix
 * sockets says so without a connect (node:net costs milliseconds to load, on
 * pim-ssh's fast path): ssh binds a master's socket at SOCK.<16 random
 * characters> and renames it, and the table keeps the name it was bound at;
 * a dead master's socket file is in no entry. Elsewhere: a connect.
 */
export function masterAlive(sock: string): Promise<boolean> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(sock);
  } catch {
    return Promise.resolve(false);
  }
  if (!st.isSocket()) return Promise.resolve(false);
  if (process.platform === 'linux') {
    try {
      const table = fs.readFileSync('/proc/net/unix', 'latin1');
      return Promise.resolve(table.includes(` ${sock}.`) || table.includes(` ${sock}\n`));
    } catch {
      /* no /proc: connect */
    }
  }
  return new Promise((resolve) => {
    const { createConnection } = process.getBuiltinModule('node:net') as typeof import('node:net');
    const s = createConnection(sock);
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(2_000, () => done(false));
  });
}

/**
 * Write the VM's ssh config and known_hosts (what is missing or out of date)
 * and say whether a master connection is up. The host keys are read through
 * the guest agent only while known_hosts is empty; a VM whose agent does not
 * answer gets accept-new, said once (when its config is first written).
 */
export async function prepareSsh(
  vm: RunningVm,
  over: SshWho = {},
  say: (msg: string) => void = () => {},
  opts: { configWho?: boolean } = {},
): Promise<Prepared> {
  const files = sshFiles(vm);
  const who = sshWho(vm, over);
  // the default user and key (the config's); overrides go on ssh's command line, or into
  // the config itself for pim-ssh --config (configWho), whose reader has only the file
  const base = opts.configWho || (!over.user && over.key === undefined) ? who : sshWho(vm);
  const control = checkControlPath(files.control(who.user));
  ensureSshDir(files.dir);
  const master = await masterAlive(control);
  const oldConfig = readRegular(files.config);
  // the address: a bridged guest's is asked again only when no master answers (it may have changed)
  let addr: { host: string; port: number } | null = null;
  if (vm.meta?.bridged && master && oldConfig) {
    const h = /^ {2}HostName (\S+)$/m.exec(oldConfig)?.[1];
    if (h) addr = { host: h.replace(/^"|"$/g, ''), port: 22 };
  }
  addr ??= await sshAddress(vm);
  const pattern = hostPattern(addr.host, addr.port);
  let known = readRegular(files.knownHosts) ?? '';
  let pinned = /^# pinned/m.test(known);
  if (!known.trim() || (pinned && !known.includes(`\n${pattern} `))) {
    let lines: string[] | null = null;
    if (pinned)
      lines = known
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .map((l) => l.split(' ').slice(1).join(' '));
    else if (vm.meta?.agent !== false) {
      lines = (await hostKeysViaAgent(vm.files.ga, Date.now() + AGENT_WAIT_MS))?.lines ?? null;
    }
    if (lines?.length) {
      known = `# pinned by pim from ${vm.name}'s guest agent\n${knownHostsText(pattern, lines)}`;
      pinned = true;
      writeFileAtomic(files.knownHosts, known, 0o600);
    } else if (!known.trim()) {
      // keep ssh's own accept-new entry, if it has made one already
      if (!fs.existsSync(files.knownHosts)) writeFileAtomic(files.knownHosts, '', 0o600);
      if (!oldConfig)
        say(
          `${vm.name}: no guest agent answered with the host keys, so the key SSH shows first is trusted (StrictHostKeyChecking accept-new)`,
        );
    }
  }
  const text = sshConfigText({
    name: vm.name,
    host: addr.host,
    port: addr.port,
    user: base.user,
    key: base.key,
    identities: base.key ? [] : defaultIdentities(),
    knownHosts: files.knownHosts,
    controlPath: files.controlPattern,
    pinned,
  });
  if (text !== oldConfig) writeFileAtomic(files.config, text, 0o600);
  return {
    files,
    reach: { name: vm.name, host: addr.host, port: addr.port, ...who, pattern },
    base,
    control,
    master,
  };
}

/** ssh's (and scp's) options after -F for a caller's overrides (user, key), when they differ from the config's. */
export function overrideArgs(p: Prepared): string[] {
  const { base } = p;
  const out: string[] = [];
  if (p.reach.user !== base.user) out.push('-o', `User=${p.reach.user}`);
  if (p.reach.key && p.reach.key !== base.key) out.push('-i', p.reach.key, '-o', 'IdentitiesOnly=yes');
  return out;
}

/** What ssh's stderr says went wrong, as a pim error. */
export function connectError(name: string, r: SshReach, stderr: string): PimError {
  const last = stderr.trim().split('\n').filter(Boolean).pop() ?? 'no message';
  if (
    /REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed|host key .*(differs|mismatch)/i.test(stderr)
  ) {
    return new PimError(
      EXIT.DATAERR,
      `${name} showed a host key that is not the one pinned from its guest agent: ssh refused to connect; if the guest really has a new key, stop and start the VM again (or remove ${r.pattern} from its known_hosts)`,
    );
  }
  if (/Permission denied/i.test(stderr)) {
    return new PimError(
      EXIT.NOPERM,
      `SSH to ${name} refused ${r.user}${r.key ? ` with key ${r.key}` : " with pim's key and OpenSSH's default keys"}: give --user and -i KEY (or set PIM_SSH_USER, PIM_SSH_KEY)`,
    );
  }
  return new PimError(
    EXIT.UNAVAILABLE,
    `cannot reach ${name} over SSH at ${r.host}:${r.port} (${last}); is its SSH server up? (pim-wait ${name} --for ssh)`,
  );
}

/**
 * The OpenSSH client program `cmd` (ssh or scp) on PATH, or 69 with how to
 * install it: checked before anything connects, so that a missing client is
 * not reported as a guest that cannot be reached.
 */
export async function needSshClient(cmd: 'ssh' | 'scp' = 'ssh'): Promise<string> {
  const found = which(cmd);
  if (!found)
    throw new PimError(
      EXIT.UNAVAILABLE,
      `${cmd} was not found on PATH; install the OpenSSH client (Debian: apt-get install openssh-client)`,
    );
  return found;
}

/**
 * Open the master connection for the prepared VM (ssh -N: it authenticates,
 * then goes to the background through ControlPersist, which closes its
 * stdio), with ssh's messages captured for one clear error.
 */
export async function startMaster(p: Prepared, vm: RunningVm, ssh = 'ssh'): Promise<void> {
  // one start at a time per user: two masters for one socket would leave the second in the foreground
  const lockFile = join(p.files.dir, `lock-${p.reach.user}`);
  const until = Date.now() + MASTER_START_MS;
  let lock: Awaited<ReturnType<typeof acquireLock>>;
  for (;;) {
    try {
      lock = await acquireLock(lockFile, `the SSH connection to ${vm.name}`);
      break;
    } catch (e) {
      if (!(e instanceof PimError) || e.code !== EXIT.TEMPFAIL || Date.now() > until) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    if (await masterAlive(p.control)) return; // another pim-ssh opened it meanwhile
    try {
      if (fs.lstatSync(p.control).isSocket()) fs.unlinkSync(p.control); // a dead master's socket
    } catch {
      /* none */
    }
    const { spawn } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
    const args = ['-F', p.files.config, ...overrideArgs(p), '-N', '-o', 'ControlMaster=yes', '--', vm.name];
    const { code, stderr } = await new Promise<{ code: number; stderr: string }>((resolve) => {
      const child = spawn(ssh, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      const t = setTimeout(() => {
        err += `\nno SSH connection within ${MASTER_START_MS / 1000} s`;
        child.kill('SIGKILL');
      }, MASTER_START_MS);
      child.stderr!.on('data', (d: Buffer) => (err += d.toString('utf8')));
      child.once('error', (e) => (clearTimeout(t), resolve({ code: 255, stderr: `cannot run ${ssh}: ${e.message}` })));
      child.once('close', (c) => (clearTimeout(t), resolve({ code: c ?? 255, stderr: err })));
    });
    if (code !== 0) throw connectError(vm.name, p.reach, stderr);
  } finally {
    await lock.release();
  }
}

/**
 * Close every master connection of VM `ref` (ssh -O exit on each control
 * socket), best effort, each bounded by `timeoutMs`. For pim-stop.
 */
export async function closeMasters(ref: VmRef, timeoutMs = 3_000): Promise<void> {
  const files = sshFiles(ref);
  let names: string[];
  try {
    names = fs.readdirSync(files.dir).filter((n) => n.startsWith('c-'));
  } catch {
    return;
  }
  const { spawn } = process.getBuiltinModule('node:child_process') as typeof import('node:child_process');
  await Promise.all(
    names.map(
      (n) =>
        new Promise<void>((resolve) => {
          const sock = join(files.dir, n);
          try {
            if (!fs.lstatSync(sock).isSocket()) return resolve();
          } catch {
            return resolve();
          }
          const child = spawn(
            'ssh',
            ['-F', files.config, '-o', `ControlPath=${sock.replace(/%/g, '%%')}`, '-O', 'exit', '--', ref.name],
            { stdio: 'ignore' },
          );
          const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
          const done = () => (clearTimeout(t), resolve());
          child.once('error', done);
          child.once('close', done);
        }),
    ),
  );
}

/**
 * What a VM booted from a pim build logs in with: the build's ssh_user, and
 * the user's own key (~/.ssh/id_ed25519, id_ecdsa, id_rsa) when its public
 * half is among the profile's ssh_keys, else pim's own key when the build
 * put it in (`userKey`, the public line the build record keeps). For pim-run
 * to record in the metadata; `key` stays unset when no key the user holds is
 * in the build (pim-run warns).
 */
export function sshOfBuild(settingsUser: string | undefined, profileKeys: unknown, userKey?: string | null): SshWho {
  const out: SshWho = {};
  if (settingsUser && USER_RE.test(settingsUser)) out.user = settingsUser;
  const keys = Array.isArray(profileKeys)
    ? profileKeys.filter((k): k is string => typeof k === 'string').map((k) => k.trim().split(/\s+/)[1])
    : [];
  const own = userKeyIfMade();
  const ownPub = userPublicKey();
  if (userKey && own && ownPub && keyBlobOf(userKey) === keyBlobOf(ownPub)) out.key = own;
  const home = process.env.HOME;
  if (!home || !keys.length) return out;
  for (const t of ['id_ed25519', 'id_ecdsa', 'id_rsa']) {
    const priv = join(home, '.ssh', t);
    let pub: string;
    try {
      pub = fs.readFileSync(`${priv}.pub`, 'utf8');
    } catch {
      continue;
    }
    if (keys.includes(pub.trim().split(/\s+/)[1]) && fs.existsSync(priv)) {
      out.key = priv; // the user's own key, which the profile names, comes first
      break;
    }
  }
  return out;
}
