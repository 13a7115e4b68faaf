/**
 * pim-ssh and pim-cp below their commands: the per-VM ssh config's text, the
 * known_hosts lines, who logs in (flags > env > metadata > root), the
 * control socket's length check, a bridged guest's address, the public half
 * of dropbear's host key files, and scp-style NAME:path words. No QEMU here:
 * test/bats/guestssh.bats runs them against real guests, real OpenSSH and
 * real dropbear.
 */
import { afterEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  bridgedAddress,
  checkControlPath,
  configValue,
  hostPattern,
  knownHostsText,
  sshConfigText,
  sshOfBuild,
  sshWho,
} from '../../lib/guest/reach.ts';
import { blobType, dropbearPublicBlob, keyBlob, keyLine } from '../../lib/guest/hostkeys.ts';
import { copyError, parseCpArg, planCopy, remoteSh, shq } from '../../lib/guest/copy.ts';
import { PimError } from '../../lib/core/exit.ts';
import { SOCKET_PATH_MAX } from '../../lib/core/paths.ts';

const code = (f: () => unknown): number | null => {
  try {
    f();
    return null;
  } catch (e) {
    return e instanceof PimError ? e.code : -1;
  }
};

const wire = (...parts: Buffer[]) =>
  Buffer.concat(
    parts.flatMap((p) => {
      const n = Buffer.alloc(4);
      n.writeUInt32BE(p.length);
      return [n, p];
    }),
  );

describe('the per-VM ssh config', () => {
  const base = {
    name: 'dev',
    host: '127.0.0.1',
    port: 41022,
    user: 'root',
    key: '/k/id_ed25519',
    knownHosts: '/run/pim/dev.ssh/known_hosts',
    controlPath: '/run/pim/dev.ssh/c-%r',
    pinned: true,
  };

  it('names the host, port, user, key, known_hosts, master and its socket', () => {
    const t = sshConfigText(base);
    expect(t).toContain('\nHost dev\n');
    expect(t).toContain('  HostName 127.0.0.1\n  Port 41022\n  User root\n');
    expect(t).toContain('  IdentityFile /k/id_ed25519\n  IdentitiesOnly yes\n');
    expect(t).toContain('  UserKnownHostsFile /run/pim/dev.ssh/known_hosts\n');
    expect(t).toContain('  StrictHostKeyChecking yes\n');
    expect(t).toContain('  ControlMaster auto\n  ControlPath /run/pim/dev.ssh/c-%r\n  ControlPersist 10m\n');
    expect(t).toContain('  LogLevel ERROR\n');
  });

  it('leaves the key to OpenSSH when none is known, and takes the first key without an agent (accept-new)', () => {
    const t = sshConfigText({ ...base, key: null, pinned: false });
    expect(t).not.toContain('IdentityFile');
    expect(t).not.toContain('IdentitiesOnly');
    expect(t).toContain('  StrictHostKeyChecking accept-new\n');
  });

  it('escapes % and quotes blanks in paths; refuses a double quote', () => {
    expect(configValue('/a b/%x')).toBe('"/a b/%%x"');
    expect(configValue('/plain')).toBe('/plain');
    expect(code(() => configValue('/a"b'))).toBe(73);
    const t = sshConfigText({ ...base, knownHosts: '/x 1/%k', controlPath: '/x%y/c-%r' });
    expect(t).toContain('  UserKnownHostsFile "/x 1/%%k"\n');
    expect(t).toContain('  ControlPath /x%%y/c-%r\n');
  });

  it('pins keys for [127.0.0.1]:PORT, or the address alone on port 22', () => {
    expect(hostPattern('127.0.0.1', 41022)).toBe('[127.0.0.1]:41022');
    expect(hostPattern('192.168.7.9', 22)).toBe('192.168.7.9');
    expect(knownHostsText('[127.0.0.1]:41022', ['ssh-ed25519 AAAAC3Nz root@x', 'ssh-rsa AAAAB3'])).toBe(
      '[127.0.0.1]:41022 ssh-ed25519 AAAAC3Nz\n[127.0.0.1]:41022 ssh-rsa AAAAB3\n',
    );
  });

  it('checks the control socket against the unix socket limit, with the 17 bytes ssh adds while it binds', () => {
    const ok = '/r/' + 'a'.repeat(SOCKET_PATH_MAX - 1 - 17 - 3);
    expect(checkControlPath(ok)).toBe(ok);
    expect(code(() => checkControlPath(ok + 'b'))).toBe(73);
  });
});

