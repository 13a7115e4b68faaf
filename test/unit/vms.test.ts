import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import {
  definition,
  definitionTarget,
  expandVars,
  findVmDefinition,
  loadVmCatalog,
  referencedVars,
  type ExpandContext,
} from '../../lib/config/vms.ts';
import { entryNames } from '../../lib/config/catalog.ts';
import { loadRuntimeConfig } from '../../lib/config/runtime.ts';

let root = '';
let cfg = '';
const w = (rel: string, text: string) => {
  fs.mkdirSync(join(cfg, rel, '..'), { recursive: true });
  fs.writeFileSync(join(cfg, rel), text);
};
beforeEach(() => {
  root = fs.mkdtempSync(join(os.tmpdir(), 'pim-vms-'));
  process.env.XDG_CONFIG_HOME = root;
  cfg = join(root, 'pim');
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

const ctx = (over: Partial<ExpandContext> = {}): ExpandContext => ({
  vm: { name: 'web', mem: '512M', cpus: 2, ssh_port: 2222 },
  globalVars: { site: 'global', shared: 'from-pim-yml' },
  image: (n) => (n === 'base' ? '/images/base.qcow2' : null),
  runtime: '/run/user/0/pim',
  ...over,
});

describe('VM definitions', () => {
  it('merge over default; list leaves default out; the FILE:LINE of every qemu_args string is known', async () => {
    w(
      'vms.d/a.yml',
      [
        'default:',
        '  mem: 256M',
        '  vars: {site: default}',
        'web:',
        '  image: base',
        '  cpus: 2',
        '  qemu_args:',
        '    - -smbios',
        '    - type=1,serial=${vars.site}',
        '',
      ].join('\n'),
    );
    const cat = await loadVmCatalog();
    expect(entryNames(cat)).toEqual(['web']);
    const d = definition(cat, 'web');
    expect(d.mem).toBe('256M');
    expect(d.cpus).toBe(2);
    expect(d.vars).toEqual({ site: 'default' });
    expect(d.argWhere).toEqual([`${join(cfg, 'vms.d/a.yml')}:8`, `${join(cfg, 'vms.d/a.yml')}:9`]);
    expect(await findVmDefinition('nosuch', cat)).toBeNull();
    expect(await findVmDefinition('default', cat)).toBeNull();
  });

  it('refuse unknown keys and wrong types at FILE:LINE (78)', async () => {
    w('vms.d/a.yml', 'web:\n  image: base\n  memory: 1G\n');
    await expect(loadVmCatalog()).rejects.toSatisfy(
      (e: { code?: number; message?: string }) =>
        e.code === 78 && /a\.yml:3: unknown key "memory"/.test(e.message ?? ''),
    );
    w('vms.d/a.yml', 'web:\n  qemu_args: -m 1G\n');
    await expect(loadVmCatalog()).rejects.toSatisfy(
      (e: { code?: number; message?: string }) =>
        e.code === 78 && /a\.yml:2: "qemu_args" must be a list of strings/.test(e.message ?? ''),
    );
    w('vms.d/a.yml', 'web:\n  net: nat\n');
    await expect(loadVmCatalog()).rejects.toSatisfy(
      (e: { code?: number; message?: string }) =>
        e.code === 78 && /"net" must be one of user, bridged/.test(e.message ?? ''),
    );
  });

  it('boot a store name, build:PROFILE, or a path relative to the file that set image; no image is 78', async () => {
    w(
      'vms.d/a.yml',
      'a: {image: base}\nb: {image: build:dev}\nc: {image: ../disks/c.qcow2}\nd: {image: /abs/d.qcow2}\ne: {cpus: 1}\n',
    );
    const cat = await loadVmCatalog();
    expect(definitionTarget(definition(cat, 'a'))).toEqual({ target: 'base', buildOnly: false });
    expect(definitionTarget(definition(cat, 'b'))).toEqual({ target: 'dev', buildOnly: true });
    expect(definitionTarget(definition(cat, 'c'))).toEqual({ target: join(cfg, 'disks/c.qcow2'), buildOnly: false });
    expect(definitionTarget(definition(cat, 'd'))).toEqual({ target: '/abs/d.qcow2', buildOnly: false });
    expect(() => definitionTarget(definition(cat, 'e'))).toThrow(/VM "e" has no image/);
  });

  it("pim.yml's vars are read (and checked)", async () => {
    w('pim.yml', 'vars:\n  site: lab\n');
    expect((await loadRuntimeConfig()).value.vars).toEqual({ site: 'lab' });
    w('pim.yml', 'vars: [a]\n');
    await expect(loadRuntimeConfig()).rejects.toSatisfy(
      (e: { code?: number; message?: string }) =>
        e.code === 78 && /pim\.yml:1: "vars" must be a mapping/.test(e.message ?? ''),
    );
  });
});

describe('qemu_args variables', () => {
  const d = { vars: { site: 'entry', n: 3, on: true } };
  it('expand vars (the entry first, then pim.yml), vm.*, image.NAME, runtime and $$', () => {
    const out = expandVars(
      [
        '${vars.site}',
        '${vars.shared}',
        'n=${vars.n},on=${vars.on}',
        '${vm.name}:${vm.mem}:${vm.cpus}:${vm.ssh_port}',
        'file=${image.base}',
        '${runtime}/x.sock',
        'cost $$5',
        '${ vars.site }',
      ],
      [],
      d,
      ctx(),
    );
    expect(out).toEqual([
      'entry',
      'from-pim-yml',
      'n=3,on=true',
      'web:512M:2:2222',
      'file=/images/base.qcow2',
      '/run/user/0/pim/x.sock',
      'cost $5',
      'entry',
    ]);
  });

  it('an undefined variable is 78 at the FILE:LINE of its string, never an empty string', () => {
    const bad = (s: string, re: RegExp, c = ctx()) =>
      expect(() => expandVars(['ok', s], ['f.yml:3', 'f.yml:4'], d, c)).toThrow(
        expect.objectContaining({ code: 78, message: expect.stringMatching(re) }),
      );
    bad('${vars.nope}', /^f\.yml:4: qemu_args: undefined variable \$\{vars\.nope\}/);
    bad('${image.missing}', /^f\.yml:4: .*undefined variable \$\{image\.missing\}/);
    bad('${vm.nope}', /undefined variable \$\{vm\.nope\}/);
    bad(
      '${vm.ssh_port}',
      /undefined variable \$\{vm\.ssh_port\}/,
      ctx({ vm: { name: 'b', mem: '1G', cpus: 1, ssh_port: null } }),
    );
    bad('${vars.__proto__}', /undefined variable/);
    bad('${vars.toString}', /undefined variable/);
    bad('-name ${vars.site', /^f\.yml:4: qemu_args: unclosed "\$\{"/);
  });

  it('a variable holding a mapping or a list is not a string: undefined', () => {
    expect(() => expandVars(['${vars.m}'], ['f:1'], { vars: { m: { a: 1 } } }, ctx())).toThrow(/undefined variable/);
  });

  it('lists what strings refer to', () => {
    expect(referencedVars(['a', '${vm.ssh_port}x${ vars.a }', '$$'])).toEqual(['vm.ssh_port', 'vars.a']);
  });
});
