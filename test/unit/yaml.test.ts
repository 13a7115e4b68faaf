// YAML limits: what a config file may cost. Each case is refused with exit 78
// and FILE:LINE, never a stack (70) or a long run; sizes, not wall clock, say
// that parsing is linear (bench/yaml.sh prints the times).
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { parseYaml, readYamlFile, YAML_LIMITS } from '../../lib/config/yaml.ts';
import { loadProfile } from '../../lib/config/profile.ts';
import { PimError } from '../../lib/core/exit.ts';

let cfg = '';
let root = '';
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));
beforeEach(() => {
  root = fs.mkdtempSync(join(os.tmpdir(), 'pim-yaml-'));
  process.env.XDG_CONFIG_HOME = root;
  cfg = join(root, 'pim');
  fs.mkdirSync(join(cfg, 'profiles.d'), { recursive: true });
});

/** The config error (78) a promise rejects with. */
async function refused(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(PimError);
  expect((e as PimError).code).toBe(78);
  return (e as PimError).message;
}

const keys = (n: number, indent = '') => Array.from({ length: n }, (_, i) => `${indent}k${i}: ${i}\n`).join('');

describe('size limits', () => {
  it('a 500,000-item list aliased 99 times (the outside test) is refused at its line, before it is built', async () => {
    const text = `a: &x [${Array(500_000).fill('1').join(',')}]\n${Array.from({ length: 99 }, (_, i) => `b${i}: *x\n`).join('')}`;
    const msg = await refused(parseYaml(text, 'big.yml'));
    expect(msg).toMatch(/^big\.yml:1: more than 200000 YAML nodes/);
  });
  it('a list under the node limit aliased 99 times is refused at the alias that crosses the expansion limit', async () => {
    const n = 100_000;
    const text = `a: &x [${Array(n).fill('1').join(',')}]\n${Array.from({ length: 99 }, (_, i) => `b${i}: *x\n`).join('')}`;
    const msg = await refused(parseYaml(text, 'al.yml'));
    // a (100,001) + 9 aliases of it = 1,000,010 + keys: the 9th alias (b8, line 10) crosses 1,000,000
    expect(msg).toMatch(/^al\.yml:10: the alias \*x makes this file expand to more than 1000000 values/);
  });
  it('a billion-laughs file is 78 with FILE:LINE, not 70 with a stack', async () => {
    const L = 'abcdefghij';
    let text = `a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n`;
    for (let i = 1; i < L.length; i++)
      text += `${L[i]}: &${L[i]} [${Array(10)
        .fill('*' + L[i - 1])
        .join(', ')}]\n`;
    const msg = await refused(parseYaml(text, 'lol.yml'));
    expect(msg).toMatch(/^lol\.yml:\d+: the alias \*\w makes this file expand to more than 1000000 values/);
  });
  it('aliases within the limit still work (counted once per target, not walked again)', async () => {
    const f = await parseYaml('base: &b {x: 1, l: [1, 2]}\nc1: *b\nc2: *b\n', 'ok.yml');
    expect(f.value).toEqual({ base: { x: 1, l: [1, 2] }, c1: { x: 1, l: [1, 2] }, c2: { x: 1, l: [1, 2] } });
    expect(f.lineOf(['c2', 'x'])).toBe(1); // through the alias, to where the value is
  });
  it('a file over 4 MiB is refused without being parsed', async () => {
    const p = join(cfg, 'profiles.d', 'huge.yml');
    fs.writeFileSync(p, '# ' + 'x'.repeat(YAML_LIMITS.fileBytes) + '\n');
    expect(await refused(readYamlFile(p))).toMatch(/huge\.yml: 4\.0 MiB, over the 4\.0 MiB limit for a config file/);
    expect(await refused(loadProfile('default'))).toMatch(/huge\.yml: /);
  });
  it('nesting past the depth limit is 78, in flow and block style', async () => {
    const d = YAML_LIMITS.depth + 1;
    expect(await refused(parseYaml(`a: ${'['.repeat(d)}${']'.repeat(d)}\n`, 'deep.yml'))).toMatch(
      /^deep\.yml:1: nested more than 100 levels/,
    );
    expect(await refused(parseYaml(`a: ${'['.repeat(20_000)}\n`, 'deeper.yml'))).toMatch(
      /^deeper\.yml:1: nested more than 100 levels/,
    );
    let block = 'a:\n';
    for (let i = 1; i <= d + 1; i++) block += `${' '.repeat(i)}- \n`;
    expect(await refused(parseYaml(block, 'block.yml'))).toMatch(/^block\.yml(:\d+)?: /);
  });
  it('a FIFO is refused at once, not waited on', async () => {
    const p = join(cfg, 'profiles.d', 'fifo.yml');
    execFileSync('mkfifo', [p]);
    expect(await refused(loadProfile('default'))).toMatch(/fifo\.yml: not a regular file/);
  });
});

describe('keys', () => {
  it('40,000 keys in a profile parse, merge and explain (linear: quadratic took a minute)', async () => {
    fs.writeFileSync(join(cfg, 'profiles.d', 'many.yml'), `many:\n  vars:\n${keys(40_000, '    ')}`);
    const p = await loadProfile('many');
    expect(Object.keys(p.value.vars as object)).toHaveLength(40_000);
    expect(p.origins['vars.k39999']).toBe(`${cfg}/profiles.d/many.yml:40002`);
  }, 20_000);
  it('a duplicate key is 78 naming both lines', async () => {
    const msg = await refused(parseYaml(`a: 1\nb:\n  x: 1\n  y: 2\n  x: 3\n`, 'dup.yml'));
    expect(msg).toBe('dup.yml:5: duplicate key "x" (first on line 3); remove one of them');
    // 1 and "1" would be one key in the value
    expect(await refused(parseYaml(`1: a\n"1": b\n`, 'num.yml'))).toMatch(/^num\.yml:2: duplicate key "1"/);
    // the same key in different mappings is fine
    expect((await parseYaml('a: {x: 1}\nb: {x: 2}\n', 'ok.yml')).value).toEqual({ a: { x: 1 }, b: { x: 2 } });
  });
  it('a mapping with 30,000 keys twice is refused at the first duplicate', async () => {
    const msg = await refused(parseYaml(`${keys(30_000)}${keys(30_000)}`, 'dups.yml'));
    expect(msg).toMatch(/^dups\.yml:30001: duplicate key "k0" \(first on line 1\)/);
  });
  it('non-scalar keys, __proto__ and unknown aliases are 78 with their line', async () => {
    expect(await refused(parseYaml('a: 1\n[x]: 2\n', 'k.yml'))).toMatch(/^k\.yml:2: keys must be plain strings/);
    expect(await refused(parseYaml('a:\n  __proto__: 1\n', 'p.yml'))).toMatch(
      /^p\.yml:2: the key "__proto__" is not allowed/,
    );
    expect(await refused(parseYaml('a: 1\nb: *nope\n', 'u.yml'))).toMatch(/^u\.yml:2: /);
    expect(await refused(parseYaml('a: 1\nb: &x [1, {c: *x}]\n', 'loop.yml'))).toMatch(
      /^loop\.yml:2: the alias \*x is inside the node it names/,
    );
  });
});