describe('who logs in', () => {
  const dir = fs.mkdtempSync(join(tmpdir(), 'pim-who-'));
  const key = join(dir, 'id');
  fs.writeFileSync(key, 'k');
  const meta = { meta: { name: 'dev', ssh_user: 'pim', ssh_key: key } as never };

  it('flags, then PIM_SSH_USER/PIM_SSH_KEY, then the metadata, then root and no key', () => {
    expect(sshWho({ meta: null }, {}, {})).toEqual({ user: 'root', key: null });
    expect(sshWho(meta, {}, {})).toEqual({ user: 'pim', key });
    expect(sshWho(meta, {}, { PIM_SSH_USER: 'env', PIM_SSH_KEY: key })).toEqual({ user: 'env', key });
    expect(sshWho(meta, { user: 'flag' }, { PIM_SSH_USER: 'env' })).toEqual({ user: 'flag', key });
  });

  it('refuses a user name that cannot be a file name (64) and a key that is not there (66)', () => {
    expect(code(() => sshWho({ meta: null }, { user: '../x' }, {}))).toBe(64);
    expect(code(() => sshWho({ meta: null }, { key: join(dir, 'nope') }, {}))).toBe(66);
    expect(code(() => sshWho({ meta: null }, {}, { PIM_SSH_KEY: dir }))).toBe(66);
  });

  it("a build's VM: the profile's ssh_user and the user's own key when it is among ssh_keys", () => {
    const home = fs.mkdtempSync(join(tmpdir(), 'pim-home-'));
    fs.mkdirSync(join(home, '.ssh'));
    fs.writeFileSync(join(home, '.ssh', 'id_ed25519'), 'private');
    fs.writeFileSync(join(home, '.ssh', 'id_ed25519.pub'), 'ssh-ed25519 AAAAmine me@host\n');
    const old = process.env.HOME;
    process.env.HOME = home;
    try {
      expect(sshOfBuild('admin', ['ssh-ed25519 AAAAmine other-comment'])).toEqual({
        user: 'admin',
        key: join(home, '.ssh', 'id_ed25519'),
      });
      expect(sshOfBuild('admin', ['ssh-ed25519 AAAAsomeoneelse'])).toEqual({ user: 'admin' });
    } finally {
      process.env.HOME = old;
    }
  });
});

describe("a bridged guest's address", () => {
  it('is the first global IPv4, else a global IPv6; loopback and link-local never', () => {
    const ifs = [
      { name: 'lo', 'ip-addresses': [{ 'ip-address': '127.0.0.1', 'ip-address-type': 'ipv4' as const, prefix: 8 }] },
      {
        name: 'eth0',
        'ip-addresses': [
          { 'ip-address': 'fe80::1', 'ip-address-type': 'ipv6' as const, prefix: 64 },
          { 'ip-address': '192.168.7.9', 'ip-address-type': 'ipv4' as const, prefix: 24 },
        ],
      },
    ];
    expect(bridgedAddress(ifs)).toBe('192.168.7.9');
    expect(
      bridgedAddress([
        { name: 'eth0', 'ip-addresses': [{ 'ip-address': '2001:db8::5', 'ip-address-type': 'ipv6', prefix: 64 }] },
      ]),
    ).toBe('2001:db8::5');
    expect(bridgedAddress([ifs[0]!])).toBeNull();
  });
});

