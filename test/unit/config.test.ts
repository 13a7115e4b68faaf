import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { loadCatalog, resolveEntry } from '../../lib/config/catalog.ts';
import { loadProfile, profileFile } from '../../lib/config/profile.ts';
import { loadRuntimeConfig } from '../../lib/config/runtime.ts';
import { initTree } from '../../lib/config/init.ts';
import { parseYaml } from '../../lib/config/yaml.ts';
import { DEFAULT_FILES } from '../../lib/config/defaults.ts';
import { renderFile } from '../../lib/install/template.ts';

let cfg = '';
let root = '';
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));
const w = (rel: string, text: string) => {
  fs.mkdirSync(join(cfg, rel, '..'), { recursive: true });
  fs.writeFileSync(join(cfg, rel), text);
};
const fails = async (p: Promise<unknown>, re: RegExp) => {
  await expect(p).rejects.toSatisfy(
    (e: { code?: number; message?: string }) => e.code === 78 && re.test(e.message ?? ''),
  );
};

beforeEach(() => {
  root = fs.mkdtempSync(join(os.tmpdir(), 'pim-cfg-'));
  process.env.XDG_CONFIG_HOME = root;
  cfg = join(root, 'pim');
});

describe('built-in defaults', () => {
  it('lib/config/defaults.ts matches defaults/ (run node defaults/embed.mjs)', async () => {
    // @ts-expect-error plain .mjs module
    const { render } = await import('../../defaults/embed.mjs');
    expect(fs.readFileSync(new URL('../../lib/config/defaults.ts', import.meta.url), 'utf8')).toBe(render());
  });
  it('has a default profile and Debian and Ubuntu entries with SUMS URLs', async () => {
    const p = await loadProfile('default');
    expect(p.value.hostname).toBe('pim');
    const isos = await loadCatalog('isos');
    const d = resolveEntry(isos, 'debian-netinst-amd64').value;
    expect(d.checksum_url).toMatch(/^https:\/\/cdimage\.debian\.org\/.*SHA512SUMS$/);
    expect(resolveEntry(isos, 'ubuntu-24.04-server-amd64').value.checksum_url).toBe(
      'https://releases.ubuntu.com/24.04/SHA256SUMS',
    );
    expect((await loadRuntimeConfig()).value.serve).toEqual({ port: 8080, bind: '127.0.0.1' });
  });
});

describe('profiles', () => {
  it('merge over default, user default over built-in default, with origins', async () => {
    w('profiles.d/a.yml', 'default:\n  timezone: Europe/Paris\ndev:\n  hostname: dev\n  packages: [vim]\n');
    const p = await loadProfile('dev');
    expect(p.value).toMatchObject({
      hostname: 'dev',
      packages: ['openssh-server', 'qemu-guest-agent', 'sudo', 'cloud-init', 'vim'],
      timezone: 'Europe/Paris',
      locale: 'en_US.UTF-8',
    });
    expect(p.origins.hostname).toBe(`${cfg}/profiles.d/a.yml:4`);
    expect(p.origins.timezone).toBe(`${cfg}/profiles.d/a.yml:2`);
    expect(p.origins.locale).toMatch(/^builtin:profiles\.d\/default\.yml:\d+$/);
  });
  it('unknown name is 66', async () => {
    await expect(loadProfile('nope')).rejects.toMatchObject({ code: 66 });
  });
  it('broken YAML names file and line', async () => {
    w('profiles.d/b.yml', 'dev:\n  hostname: a\n   bad: : x\n');
    await fails(loadProfile('dev'), /b\.yml:\d+: /);
  });
  it('a wrong type for a known key names file and line', async () => {
    w('profiles.d/b.yml', 'dev:\n  hostname: a\n  mem: [1]\n');
    await fails(loadProfile('dev'), /b\.yml:3: "mem" must be a string or number, not a list/);
    w('profiles.d/b.yml', 'dev:\n  packages: vim\n');
    await fails(loadProfile('dev'), /b\.yml:2: "packages" must be a list of strings/);
  });
  it('refuses __proto__ with its line', async () => {
    w('profiles.d/b.yml', 'dev:\n  hostname: a\n  __proto__:\n    x: 1\n');
    await fails(loadProfile('dev'), /b\.yml:3: the key "__proto__" is not allowed/);
  });
  it('a missing referenced file names where it was referenced', async () => {
    w('profiles.d/b.yml', 'dev:\n  scripts:\n    - setup.sh\n');
    await fails(loadProfile('dev'), /b\.yml:2: scripts: scripts\.d\/setup\.sh does not exist/);
    w('scripts.d/setup.sh', 'true\n');
    expect((await loadProfile('dev')).value.scripts).toEqual(['setup.sh']);
    w('profiles.d/b.yml', 'dev:\n  installs: [../x]\n');
    await fails(loadProfile('dev'), /bad file name/);
  });
  it('bad entry names and non-mapping files', async () => {
    w('profiles.d/b.yml', '"-x":\n  hostname: a\n');
    await fails(loadCatalog('profiles'), /b\.yml:1: bad profile name/);
    w('profiles.d/b.yml', '- a\n- b\n');
    await fails(loadCatalog('profiles'), /must be a mapping/);
  });
});

