import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { checkIsoPath, installerCmdline } from '../../lib/builder/iso-boot.ts';
import { buildInputs, buildKey, canonical, inputsDiff, planBuild } from '../../lib/builder/plan.ts';
import {
  buildByKey,
  buildDisk,
  commitBuild,
  disksBackedBy,
  findBuild,
  latestBuild,
  listBuilds,
  removeBuild,
  type BuildRecord,
} from '../../lib/image/registry.ts';
import { overlayForBuild, resolveImage } from '../../lib/image/store.ts';
import { readQcow2Header } from '../../lib/image/qcow2.ts';
import { keyBlob } from '../../lib/builder/ssh.ts';

let tmp: string;
const saved = { ...process.env };
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimu-build-'));
  process.env.XDG_CONFIG_HOME = join(tmp, 'config');
  process.env.XDG_DATA_HOME = join(tmp, 'data');
  process.env.XDG_CACHE_HOME = join(tmp, 'cache');
});
afterEach(() => {
  process.env = { ...saved };
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('the installer command line', () => {
  it("puts pim's words before ---, so nothing of the installer's leaks into the installed boot loader", () => {
    expect(installerCmdline('debian', 'http://10.0.2.2:4242')).toBe(
      'auto=true priority=critical url=http://10.0.2.2:4242/preseed.cfg console=ttyS0,115200n8 ---',
    );
    expect(installerCmdline('ubuntu', 'http://10.0.2.2:4242')).toBe(
      'autoinstall ds=nocloud-net;s=http://10.0.2.2:4242/ console=ttyS0,115200n8 ---',
    );
  });
  it('Ubuntu: ds=nocloud-net, which every cloud-init takes (nocloud fetches over HTTP only from 23.2 on)', () => {
    expect(installerCmdline('ubuntu', 'http://h:1', '', false, { hostname: 'web1', domain: 'example.org' })).toMatch(
      /^autoinstall ds=nocloud-net;s=http:\/\/h:1\/ /,
    );
  });
  it("Debian url= mode: the profile's hostname and domain as boot parameters (a preseed fetched over the network comes too late for netcfg)", () => {
    expect(installerCmdline('debian', 'http://h:1', '', false, { hostname: 'web1', domain: 'example.org' })).toBe(
      'auto=true priority=critical url=http://h:1/preseed.cfg hostname=web1 domain=example.org console=ttyS0,115200n8 ---',
    );
    // an injected preseed is read before the network: its netcfg answers apply
    expect(installerCmdline('debian', 'http://h:1', '', true, { hostname: 'web1', domain: 'example.org' })).toBe(
      'auto=true priority=critical console=ttyS0,115200n8 ---',
    );
  });
  it('leaves url= out when the preseed is injected into the initrd', () => {
    expect(installerCmdline('debian', 'http://10.0.2.2:4242', '', true)).toBe(
      'auto=true priority=critical console=ttyS0,115200n8 ---',
    );
  });
  it("keeps a profile's own --- part after pim's", () => {
    expect(installerCmdline('debian', 'http://h:1', 'vga=788 --- quiet splash')).toBe(
      'auto=true priority=critical url=http://h:1/preseed.cfg console=ttyS0,115200n8 vga=788 --- quiet splash',
    );
  });
  it('refuses ISO paths that leave the ISO', () => {
    expect(checkIsoPath('/install.amd/vmlinuz', 'x')).toBe('install.amd/vmlinuz');
    for (const bad of ['', '../etc/passwd', 'a/../../b', 'a//b', '.'])
      expect(() => checkIsoPath(bad, 'boot.kernel')).toThrow(expect.objectContaining({ code: 78 }));
  });
});

function writeConfig(files: Record<string, string>) {
  for (const [p, text] of Object.entries(files)) {
    const f = join(tmp, 'config', 'pim', p);
    fs.mkdirSync(join(f, '..'), { recursive: true });
    fs.writeFileSync(f, text);
  }
}

describe('build plan and cache key', () => {
  it('reads the build settings with defaults, and the scripts the profile names', async () => {
    writeConfig({
      'profiles.d/t.yml': 'dev:\n  iso: tb\n  scripts: [a.sh, b.sh]\n  ssh_user: root\n  disk_size: 512M\n',
      'scripts.d/a.sh': 'echo a\n',
      'scripts.d/b.sh': 'echo b\n',
    });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const plan = await planBuild(await loadProfile('dev'));
    expect(plan).toMatchObject({
      layout: 'debian',
      iso: 'tb',
      firmware: 'bios',
      disk: { size: '512M', format: 'qcow2' },
      sshUser: 'root',
      keepKey: false,
      mem: '1G',
      cpus: 2,
    });
    expect(plan.boot).toEqual({
      kernel: 'install.amd/vmlinuz',
      initrd: 'install.amd/initrd.gz',
      append: '',
      inject: false,
    });
    expect(plan.scripts.map((s) => [s.label, s.content])).toEqual([
      ['scripts.d/a.sh', 'echo a\n'],
      ['scripts.d/b.sh', 'echo b\n'],
    ]);
  });
  it('runs scripts.d/PROFILE.sh (else default.sh) when the profile lists none; Ubuntu profiles use casper/', async () => {
    writeConfig({ 'profiles.d/t.yml': 'u:\n  distro: ubuntu\n  iso: x\n' });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const plan = await planBuild(await loadProfile('u'));
    expect(plan.layout).toBe('ubuntu');
    expect(plan.boot.kernel).toBe('casper/vmlinuz');
    expect(plan.scripts.map((s) => s.label)).toEqual(['scripts.d/default.sh']);
    expect(plan.sshUser).toBe('pim'); // username
  });
  it('refuses a bad disk size or boot path with 78 and where it was set', async () => {
    writeConfig({ 'profiles.d/t.yml': 'a:\n  iso: x\n  disk_size: lots\nb:\n  iso: x\n  boot: {kernel: ../x}\n' });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    await expect(planBuild(await loadProfile('a'))).rejects.toMatchObject({
      code: 78,
      message: expect.stringMatching(/t\.yml:3: disk_size/),
    });
    await expect(planBuild(await loadProfile('b'))).rejects.toMatchObject({
      code: 78,
      message: expect.stringContaining('boot.kernel'),
    });
  });
  it('gives the same key for the same inputs (whatever the key order) and another for a changed script, answer, disk size or ISO', async () => {
    writeConfig({ 'profiles.d/t.yml': 'dev:\n  iso: tb\n  scripts: [a.sh]\n', 'scripts.d/a.sh': 'echo a\n' });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const plan = await planBuild(await loadProfile('dev'));
    const iso = { name: 'tb', checksum: 'sha256:' + '0'.repeat(64) };
    const base = buildInputs(plan, { '/preseed.cfg': 'd-i x\n' }, iso);
    const k = buildKey(base);
    expect(k).toMatch(/^[0-9a-f]{64}$/);
    expect(buildKey(JSON.parse(canonical(base)))).toBe(k);
    const reordered = { ...base, profile: Object.fromEntries(Object.entries(base.profile).reverse()) };
    expect(buildKey(reordered)).toBe(k);
    const script = { ...plan, scripts: [{ ...plan.scripts[0]!, content: 'echo b\n' }] };
    expect(buildKey(buildInputs(script, { '/preseed.cfg': 'd-i x\n' }, iso))).not.toBe(k);
    expect(buildKey(buildInputs(plan, { '/preseed.cfg': 'd-i y\n' }, iso))).not.toBe(k);
    expect(
      buildKey(buildInputs({ ...plan, disk: { size: '9G', format: 'qcow2' } }, { '/preseed.cfg': 'd-i x\n' }, iso)),
    ).not.toBe(k);
    expect(
      buildKey(buildInputs(plan, { '/preseed.cfg': 'd-i x\n' }, { ...iso, checksum: 'sha256:' + '1'.repeat(64) })),
    ).not.toBe(k);
    expect(inputsDiff(base, buildInputs(script, { '/preseed.cfg': 'd-i x\n' }, iso))).toEqual(['files.scripts.d/a.sh']);
  });
});

describe('stage keys (layered builds)', () => {
  it('a changed script changes provision and finish, not install; a changed answer changes all three; generalize only finish; from: keys the parent', async () => {
    writeConfig({
      'profiles.d/t.yml': 'dev:\n  iso: tb\n  scripts: [a.sh]\nkid:\n  from: dev\n',
      'scripts.d/a.sh': 'echo a\n',
    });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const { stageKeys } = await import('../../lib/builder/stages.ts');
    const plan = await planBuild(await loadProfile('dev'));
    const iso = { name: 'tb', checksum: 'sha256:' + '0'.repeat(64) };
    const keys = (p: typeof plan, answer = 'd-i x\n', from?: string) => {
      const k = stageKeys(p, buildInputs(p, { '/preseed.cfg': answer }, iso), from);
      return [k.install.key, k.provision.key, k.finish.key];
    };
    const [i, pr, f] = keys(plan);
    const script = keys({ ...plan, scripts: [{ ...plan.scripts[0]!, content: 'echo b\n' }] });
    expect(script[0]).toBe(i);
    expect(script[1]).not.toBe(pr);
    expect(script[2]).not.toBe(f);
    expect(keys(plan, 'd-i y\n').every((k, n) => k !== [i, pr, f][n])).toBe(true);
    expect(keys({ ...plan, generalize: false }).slice(0, 2)).toEqual([i, pr]);
    expect(keys({ ...plan, generalize: false })[2]).not.toBe(f);
    expect(keys({ ...plan, mem: '2G' })).toEqual([i, pr, f]);
    expect(keys(plan, 'd-i x\n', 'a'.repeat(64))[0]).not.toBe(keys(plan, 'd-i x\n', 'b'.repeat(64))[0]);
    const kid = await planBuild(await loadProfile('kid'));
    expect(kid).toMatchObject({ from: 'dev', installs: [] });
  });
  it('--force replaces a stage without changing it under a build that reads it: the reader keeps the old bytes (its own links), the next reader gets the new ones', async () => {
    const s = await import('../../lib/builder/stages.ts');
    const key = 'c'.repeat(64);
    const store = (disk: string) => {
      const dir = s.stageTmp(key);
      fs.writeFileSync(join(dir, 'disk.qcow2'), disk);
      fs.writeFileSync(join(dir, 'ssh-key'), `key of ${disk}`);
      const rec = {
        kind: 'install' as const,
        key,
        created: new Date().toISOString(),
        seconds: 1,
        inputs: {},
        disk: { file: 'disk.qcow2', format: 'qcow2' as const },
        efivars: null,
        seed: null,
        sshKey: { file: 'ssh-key', public: `ssh-ed25519 ${disk}` },
        userKey: null,
        profile: 'dev',
      };
      return s.commitStage(dir, rec, true);
    };
    store('version one');
    const reader = fs.mkdtempSync(join(tmp, 'build-'));
    const pinned = s.pinStage(key, reader)!;
    expect(pinned.disk.startsWith(`${reader}/`)).toBe(true);
    expect(pinned.record.sshKey!.public).toBe('ssh-ed25519 version one');
    store('version two'); // another build's --force
    // what the first build reads has not changed; the stage is the new version, read-only
    expect(fs.readFileSync(pinned.disk, 'utf8')).toBe('version one');
    expect(fs.readFileSync(pinned.sshKey!, 'utf8')).toBe('key of version one');
    const dir = s.stageDir(key);
    expect(fs.readFileSync(join(dir, 'disk.qcow2'), 'utf8')).toBe('version two');
    expect(fs.statSync(dir).mode & 0o777).toBe(0o500);
    expect(fs.readdirSync(s.stagesDir()).filter((n) => n.startsWith('.'))).toEqual([]);
    const next = s.pinStage(key, fs.mkdtempSync(join(tmp, 'build-')))!;
    expect(fs.readFileSync(next.disk, 'utf8')).toBe('version two');
    // a stage that is not there (moved aside mid-replacement, removed) pins nothing, and leaves nothing
    const other = fs.mkdtempSync(join(tmp, 'build-'));
    expect(s.pinStage('d'.repeat(64), other)).toBeNull();
    expect(fs.readdirSync(other)).toEqual([]);
  });
  it("a build waiting for a stage's lock wakes when the stage appears (fs.watch), not at the next poll; a lock freed without an event is found by the poll", async () => {
    const s = await import('../../lib/builder/stages.ts');
    const { acquireLock } = await import('../../lib/core/lock.ts');
    const key = 'e'.repeat(64);
    fs.mkdirSync(s.stagesDir(), { recursive: true });
    const held = await acquireLock(join(s.stagesDir(), `.install-${key.slice(0, 16)}.lock`), 'test');
    const said: string[] = [];
    const there = join(s.stagesDir(), 'there');
    const ready = () => fs.existsSync(there);
    // a poll of a minute: only the watch can end this wait within the test's time
    const waiting = s.waitStageLock(key, new AbortController().signal, (m) => said.push(m), ready, {
      watched: 60_000,
      unwatched: 60_000,
    });
    await new Promise((r) => setTimeout(r, 50));
    fs.writeFileSync(there, '');
    await expect(waiting).resolves.toBeNull();
    expect(said).toEqual([`waiting for install ${key.slice(0, 8)}: another build is making it`]);
    fs.rmSync(there);
    // the lock freed (no file changes): the poll takes it
    const again = s.waitStageLock(
      key,
      new AbortController().signal,
      () => undefined,
      () => false,
      { watched: 50, unwatched: 50 },
    );
    await new Promise((r) => setTimeout(r, 100));
    await held.release();
    const lock = await again;
    expect(lock).not.toBeNull();
    await lock!.release();
  });
  it('from: naming the profile itself is 78 where it was set', async () => {
    writeConfig({ 'profiles.d/t.yml': 'me:\n  from: me\n' });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    await expect(planBuild(await loadProfile('me'))).rejects.toMatchObject({
      code: 78,
      message: expect.stringMatching(/t\.yml:2: from: me is the profile itself/),
    });
  });
});

describe('builder: cloud-init', () => {
  it('plans from the image key, reads sources as bytes, leaves installs out, and keys builder and sources', async () => {
    writeConfig({
      'profiles.d/t.yml':
        'c:\n  builder: cloud-init\n  image: cloudy\n  sources: [network-config, blob.bin]\n  installs: [x.sh]\n',
      'sources.d/network-config': 'version: 2\n',
      'sources.d/blob.bin': '',
      'installs.d/x.sh': 'echo late\n',
    });
    fs.writeFileSync(join(tmp, 'config/pim/sources.d/blob.bin'), Buffer.from([0, 255, 1, 254]));
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const plan = await planBuild(await loadProfile('c'));
    expect(plan).toMatchObject({ builder: 'cloud-init', iso: 'cloudy', installs: [] });
    expect(plan.sources.map((f) => [f.label, f.content])).toEqual([
      ['sources.d/network-config', Buffer.from('version: 2\n')],
      ['sources.d/blob.bin', Buffer.from([0, 255, 1, 254])],
    ]);
    const iso = { name: 'cloudy', checksum: 'sha256:' + '0'.repeat(64) };
    const answers = { '/user-data': '#cloud-config\n', '/meta-data': 'instance-id: x\n' };
    const inputs = buildInputs(plan, answers, iso);
    expect(inputs).toMatchObject({ builder: 'cloud-init', boot: null });
    expect(Object.keys(inputs.files).sort()).toEqual([
      'scripts.d/default.sh',
      'sources.d/blob.bin',
      'sources.d/network-config',
    ]);
    const changed = {
      ...plan,
      sources: [plan.sources[0]!, { ...plan.sources[1]!, content: Buffer.from([0, 255, 1, 253]) }],
    };
    expect(inputsDiff(inputs, buildInputs(changed, answers, iso))).toEqual(['files.sources.d/blob.bin']);
  });
  it("keeps an installer's inputs as they were (no builder key), so its cached builds stay hits", async () => {
    writeConfig({ 'profiles.d/t.yml': 'dev:\n  iso: tb\n' });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const inputs = buildInputs(await planBuild(await loadProfile('dev')), {}, { name: 'tb', checksum: 'sha256:00' });
    expect('builder' in inputs).toBe(false);
    expect(inputs.boot).not.toBeNull();
  });
  it('refuses a profile with no image, a missing source, or a source named like a template (78)', async () => {
    writeConfig({
      'profiles.d/t.yml':
        'a: {builder: cloud-init}\nb: {builder: cloud-init, image: x, sources: [nope]}\nc: {builder: cloud-init, image: x, sources: [user-data]}\n',
      'sources.d/user-data': '#cloud-config\n',
    });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    await expect(planBuild(await loadProfile('a'))).rejects.toMatchObject({
      code: 78,
      message: expect.stringContaining('names no image'),
    });
    await expect(loadProfile('b')).rejects.toMatchObject({
      code: 78,
      message: expect.stringContaining('sources.d/nope does not exist'),
    });
    await expect(planBuild(await loadProfile('c'))).rejects.toMatchObject({
      code: 78,
      message: expect.stringContaining("comes from the profile's user-data template"),
    });
  });
  it("renders pim's user-data as #cloud-config, one key a line of JSON, cloud_config's keys kept and pim's set over them", async () => {
    writeConfig({
      'profiles.d/t.yml':
        [
          'c:',
          '  builder: cloud-init',
          '  image: x',
          '  hostname: web',
          '  ssh_keys: ["ssh-ed25519 AAAA k1"]',
          '  packages: [nginx]',
          '  cloud_config:',
          '    users: [default, {name: ops}]',
          '    runcmd: [[echo, "a b"], "true"]',
          '    power_state: {mode: reboot}',
          'r: {builder: cloud-init, image: x, ssh_user: root, domain: ""}',
        ].join('\n') + '\n',
    });
    const { loadProfile } = await import('../../lib/config/profile.ts');
    const { renderAnswer } = await import('../../lib/install/serve.ts');
    const body = renderAnswer('/user-data', await loadProfile('c'), 'http://10.0.2.2:0')!.body;
    const lines = body.split('\n').filter((l) => l && !l.startsWith('#'));
    expect(body.startsWith('#cloud-config\n')).toBe(true);
    const cfg = Object.fromEntries(
      lines.map((l) => [l.slice(0, l.indexOf(': ')), JSON.parse(l.slice(l.indexOf(': ') + 2))]),
    );
    expect(cfg.hostname).toBe('web');
    expect(cfg.fqdn).toBe('web.local');
    expect(cfg.runcmd).toEqual([['echo', 'a b'], 'true']);
    expect(cfg.users).toEqual([
      'default',
      { name: 'ops' },
      expect.objectContaining({
        name: 'pim',
        sudo: 'ALL=(ALL) NOPASSWD:ALL',
        ssh_authorized_keys: ['ssh-ed25519 AAAA k1'],
        lock_passwd: true,
      }),
    ]);
    expect(cfg.packages).toEqual(['nginx']);
    // one boot: pim waits for cloud-init over SSH, so a profile's power_state is its own
    expect(cfg.power_state).toEqual({ mode: 'reboot' });
    // /etc/hosts names the host (Debian's cloud-init leaves it off: sudo cannot resolve the name); key login only
    expect(cfg.manage_etc_hosts).toBe(true);
    expect(cfg.ssh_pwauth).toBe(false);
    const root = renderAnswer('/user-data', await loadProfile('r'), 'http://10.0.2.2:0')!.body;
    expect(root).toContain('disable_root: false');
    // no keys: no ssh_authorized_keys (cloud-init's schema wants at least one)
    expect(root).toMatch(/^users: \["default",\{"name":"root"(,"lock_passwd":false,"passwd":"[^"]+")?\}\]$/m);
    expect(root).not.toContain('ssh_authorized_keys');
    expect(root).not.toMatch(/^power_state:/m);
    expect(root).not.toContain('fqdn');
    // an installer profile still gets the autoinstall user-data
    writeConfig({ 'profiles.d/u.yml': 'u: {distro: ubuntu, iso: x}\n' });
    expect(renderAnswer('/user-data', await loadProfile('u'), 'http://h:1')!.body).toMatch(
      /^#cloud-config\n[\s\S]*^autoinstall:$/m,
    );
  });
  it('attaches the seed as a read-only virtio disk after the boot disk, which keeps boot index 0', async () => {
    const { buildQemuArgv } = await import('../../lib/qemu/argv.ts');
    const a = buildQemuArgv({
      name: 'b',
      accel: 'tcg',
      mem: '256M',
      cpus: 1,
      serial: 'socket',
      agent: false,
      net: { mode: 'none' },
      daemonize: true,
      extra: [],
      files: { qmp: '/r/q', ga: '/r/g', serial: '/r/s', pid: '/r/p', log: '/r/l' },
      disk: { path: '/d/c.qcow2', format: 'qcow2', snapshot: false },
      drives: [{ path: '/d/seed,1.iso', format: 'raw', readonly: true }],
    }).join(' ');
    expect(a).toContain(
      '-drive file=/d/c.qcow2,format=qcow2,if=none,id=disk0 -device virtio-blk-pci,drive=disk0,bootindex=0',
    );
    // a comma in the path is escaped, as everywhere in QEMU's option syntax
    expect(a).toContain(
      '-drive file=/d/seed,,1.iso,format=raw,if=none,id=disk1,readonly=on -device virtio-blk-pci,drive=disk1 ',
    );
  });
  it('waits for cloud-init with one start of it: JSON where --format is known, its text where argparse refuses it, 127 without it', async () => {
    const { WAIT_SCRIPT } = await import('../../lib/builder/cloud.ts');
    const dir = fs.mkdtempSync(join(tmpdir(), 'pim-ciwait-'));
    try {
      const starts = join(dir, 'starts');
      const fake = (body: string) => {
        fs.mkdirSync(join(dir, 'bin'), { recursive: true });
        fs.writeFileSync(join(dir, 'bin', 'cloud-init'), `#!/bin/sh\necho "$*" >> ${starts}\n${body}\n`, {
          mode: 0o755,
        });
      };
      const runIt = (path: string) => {
        try {
          return {
            code: 0,
            out: execFileSync('/bin/sh', ['-c', WAIT_SCRIPT], { env: { PATH: path }, encoding: 'utf8' }),
          };
        } catch (e) {
          const x = e as { status: number; stdout: string };
          return { code: x.status, out: x.stdout };
        }
      };
      // 22.4 and later: JSON, exit 1 on error, one start
      fake('case "$*" in *"--format json"*) printf \'{\\n  "status": "error"\\n}\\n\'; exit 1 ;; esac; exit 9');
      let r = runIt(`${join(dir, 'bin')}:/usr/bin:/bin`);
      expect(r).toEqual({ code: 1, out: '{\n  "status": "error"\n}\n' });
      expect(fs.readFileSync(starts, 'utf8')).toBe('status --wait --long --format json\n');
      // older: --format unknown (argparse: usage on stderr, 2), then the text form
      fs.rmSync(starts);
      fake('case "$*" in *--format*) echo "usage: cloud-init" >&2; exit 2 ;; esac; echo "status: done"');
      r = runIt(`${join(dir, 'bin')}:/usr/bin:/bin`);
      expect(r).toEqual({ code: 0, out: 'status: done\n' });
      expect(fs.readFileSync(starts, 'utf8')).toBe('status --wait --long --format json\nstatus --wait --long\n');
      // no cloud-init at all
      fs.rmSync(join(dir, 'bin'), { recursive: true });
      fs.mkdirSync(join(dir, 'empty'));
      expect(runIt(join(dir, 'empty')).code).toBe(127);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  it("reads the wait and cloud-init's account in one exec: the wait's output and status, then each file with its status", async () => {
    const { ACCOUNT_SCRIPT, splitAccount } = await import('../../lib/builder/cloud.ts');
    const dir = fs.mkdtempSync(join(tmpdir(), 'pim-ciaccount-'));
    try {
      fs.mkdirSync(join(dir, 'bin'));
      fs.writeFileSync(
        join(dir, 'bin', 'cloud-init'),
        '#!/bin/sh\nprintf \'{\\n  "status": "error"\\n}\\n\'; exit 1\n',
        {
          mode: 0o755,
        },
      );
      // this host has no cloud-init files: both are reported missing, the wait's status is the script's
      let code = 0;
      let out = '';
      try {
        out = execFileSync('/bin/sh', ['-c', ACCOUNT_SCRIPT], {
          env: { PATH: `${join(dir, 'bin')}:/usr/bin:/bin` },
          encoding: 'utf8',
        });
      } catch (e) {
        code = (e as { status: number }).status;
        out = (e as { stdout: string }).stdout;
      }
      expect(code).toBe(1);
      const r = splitAccount({ code, stdout: out });
      expect(r.wait).toEqual({ code: 1, stdout: '{\n  "status": "error"\n}\n', stderr: undefined });
      expect(r.result.code).not.toBe(0);
      expect(r.status.code).not.toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    // as a guest prints it: both files there
    const m = '@@pim-cloud-init-account@@';
    expect(
      splitAccount({
        code: 0,
        stdout: `{"status": "done"}\n\n${m} result 0\n{"v1": {}}\n${m} status 0\n{"v1": {"init": {}}}`,
      }),
    ).toEqual({
      wait: { code: 0, stdout: '{"status": "done"}\n', stderr: undefined },
      result: { code: 0, stdout: '{"v1": {}}' },
      status: { code: 0, stdout: '{"v1": {"init": {}}}' },
    });
  });
  it("judges cloud-init's own account of the seeded run: errors and recoverable errors fail with its words, no result.json or no NoCloud is 65", async () => {
    const { judgeCloudInit, sizeBytes } = await import('../../lib/builder/cloud.ts');
    const ok = { code: 0, stdout: '' };
    const result = (v1: object) => ({ code: 0, stdout: JSON.stringify({ v1 }) });
    const none = { code: 1, stdout: '' };
    const good = result({ datasource: 'DataSourceNoCloud [seed=/dev/vdb][dsmode=net]', errors: [] });
    expect(
      judgeCloudInit({
        wait: ok,
        long: {
          code: 0,
          stdout: '{"status": "done", "errors": [], "detail": "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]"}',
        },
        result: good,
        status: none,
      }),
    ).toEqual({
      datasource: 'DataSourceNoCloud [seed=/dev/vdb][dsmode=net]',
      detail: 'DataSourceNoCloud [seed=/dev/vdb][dsmode=net]',
    });
    // errors from every source, once each, the stage named
    const stages = {
      code: 0,
      stdout: JSON.stringify({
        v1: { datasource: 'x', 'modules-final': { errors: ['runcmd failed'] }, init: { errors: [] }, stage: null },
      }),
    };
    expect(() =>
      judgeCloudInit({
        wait: { code: 1, stdout: 'status: error' },
        long: none,
        result: result({ datasource: 'DataSourceNoCloud', errors: ['runcmd failed'] }),
        status: stages,
      }),
    ).toThrow(
      expect.objectContaining({ code: 65, message: 'cloud-init reported 1 error: modules-final: runcmd failed' }),
    );
    expect(() =>
      judgeCloudInit({ wait: ok, long: none, result: result({ errors: ['a', 'b'] }), status: none }),
    ).toThrow(expect.objectContaining({ code: 65, message: 'cloud-init reported 2 errors: a; b' }));
    // status --long names the error without its stage, status.json with it: said once
    const failed = { code: 1, stdout: JSON.stringify({ status: 'error', errors: ['runcmd: x failed'] }) };
    expect(() =>
      judgeCloudInit({
        wait: failed,
        long: failed,
        result: result({ datasource: 'DataSourceNoCloud', errors: ['runcmd: x failed'] }),
        status: { code: 0, stdout: JSON.stringify({ v1: { 'modules-final': { errors: ['runcmd: x failed'] } } }) },
      }),
    ).toThrow(/^cloud-init reported 1 error: modules-final: runcmd: x failed$/);
    expect(() => judgeCloudInit({ wait: ok, long: none, result: none, status: none })).toThrow(
      expect.objectContaining({ code: 65, message: expect.stringContaining('did not finish') }),
    );
    expect(() => judgeCloudInit({ wait: ok, long: none, result: { code: 0, stdout: '{' }, status: none })).toThrow(
      expect.objectContaining({ code: 65 }),
    );
    // the seed was not read: DataSourceNone is a new instance, not pim's
    expect(() =>
      judgeCloudInit({
        wait: ok,
        long: none,
        result: result({ datasource: 'DataSourceNone', errors: [] }),
        status: none,
      }),
    ).toThrow(expect.objectContaining({ code: 65, message: expect.stringContaining("did not read pim's seed") }));
    expect(() => judgeCloudInit({ wait: { code: 127, stdout: '' }, long: none, result: none, status: none })).toThrow(
      expect.objectContaining({ code: 65, message: expect.stringContaining('no cloud-init command') }),
    );
    expect(() =>
      judgeCloudInit({ wait: { code: 1, stdout: 'status: error' }, long: none, result: good, status: none }),
    ).toThrow(expect.objectContaining({ code: 65, message: expect.stringContaining('status: error') }));
    // degraded (23.4 and later): recoverable errors fail the build in cloud-init's words,
    // each stage's from status.json, the report's (no stage) where not said already
    const degraded = {
      code: 0,
      stdout: JSON.stringify({
        v1: {
          init: { errors: [], recoverable_errors: {} },
          'modules-config': { errors: [], recoverable_errors: { WARNING: ['Invalid cloud-config provided'] } },
          'modules-final': { errors: [], recoverable_errors: { DEPRECATED: ['Key "x" is deprecated'] } },
        },
      }),
    };
    const report = {
      code: 2,
      stdout: JSON.stringify({
        status: 'done',
        extended_status: 'degraded done',
        errors: [],
        recoverable_errors: { WARNING: ['Invalid cloud-config provided'], DEPRECATED: ['Key "x" is deprecated'] },
      }),
    };
    const degradedMessage =
      'cloud-init reported 2 recoverable errors (status: degraded): modules-config: WARNING: Invalid cloud-config provided; modules-final: DEPRECATED: Key "x" is deprecated';
    expect(() => judgeCloudInit({ wait: report, long: report, result: good, status: degraded })).toThrow(
      expect.objectContaining({ code: 65, message: degradedMessage }),
    );
    expect(() => judgeCloudInit({ wait: report, long: report, result: good, status: none })).toThrow(
      expect.objectContaining({
        code: 65,
        message:
          'cloud-init reported 2 recoverable errors (status: degraded): WARNING: Invalid cloud-config provided; DEPRECATED: Key "x" is deprecated',
      }),
    );
    // exit 2 with no recoverable error to be found: still not a pass, in the report's own words
    const bare = { code: 2, stdout: JSON.stringify({ status: 'done', extended_status: 'degraded done', detail: 'd' }) };
    expect(() => judgeCloudInit({ wait: bare, long: bare, result: good, status: none })).toThrow(
      expect.objectContaining({ code: 65, message: 'cloud-init ended in error (cloud-init status: degraded done, d)' }),
    );
    expect([sizeBytes('8G'), sizeBytes('512m'), sizeBytes('1.5K'), sizeBytes('100')]).toEqual([
      8 * 2 ** 30,
      512 * 2 ** 20,
      1536,
      100,
    ]);
  });
  it('quotes the error lines of a console: cloud-init warnings and tracebacks, ANSI codes off', async () => {
    const { consoleErrors } = await import('../../lib/builder/build.ts');
    const text =
      '[    0.000000] tsc: Fast TSC calibration failed\nok line\r\n\x1b[0;1;31m[FAILED]\x1b[0m Failed to start ssh.service\n2024 - util.py[WARNING]: Failed to set the hostname\n[  5.1] cloud-init[300]: 2026 - cc_scripts_user.py[WARNING]: Failed to run module scripts_user (scripts in /var/lib/cloud/instance/scripts)\nTraceback (most recent call last):\nerrors: []\n';
    expect(consoleErrors(text)).toEqual([
      '[FAILED] Failed to start ssh.service',
      '2024 - util.py[WARNING]: Failed to set the hostname',
      '[  5.1] cloud-init[300]: 2026 - cc_scripts_user.py[WARNING]: Failed to run module scripts_user (scripts in /var/lib/cloud/instance/scripts)',
      'Traceback (most recent call last):',
    ]);
  });
});

describe('env_hook', () => {
  const hook = (name: string, body: string, mode = 0o755) => {
    writeConfig({ [`hooks.d/${name}`]: body });
    fs.chmodSync(join(tmp, 'config/pim/hooks.d', name), mode);
  };
  it("sets each KEY=VALUE line it prints in vars, over the profile's own, with PIM_PROFILE and the config dir as cwd", async () => {
    writeConfig({ 'profiles.d/t.yml': 'h: {env_hook: vars.sh, vars: {a: own, b: kept}}\n' });
    hook(
      'vars.sh',
      '#!/bin/sh\necho "# a comment"\necho "a=from the hook"\necho\necho "who=$PIM_PROFILE"\necho "here=$(basename "$PWD")"\necho "eq=x=y"\n',
    );
    const { loadProfile, withEnvHook } = await import('../../lib/config/profile.ts');
    const p = await withEnvHook(await loadProfile('h'));
    expect(p.value.vars).toEqual({ a: 'from the hook', b: 'kept', who: 'h', here: 'pim', eq: 'x=y' });
    expect(p.origins['vars.a']).toBe('hooks.d/vars.sh (env_hook)');
  });
  it('is a config error (78) when it fails, prints a line that is not KEY=VALUE, is not executable, or is missing', async () => {
    const { loadProfile, withEnvHook } = await import('../../lib/config/profile.ts');
    writeConfig({
      'profiles.d/t.yml':
        'f: {env_hook: fail.sh}\nb: {env_hook: bad.sh}\nx: {env_hook: noexec.sh}\nm: {env_hook: nope.sh}\n',
    });
    hook('fail.sh', '#!/bin/sh\necho "no token" >&2\nexit 4\n');
    hook('bad.sh', '#!/bin/sh\necho ok=1\necho "not a pair"\n');
    hook('noexec.sh', '#!/bin/sh\necho a=1\n', 0o644);
    await expect(withEnvHook(await loadProfile('f'))).rejects.toMatchObject({
      code: 78,
      message: expect.stringMatching(/t\.yml:1: env_hook hooks\.d\/fail\.sh failed with status 4: no token$/),
    });
    await expect(withEnvHook(await loadProfile('b'))).rejects.toMatchObject({
      code: 78,
      message: 'hooks.d/bad.sh:stdout:2: env_hook lines are KEY=VALUE, not "not a pair"',
    });
    await expect(withEnvHook(await loadProfile('x'))).rejects.toMatchObject({
      code: 78,
      message: expect.stringContaining('is not executable'),
    });
    await expect(loadProfile('m')).rejects.toMatchObject({
      code: 78,
      message: expect.stringContaining('hooks.d/nope.sh does not exist'),
    });
  });
});

/** A finished build in the registry, with a real (tiny) qcow2 image. */
function fakeBuild(profile: string, key: string, created: string): BuildRecord {
  const dir = join(tmp, `stage-${key}`);
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, `${profile}.qcow2`), '16M']);
  const rec = {
    id: `${profile}-${key.slice(0, 12)}`,
    profile,
    key,
    created,
    recipe: 1,
    inputs: {} as BuildRecord['inputs'],
    iso: { name: 'tb', checksum: 'sha256:00', path: '/x.iso' },
    disk: { file: `${profile}.qcow2`, format: 'qcow2' as const, virtual_size: 16 << 20, bytes: 0 },
    efivars: null,
    settings: {
      mem: '256M',
      cpus: 1,
      firmware: 'bios' as const,
      machine: 'q35',
      disk_bus: 'virtio',
      net: 'virtio-net',
      ssh_user: 'root',
    },
    times: { install: 1, provision: 1, total: 2 },
    log: 'build.log',
  };
  fs.mkdirSync(join(tmp, 'data', 'pim', 'builds'), { recursive: true });
  return commitBuild(dir, rec);
}

describe('the build registry and the image store', () => {
  const k1 = 'a'.repeat(64);
  const k2 = 'b'.repeat(64);
  it('stores builds read-only and finds them by id, key prefix and profile', () => {
    const b1 = fakeBuild('dev', k1, '2026-01-01T00:00:00.000Z');
    const b2 = fakeBuild('dev', k2, '2026-01-02T00:00:00.000Z');
    expect(listBuilds().map((b) => b.id)).toEqual([b1.id, b2.id]);
    expect(fs.statSync(buildDisk(b1)).mode & 0o777).toBe(0o444);
    expect(buildByKey('dev', k1)?.id).toBe(b1.id);
    expect(buildByKey('dev', 'c'.repeat(64))).toBeNull();
    expect(latestBuild('dev')?.id).toBe(b2.id);
    expect(findBuild('dev').id).toBe(b2.id);
    expect(findBuild('aaaa').id).toBe(b1.id);
    expect(findBuild(b1.id).id).toBe(b1.id);
    expect(() => findBuild('nosuch')).toThrow(expect.objectContaining({ code: 66 }));
  });
  it('boots a profile through an overlay in the image store, refreshed (old one kept as .prev) when a newer build comes', async () => {
    const b1 = fakeBuild('dev', k1, '2026-01-01T00:00:00.000Z');
    const img = await resolveImage('dev');
    expect(img).toMatchObject({ name: 'dev', format: 'qcow2', build: b1.id });
    expect(readQcow2Header(img.path)?.backingFile).toBe(buildDisk(b1));
    expect(disksBackedBy(b1)).toEqual([img.path]);
    // a build's own path boots through the same overlay, never the build itself
    expect((await resolveImage(buildDisk(b1))).path).toBe(img.path);
    expect(() => removeBuild(b1)).toThrow(
      expect.objectContaining({ code: 75, message: expect.stringContaining(img.path) }),
    );
    const b2 = fakeBuild('dev', k2, '2026-01-02T00:00:00.000Z');
    await expect(overlayForBuild('dev', b2, async () => true)).rejects.toMatchObject({ code: 75 });
    const again = await resolveImage('dev');
    expect(again.build).toBe(b2.id);
    expect(readQcow2Header(join(tmp, 'data', 'pim', 'images', 'dev.prev.qcow2'))?.backingFile).toBe(buildDisk(b1));
    fs.rmSync(join(tmp, 'data', 'pim', 'images', 'dev.prev.qcow2'));
    removeBuild(b1);
    expect(listBuilds().map((b) => b.id)).toEqual([b2.id]);
  });
  it('says how to build when there is neither an image nor a build', async () => {
    await expect(resolveImage('nothing')).rejects.toMatchObject({
      code: 66,
      message: expect.stringContaining('pim-build run nothing'),
    });
  });
});

describe('SSH host keys', () => {
  it('takes the key blob out of an OpenSSH public key line', () => {
    const blob = Buffer.from('\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20' + 'k'.repeat(32), 'latin1');
    expect(keyBlob(`ssh-ed25519 ${blob.toString('base64')} root@pim`)?.equals(blob)).toBe(true);
    expect(keyBlob('no key here')).toBeNull();
  });
});

describe("the build seed's vendor-data", () => {
  it('asks a generalized build for one host key, and gives way to generalize: false and to a vendor-data of the profile', async () => {
    const { buildVendorData } = await import('../../lib/builder/cloud.ts');
    const src = (name: string) => ({ name, label: `sources.d/${name}`, content: Buffer.from('x'), path: null });
    expect(buildVendorData({ generalize: true, sources: [src('network-config')] })).toMatch(
      /^#cloud-config\n(#.*\n)*ssh_genkeytypes: \[ed25519\]\nssh: \{emit_keys_to_console: false\}\n$/,
    );
    expect(buildVendorData({ generalize: false, sources: [] })).toBeNull();
    expect(buildVendorData({ generalize: true, sources: [src('vendor-data')] })).toBeNull();
  });
});