describe("dropbear's host key files", () => {
  it('give the public blob of an ed25519 key (the last 32 of its 64 bytes)', () => {
    const { publicKey } = generateKeyPairSync('ed25519');
    const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
    const priv = Buffer.concat([Buffer.alloc(32, 7), raw]);
    const file = wire(Buffer.from('ssh-ed25519'), priv);
    const blob = dropbearPublicBlob(file)!;
    expect(blob.equals(wire(Buffer.from('ssh-ed25519'), raw))).toBe(true);
    expect(blobType(blob)).toBe('ssh-ed25519');
    expect(keyBlob(keyLine(blob)!)!.equals(blob)).toBe(true);
  });

  it('give ecdsa (type, curve, Q) and rsa (type, e, n) public blobs, and nothing for anything else', () => {
    const q = Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 1)]);
    const ec = wire(Buffer.from('ecdsa-sha2-nistp256'), Buffer.from('nistp256'), q, Buffer.alloc(32, 9));
    expect(dropbearPublicBlob(ec)!.equals(wire(Buffer.from('ecdsa-sha2-nistp256'), Buffer.from('nistp256'), q))).toBe(
      true,
    );
    const e = Buffer.from([1, 0, 1]);
    const n = Buffer.concat([Buffer.from([0]), Buffer.alloc(256, 0xab)]);
    const rsa = wire(Buffer.from('ssh-rsa'), e, n, Buffer.alloc(256, 1), Buffer.alloc(128, 2), Buffer.alloc(128, 3));
    expect(dropbearPublicBlob(rsa)!.equals(wire(Buffer.from('ssh-rsa'), e, n))).toBe(true);
    expect(dropbearPublicBlob(Buffer.from('not a key'))).toBeNull();
    expect(dropbearPublicBlob(wire(Buffer.from('ssh-ed25519'), Buffer.alloc(10)))).toBeNull();
    expect(dropbearPublicBlob(Buffer.alloc(0))).toBeNull();
  });
});

describe('pim-cp words', () => {
  it('reads NAME:path and USER@NAME:path as remote, as scp does', () => {
    expect(parseCpArg('dev:/etc/hosts')).toEqual({ kind: 'remote', vm: 'dev', path: '/etc/hosts' });
    expect(parseCpArg('dev:')).toEqual({ kind: 'remote', vm: 'dev', path: '' });
    expect(parseCpArg('pim@dev:x')).toEqual({ kind: 'remote', vm: 'dev', user: 'pim', path: 'x' });
  });

  it('reads ./x:y, /x:y and words without a colon as local', () => {
    expect(parseCpArg('./x:y')).toEqual({ kind: 'local', path: './x:y' });
    expect(parseCpArg('/x:y')).toEqual({ kind: 'local', path: '/x:y' });
    expect(parseCpArg('dir/a:b')).toEqual({ kind: 'local', path: 'dir/a:b' });
    expect(parseCpArg('file')).toEqual({ kind: 'local', path: 'file' });
    expect(parseCpArg(':odd')).toEqual({ kind: 'local', path: ':odd' });
  });

  it('refuses a remote word whose NAME is no VM name, with the ./ advice', () => {
    expect(code(() => parseCpArg('a b:x'))).toBe(64);
    expect(() => parseCpArg('a b:x')).toThrow(/\.\/a b:x/);
  });

  it('plans up and down; one side a VM, one VM, no VM-to-VM', () => {
    expect(planCopy(['a', 'b', 'dev:/tmp/'])).toEqual({
      direction: 'up',
      vm: 'dev',
      sources: ['a', 'b'],
      dest: '/tmp/',
    });
    expect(planCopy(['dev:/a', 'dev:/b', '.'])).toEqual({
      direction: 'down',
      vm: 'dev',
      sources: ['/a', '/b'],
      dest: '.',
    });
    expect(code(() => planCopy(['a', 'b']))).toBe(64);
    expect(planCopy(['dev:/a', 'root@web:/b'])).toEqual({
      direction: 'across',
      vm: 'dev',
      sources: ['/a'],
      dest: '/b',
      to: { vm: 'web', user: 'root' },
    });
    expect(code(() => planCopy(['dev:/a', 'x', 'web:/b']))).toBe(64);
    expect(code(() => planCopy(['dev:/a', 'x', '.']))).toBe(64);
    expect(code(() => planCopy(['dev:/a', 'web:/b', '.']))).toBe(64);
    expect(code(() => planCopy(['x']))).toBe(64);
  });

  it('quotes every word for the remote shell', () => {
    expect(shq("it's")).toBe(`'it'\\''s'`);
    expect(remoteSh('echo "$1"', ['a b'])).toBe(`sh -c 'echo "$1"' pim-cp 'a b'`);
  });

  it('tells a missing remote source (66) from a destination that cannot be written (73) and a refusal (77)', () => {
    const down = { direction: 'down' as const, vm: 'dev', sources: ['/nope'], dest: '.' };
    const up = { direction: 'up' as const, vm: 'dev', sources: ['x'], dest: '/nope/x' };
    expect(copyError(down, 'scp: /nope: No such file or directory\n', 1).code).toBe(66);
    expect(copyError(up, 'scp: /nope/x: No such file or directory\n', 1).code).toBe(73);
    expect(copyError(up, 'scp: /root/x: Permission denied\n', 1).code).toBe(77);
    expect(copyError(up, 'lost connection\n', 1).code).toBe(69);
  });
});

