// The answer files as pim renders them for the default profile and a demanding
// one: secure by default, a plain password hashed before anything sees it,
// pim's required packages kept, a non-root ssh_user created. The real
// validators and the real Debian root run in test/bats/answers.bats.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { verify } from 'unixcrypt';
import { parse } from 'yaml';
import { loadProfile } from '../../lib/config/profile.ts';
import { renderAnswer, startServer } from '../../lib/install/serve.ts';
import { REQUIRED_PACKAGES } from '../../lib/config/answers.ts';
import { buildInputs, canonical, planBuild } from '../../lib/builder/plan.ts';

let tmp: string;
const saved = { ...process.env };
const w = (rel: string, text: string) => {
  const p = join(tmp, 'config', 'pim', rel);
  fs.mkdirSync(join(p, '..'), { recursive: true });
  fs.writeFileSync(p, text);
};
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimu-answers-'));
  process.env.XDG_CONFIG_HOME = join(tmp, 'config');
  process.env.XDG_DATA_HOME = join(tmp, 'data');
  process.env.XDG_CACHE_HOME = join(tmp, 'cache');
});
afterEach(() => {
  process.env = { ...saved };
  fs.rmSync(tmp, { recursive: true, force: true });
});

const PLAIN = "s3cret pass'word";
const HARD =
  [
    'hard:',
    '  hostname: web1',
    '  domain: example.org',
    '  username: alice',
    '  ssh_user: deploy',
    `  password: ${JSON.stringify(PLAIN)}`,
    '  ssh_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA8xj0 one@host", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9yk1 two@host"]',
    '  packages: [nginx, openssh-server]',
    'hardu:',
    '  distro: ubuntu',
    '  hostname: web2',
    '  username: alice',
    '  ssh_user: deploy',
    `  password: ${JSON.stringify(PLAIN)}`,
    '  ssh_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA8xj0 one@host"]',
    'ubu: {distro: ubuntu}',
  ].join('\n') + '\n';
const URL = 'http://10.0.2.2:8080';
const render = async (route: '/preseed.cfg' | '/user-data', name: string) =>
  renderAnswer(route, await loadProfile(name), URL)!.body;
/** The late_command of a preseed, joined as debconf joins a value's lines (a trailing \ continues it). */
const lateCommand = (preseed: string) =>
  /^d-i preseed\/late_command string (.*)$/m.exec(preseed.replace(/\\\n/g, ''))![1]!;

describe('secure by default: no password', () => {
  it('the default profile has no password; the Debian account is locked and sshd refuses passwords', async () => {
    const p = await loadProfile('default');
    expect(p.value.password_hash).toBeUndefined();
    expect(p.value.password).toBeUndefined();
    const preseed = await render('/preseed.cfg', 'default');
    expect(preseed).not.toContain('$6$');
    expect(preseed).toMatch(/^d-i passwd\/user-password-crypted password !$/m);
    expect(lateCommand(preseed)).toContain(
      "'PasswordAuthentication no' 'KbdInteractiveAuthentication no' > /target/etc/ssh/sshd_config.d/10-pim.conf",
    );
  });
  it('Ubuntu: identity.password is "!" (subiquity requires one: a locked account) and ssh.allow-pw false', async () => {
    w('profiles.d/p.yml', HARD);
    const ai = parse(await render('/user-data', 'ubu')).autoinstall;
    expect(ai.identity.password).toBe('!');
    expect(ai.ssh['allow-pw']).toBe(false);
    expect(ai.ssh).not.toHaveProperty('authorized-keys'); // no empty list
    expect(ai['late-commands'].join('\n')).toContain('PasswordAuthentication no');
  });
  it('password_hash: null unsets a password a profile below set; password and password_hash together are 78', async () => {
    w('profiles.d/p.yml', 'default:\n  password_hash: "$6$x$y"\na: {password_hash: null}\nb: {password: x}\n');
    expect((await loadProfile('a')).value).not.toHaveProperty('password_hash');
    await expect(loadProfile('b')).rejects.toMatchObject({
      code: 78,
      message: expect.stringMatching(/p\.yml:4: set password or password_hash, not both/),
    });
    w('profiles.d/p.yml', 'c: {password: ""}\nd: {password_hash: "$6$a b"}\n');
    await expect(loadProfile('c')).rejects.toMatchObject({ code: 78 });
    await expect(loadProfile('d')).rejects.toMatchObject({ code: 78 });
  });
});