describe('profile keys for pim-build', () => {
  it('accepts ssh_user, firmware, boot, timeout, disk_format, keep_build_key; unknown top-level keys stay allowed', async () => {
    w(
      'profiles.d/b.yml',
      'dev:\n  ssh_user: admin\n  firmware: uefi\n  boot:\n    kernel: vmlinuz\n    initrd: initrd.gz\n    append: console=ttyS0\n    inject: true\n' +
        '  timeout: 1800\n  disk_format: raw\n  keep_build_key: false\n  my_template_key: [1]\n',
    );
    expect((await loadProfile('dev')).value).toMatchObject({
      ssh_user: 'admin',
      firmware: 'uefi',
      boot: { kernel: 'vmlinuz', initrd: 'initrd.gz', append: 'console=ttyS0', inject: true },
      timeout: 1800,
      disk_format: 'raw',
      keep_build_key: false,
      my_template_key: [1],
    });
    w('profiles.d/b.yml', 'dev:\n  firmware: bios\n  timeout: 0.5\n  disk_format: qcow2\n');
    expect((await loadProfile('dev')).value).toMatchObject({ firmware: 'bios', timeout: 0.5, disk_format: 'qcow2' });
  });
  const bad: Array<[string, RegExp]> = [
    ['  firmware: efi\n', /b\.yml:2: "firmware" must be one of bios, uefi, not "efi"/],
    ['  firmware: 1\n', /b\.yml:2: "firmware" must be one of bios, uefi, not 1/],
    ['  disk_format: vmdk\n', /b\.yml:2: "disk_format" must be one of qcow2, raw, not "vmdk"/],
    ['  timeout: 0\n', /b\.yml:2: "timeout" must be a positive number, not 0/],
    ['  timeout: -5\n', /b\.yml:2: "timeout" must be a positive number, not -5/],
    ['  timeout: "30"\n', /b\.yml:2: "timeout" must be a positive number, not "30"/],
    ['  timeout: .inf\n', /b\.yml:2: "timeout" must be a positive number/],
    ['  keep_build_key: yes\n', /b\.yml:2: "keep_build_key" must be a boolean, not a string/],
    ['  ssh_user: [a]\n', /b\.yml:2: "ssh_user" must be a string, not a list/],
    ['  boot: vmlinuz\n', /b\.yml:2: "boot" must be a mapping, not a string/],
    [
      '  boot:\n    kernel: k\n    kernal: x\n',
      /b\.yml:4: unknown key "boot\.kernal"; known keys: kernel, initrd, append, inject/,
    ],
    ['  boot:\n    inject: "yes"\n', /b\.yml:3: "boot\.inject" must be a boolean, not a string/],
    ['  boot:\n    append: [a]\n', /b\.yml:3: "boot\.append" must be a string, not a list/],
  ];
  for (const [text, re] of bad) {
    it(`refuses ${JSON.stringify(text.trim())} with FILE:LINE`, async () => {
      w('profiles.d/b.yml', `dev:\n${text}`);
      await fails(loadProfile('dev'), re);
    });
  }
});