describe('prepareSsh against a fake VM and a fake agent', () => {
  const saved = { ...process.env };
  let tmp = '';
  const children: import('node:child_process').ChildProcess[] = [];
  const servers: import('node:net').Server[] = [];
  afterEach(() => {
    process.env = { ...saved };
    for (const c of children.splice(0)) c.kill('SIGKILL');
    for (const s of servers.splice(0)) s.close();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  async function setup(files: Record<string, Buffer>, agent = true) {
    const { spawn } = await import('node:child_process');
    const net = await import('node:net');
    const { vmFiles } = await import('../../lib/core/paths.ts');
    const { qemuMarker, writeMeta } = await import('../../lib/vm/state.ts');
    tmp = fs.mkdtempSync(join(tmpdir(), 'pims-'));
    process.env.XDG_RUNTIME_DIR = tmp;
    delete process.env.PIM_SSH_KEY;
    delete process.env.PIM_SSH_USER;
    const dir = join(tmp, 'pim');
    fs.mkdirSync(dir, { mode: 0o700 });
    const f = vmFiles('v1', dir);
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e9)', qemuMarker(f)], { stdio: 'ignore' });
    children.push(child);
    fs.writeFileSync(f.pid, `${child.pid}\n`);
    const meta = {
      name: 'v1',
      kind: 'run',
      image: '/x',
      pid: child.pid!,
      ssh_port: 41022,
      bridged: false,
      root: false,
      agent,
      accel: 'tcg',
      mem: '256M',
      cpus: 1,
      snapshot: true,
      owner: { uid: 0, user: 'root' },
      started: '',
    } as const;
    writeMeta(f, meta as never);
    const handles = new Map<number, Buffer>();
    let next = 1;
    if (agent) {
      const srv = net.createServer((c) => {
        let buf = '';
        c.on('error', () => undefined);
        c.on('data', (d) => {
          buf += d.toString('latin1').replace(/\xff/g, '');
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const m = JSON.parse(buf.slice(0, nl));
            buf = buf.slice(nl + 1);
            const reply = (r: unknown) => c.write(JSON.stringify(r) + '\n');
            if (m.execute === 'guest-sync-delimited')
              c.write(
                Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: m.arguments.id }) + '\n')]),
              );
            else if (m.execute === 'guest-ping') reply({ return: {} });
            else if (m.execute === 'guest-file-open') {
              const b = files[m.arguments.path];
              if (!b) reply({ error: { class: 'GenericError', desc: 'No such file' } });
              else {
                handles.set(next, b);
                reply({ return: next++ });
              }
            } else if (m.execute === 'guest-file-read') {
              const b = handles.get(m.arguments.handle)!;
              reply({ return: { count: b.length, 'buf-b64': b.toString('base64'), eof: true } });
            } else reply({ return: {} });
          }
        });
      });
      servers.push(srv);
      await new Promise<void>((r) => srv.listen(f.ga, r));
    }
    const { requireRunning } = await import('../../lib/vm/state.ts');
    const { knownRef } = await import('../../lib/vm/ref.ts');
    return requireRunning(knownRef('v1', dir));
  }

  it("pins the agent's keys (a .pub file, and the public half of dropbear's key file) before any connection", async () => {
    const { publicKey } = generateKeyPairSync('ed25519');
    const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
    const dropbear = wire(Buffer.from('ssh-ed25519'), Buffer.concat([Buffer.alloc(32, 5), raw]));
    const rsa = wire(Buffer.from('ssh-rsa'), Buffer.from([1, 0, 1]), Buffer.alloc(129, 0x7f)).toString('base64');
    const vm = await setup({
      '/etc/ssh/ssh_host_rsa_key.pub': Buffer.from(`ssh-rsa ${rsa} root@g\n`),
      '/etc/dropbear/dropbear_ed25519_host_key': dropbear,
    });
    const { prepareSsh } = await import('../../lib/guest/reach.ts');
    const said: string[] = [];
    const p = await prepareSsh(vm, {}, (m) => said.push(m));
    expect(said).toEqual([]);
    expect(p.master).toBe(false);
    expect(p.control).toBe(join(tmp, 'pim', 'v1.ssh', 'c-root'));
    expect(fs.statSync(p.files.dir).mode & 0o777).toBe(0o700);
    expect(fs.statSync(p.files.config).mode & 0o777).toBe(0o600);
    const kh = fs
      .readFileSync(p.files.knownHosts, 'utf8')
      .split('\n')
      .filter((l) => l && !l.startsWith('#'));
    expect(kh).toEqual([
      `[127.0.0.1]:41022 ssh-rsa ${rsa}`,
      `[127.0.0.1]:41022 ${keyLine(wire(Buffer.from('ssh-ed25519'), raw))}`,
    ]);
    const cfg = fs.readFileSync(p.files.config, 'utf8');
    expect(cfg).toContain('  StrictHostKeyChecking yes\n');
    expect(cfg).toContain('  Port 41022\n');
    // a planted symlink in place of the directory is refused, never followed
    fs.rmSync(p.files.dir, { recursive: true });
    fs.symlinkSync(tmp, p.files.dir);
    await expect(prepareSsh(vm)).rejects.toMatchObject({ code: 73 });
  });

  it('without an agent: accept-new, said once', async () => {
    const vm = await setup({}, false);
    const { prepareSsh } = await import('../../lib/guest/reach.ts');
    const said: string[] = [];
    const p = await prepareSsh(vm, {}, (m) => said.push(m));
    expect(fs.readFileSync(p.files.config, 'utf8')).toContain('  StrictHostKeyChecking accept-new\n');
    await prepareSsh(vm, {}, (m) => said.push(m));
    expect(said.length).toBe(1);
    expect(said[0]).toMatch(/accept-new/);
  });
});