describe("a profile's password", () => {
  it('is hashed (SHA-512 crypt) before any template sees it, on every builder, and the plain text is nowhere', async () => {
    w('profiles.d/p.yml', HARD + 'hardc: {builder: cloud-init, image: x, password: "s3cret pass\'word"}\n');
    const p = await loadProfile('hard');
    const hash = p.value.password_hash as string;
    expect(hash).toMatch(/^\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}$/);
    expect(verify(PLAIN, hash)).toBe(true);
    expect(p.value).not.toHaveProperty('password');
    expect(p.origins.password_hash).toMatch(/p\.yml:6 \(password, hashed\)$/);
    // the same password, the same profile: the same hash (a build's key stays the same)
    expect((await loadProfile('hard')).value.password_hash).toBe(hash);
    expect((await loadProfile('hardu')).value.password_hash).not.toBe(hash); // another salt
    const preseed = await render('/preseed.cfg', 'hard');
    expect(preseed).toContain(`d-i passwd/user-password-crypted password ${hash}\n`);
    expect(lateCommand(preseed)).not.toContain('PasswordAuthentication');
    const ai = parse(await render('/user-data', 'hardu')).autoinstall;
    expect(verify(PLAIN, ai.identity.password)).toBe(true);
    expect(ai.ssh['allow-pw']).toBe(true);
    const cloud = await render('/user-data', 'hardc');
    expect(cloud).toContain(JSON.stringify((await loadProfile('hardc')).value.password_hash));
    for (const body of [preseed, await render('/user-data', 'hardu'), cloud]) expect(body).not.toContain('s3cret');
    // the salt key is the user's own
    expect(fs.statSync(join(tmp, 'data', 'pim', 'password-salt.key')).mode & 0o777).toBe(0o600);
  });
  it("never reaches a build's inputs (the build record, its log, pim-build show): only the hash does", async () => {
    w('profiles.d/p.yml', HARD);
    const p = await loadProfile('hard');
    const plan = await planBuild(p);
    const inputs = buildInputs(
      plan,
      { '/preseed.cfg': renderAnswer('/preseed.cfg', p, URL)!.body },
      { name: 'x', checksum: 'sha256:0' },
    );
    const text = canonical(inputs);
    expect(text).not.toContain('s3cret');
    expect(text).toContain(p.value.password_hash as string);
  });
});

describe('packages', () => {
  it("a profile's packages add to pim's required ones, which cannot drop out", async () => {
    w('profiles.d/p.yml', HARD);
    const req = REQUIRED_PACKAGES.installer;
    expect(req).toEqual(['openssh-server', 'qemu-guest-agent', 'sudo', 'cloud-init']);
    expect((await loadProfile('hard')).value.packages).toEqual([...req, 'nginx']);
    expect(await render('/preseed.cfg', 'hard')).toContain(
      `d-i pkgsel/include string ${[...req, 'nginx'].join(' ')}\n`,
    );
    expect(parse(await render('/user-data', 'ubu')).autoinstall.packages).toEqual(req);
    w('profiles.d/p.yml', 'e: {packages: []}\nf: {packages: ["a; reboot"]}\n');
    expect((await loadProfile('e')).value.packages).toEqual(req);
    await expect(loadProfile('f')).rejects.toMatchObject({ code: 78 });
  });
});

describe('the Debian preseed', () => {
  it('starts with #_preseed_V1', async () => {
    expect((await render('/preseed.cfg', 'default')).split('\n')[0]).toBe('#_preseed_V1');
  });
  it('creates a non-root ssh_user other than username, and gives it the keys and sudo', async () => {
    w('profiles.d/p.yml', HARD);
    const late = lateCommand(await render('/preseed.cfg', 'hard'));
    expect(late).toMatch(
      /^\s*in-target id -u deploy >\/dev\/null 2>&1 \|\| in-target useradd -m -d \/home\/deploy -s \/bin\/bash deploy; /,
    );
    expect(late).toContain(
      "printf '%s\\n' 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA8xj0 one@host' 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9yk1 two@host' >> /target/home/deploy/.ssh/authorized_keys",
    );
    expect(late).toContain('in-target chown -R deploy: /home/deploy/.ssh');
    expect(late).toContain("'deploy ALL=(ALL) NOPASSWD: ALL' > /target/etc/sudoers.d/pim");
    // the user d-i makes is left to d-i
    expect(lateCommand(await render('/preseed.cfg', 'default'))).not.toContain('useradd');
  });
  it('refuses an SSH key of more than one line, a hostname that is not one (78)', async () => {
    w('profiles.d/p.yml', 'a: {ssh_keys: ["ssh-ed25519 AAAA\\nd-i x"]}\nb: {hostname: "a b"}\n');
    await expect(loadProfile('a')).rejects.toMatchObject({ code: 78 });
    await expect(loadProfile('b')).rejects.toMatchObject({ code: 78 });
  });
});

describe('pim-serve', () => {
  it("answers /network-config with an empty document (cloud-init keeps its fallback), not a 404 that cloud-init 24.3+ retries ten times; a profile's own template replaces it", async () => {
    w('preseeds.d/own.network-config.eta', 'version: 2\nethernets: {eth0: {dhcp4: true}}\n');
    w('profiles.d/p.yml', 'own: {}\n');
    const s = await startServer({ profile: 'default', port: 0, bind: '127.0.0.1', log: () => {} });
    const o = await startServer({ profile: 'own', port: 0, bind: '127.0.0.1', log: () => {} });
    try {
      const r = await fetch(`${s.url}/network-config`);
      expect(r.status).toBe(200);
      expect(parse(await r.text())).toBeNull(); // cloud-init's load_yaml: None, "no network config"
      expect(parse(await (await fetch(`${o.url}/network-config`)).text())).toEqual({
        version: 2,
        ethernets: { eth0: { dhcp4: true } },
      });
    } finally {
      await s.close();
      await o.close();
    }
  });
});
