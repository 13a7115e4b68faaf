import { describe, it, expect, beforeEach } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { loadCatalog, resolveEntry, loadProfile, loadRuntimeConfig, profileFile, initTree, parseYaml } from '../../lib/config/config.ts';
import { DEFAULT_FILES } from '../../lib/config/defaults.ts';
import { renderFile } from '../../lib/install/template.ts';

let cfg = '';
const w = (rel: string, text: string) => {
  fs.mkdirSync(join(cfg, rel, '..'), { recursive: true });
  fs.writeFileSync(join(cfg, rel), text);
};
const fails = async (p: Promise<unknown>, re: RegExp) => {
  await expect(p).rejects.toSatisfy((e: { code?: number; message?: string }) => e.code === 78 && re.test(e.message ?? ''));
};

beforeEach(() => {
  const root = fs.mkdtempSync(join(os.tmpdir(), 'pim-cfg-'));
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
    expect(resolveEntry(isos, 'ubuntu-24.04-server-amd64').value.checksum_url).toBe('https://releases.ubuntu.com/24.04/SHA256SUMS');
    expect((await loadRuntimeConfig()).value.serve).toEqual({ port: 8080, bind: '127.0.0.1' });
  });
});

describe('profiles', () => {
  it('merge over default, user default over built-in default, with origins', async () => {
    w('profiles.d/a.yml', 'default:\n  timezone: Europe/Paris\ndev:\n  hostname: dev\n  packages: [vim]\n');
    const p = await loadProfile('dev');
    expect(p.value).toMatchObject({ hostname: 'dev', packages: ['vim'], timezone: 'Europe/Paris', locale: 'en_US.UTF-8' });
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
  it('writes the starter tree once and never overwrites', () => {
    w('pim.yml', 'mine: 1\n');
    const a = initTree();
    expect(a.skipped).toEqual([join(cfg, 'pim.yml')]);
    expect(a.written.length).toBe(Object.keys(DEFAULT_FILES).length - 1);
    expect(fs.readFileSync(join(cfg, 'pim.yml'), 'utf8')).toBe('mine: 1\n');
    expect(initTree().written).toEqual([]);
    expect(fs.statSync(join(cfg, 'scripts.d/default.sh')).mode & 0o111).not.toBe(0);
  });
});

describe('templates', () => {
  it('render the built-in preseed with the profile and url', async () => {
    const p = await loadProfile('default');
    const out = renderFile(null, DEFAULT_FILES['preseeds.d/default.cfg.eta'], 'builtin', { profile: p.value, name: 'default', url: 'http://10.0.2.2:8080' });
    expect(out).toContain('d-i netcfg/get_hostname string pim\n');
    expect(out).toContain('http://10.0.2.2:8080/installs.d/default.sh');
    expect(out).not.toContain('<%');
  });
  it('errors name file and line', () => {
    w('preseeds.d/t.cfg', 'a\nb\n<%= profile.nope.x %>\n');
    expect(() => renderFile(join(cfg, 'preseeds.d/t.cfg'), undefined, 't.cfg', { profile: {}, name: 'x', url: '' })).toThrow(/^t\.cfg:3: template error: Cannot read/);
  });
  it('parseYaml gives lines for nested keys', async () => {
    const f = await parseYaml('a:\n  b:\n    c: 1\n', 'f');
    expect(f.lineOf(['a', 'b', 'c'])).toBe(3);
  });
});