describe("pim's ed25519 keys (generateSoundKey)", () => {
  it("never hands out a pair that ssh2 cannot read back (ssh2's generator makes one in ~256; mscdex/ssh2#1390)", async () => {
    const { generateSoundKey } = await import('../../lib/guest/userkey.ts');
    const { utils } = (await import('ssh2')).default as typeof import('ssh2');
    // the bug is real: ssh2's own generator, until it makes a pair its parseKey refuses
    let bad: { private: string; public: string } | null = null;
    for (let i = 0; i < 20_000 && !bad; i++) {
      const kp = utils.generateKeyPairSync('ed25519', { comment: 't' });
      if (utils.parseKey(kp.private) instanceof Error) bad = kp;
    }
    expect(bad).not.toBeNull();
    // generateSoundKey given that pair first throws it away and makes another
    let calls = 0;
    const replay = {
      ...utils,
      generateKeyPairSync: ((...a: Parameters<typeof utils.generateKeyPairSync>) =>
        calls++ === 0 ? bad : utils.generateKeyPairSync(...a)) as typeof utils.generateKeyPairSync,
    };
    const kp = generateSoundKey(replay, 'pim:test');
    expect(calls).toBe(2);
    expect(utils.parseKey(kp.private)).not.toBeInstanceOf(Error);
    expect(utils.parseKey(kp.public)).not.toBeInstanceOf(Error);
    expect(kp.public).toMatch(/^ssh-ed25519 [A-Za-z0-9+/=]+ pim:test$/);
  });
});