describe('isos and pim.yml', () => {
  it('refuse unknown keys', async () => {
    w('isos.d/x.yml', 'x:\n  url: http://h/x.iso\n  chekcsum: abc\n');
    await fails(loadCatalog('isos'), /x\.yml:3: unknown key "chekcsum"/);
    w('pim.yml', 'serve:\n  port: "80"\n');
    await fails(loadRuntimeConfig(), /pim\.yml:2: "serve\.port" must be a number/);
  });
});

describe('files named after a profile', () => {
  it('fall back to default, then to the built-in', () => {
    expect(profileFile('preseeds.d', 'dev', '.cfg', true)?.label).toBe('builtin:preseeds.d/default.cfg.eta');
    w('preseeds.d/default.cfg.erb', 'x');
    expect(profileFile('preseeds.d', 'dev', '.cfg', true)?.label).toBe('preseeds.d/default.cfg.erb');
    w('preseeds.d/dev.cfg.eta', 'x');
    expect(profileFile('preseeds.d', 'dev', '.cfg', true)?.label).toBe('preseeds.d/dev.cfg.eta');
    expect(profileFile('scripts.d', 'dev', '.sh')?.label).toBe('builtin:scripts.d/default.sh');
    w('scripts.d/dev.sh', 'x');
    expect(profileFile('scripts.d', 'dev', '.sh')?.path).toBe(join(cfg, 'scripts.d/dev.sh'));
  });
});

describe('init', () => {
  it('writes the starter tree once and never overwrites', async () => {
    w('pim.yml', 'serve: {port: 1}\n');
    const a = await initTree();
    expect(a.skipped).toEqual([join(cfg, 'pim.yml')]);
    expect(a.written.length).toBe(Object.keys(DEFAULT_FILES).length - 1);
    expect(fs.readFileSync(join(cfg, 'pim.yml'), 'utf8')).toBe('serve: {port: 1}\n');
    expect((await initTree()).written).toEqual([]);
    expect(fs.statSync(join(cfg, 'scripts.d/default.sh')).mode & 0o111).not.toBe(0);
  });
});

describe('init with a broken config', () => {
  const tree = () => fs.readdirSync(cfg, { recursive: true }).map(String).sort();
  for (const [rel, text, re] of [
    ['pim.yml', 'serve:\n  port: [1\n', /pim\.yml:\d+: /],
    ['pim.yml', 'serve:\n  prot: 1\n', /pim\.yml:2: unknown key "serve\.prot"/],
    ['profiles.d/x.yml', 'dev:\n  firmware: efi\n', /x\.yml:2: "firmware" must be one of/],
    ['isos.d/x.yml', 'x:\n  url: http://h/x.iso\n  chekcsum: abc\n', /x\.yml:3: unknown key "chekcsum"/],
    [
      'profiles.d/x.yml',
      'dev:\n  scripts: [nothere.sh]\n',
      /x\.yml:2: scripts: scripts\.d\/nothere\.sh does not exist/,
    ],
  ] as const) {
    it(`exits 78 naming ${rel} and writes nothing`, async () => {
      w(rel, text);
      const before = tree();
      await fails(initTree(), re);
      expect(tree()).toEqual(before);
    });
  }
});

describe('templates', () => {
  it('render the built-in preseed with the profile and url', async () => {
    const p = await loadProfile('default');
    const out = renderFile(null, DEFAULT_FILES['preseeds.d/default.cfg.eta'], 'builtin', {
      profile: p.value,
      name: 'default',
      url: 'http://10.0.2.2:8080',
    });
    expect(out).toContain('d-i netcfg/get_hostname string pim\n');
    expect(out).toContain('http://10.0.2.2:8080/installs.d/default.sh');
    expect(out).not.toContain('<%');
  });
  it('errors name file and line', () => {
    w('preseeds.d/t.cfg', 'a\nb\n<%= profile.nope.x %>\n');
    expect(() =>
      renderFile(join(cfg, 'preseeds.d/t.cfg'), undefined, 't.cfg', { profile: {}, name: 'x', url: '' }),
    ).toThrow(/^t\.cfg:3: template error: Cannot read/);
  });
  it('parseYaml gives lines for nested keys', async () => {
    const f = await parseYaml('a:\n  b:\n    c: 1\n', 'f');
    expect(f.lineOf(['a', 'b', 'c'])).toBe(3);
  });
});
