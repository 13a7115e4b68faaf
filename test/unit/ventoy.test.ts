import { describe, it, expect } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { openExfat, openFat16, readTable, SECTOR, ventoyVersion } from '../../lib/ventoy/disk.ts';
import { layoutProblem, probe } from '../../lib/ventoy/detect.ts';
import { checkStickDir, exfatNameProblem } from '../../lib/ventoy/add.ts';
import { mergeAutoInstall, parseVentoyJson, type Planned } from '../../lib/ventoy/configure.ts';
import { PimError } from '../../lib/core/exit.ts';

const code = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    return e instanceof PimError ? e.code : -1;
  }
  return 0;
};

describe('ventoy.json', () => {
  it('reads JSON strictly: a comment, a BOM, bad UTF-8 and a non-object are 78 with the line', () => {
    const err = (t: string | Buffer) => {
      try {
        parseVentoyJson(Buffer.isBuffer(t) ? t : Buffer.from(t), 'S:/ventoy/ventoy.json');
      } catch (e) {
        return `${(e as PimError).code} ${(e as Error).message}`;
      }
      return 'ok';
    };
    expect(err('{\n "a": 1,\n // no\n "b": 2\n}')).toMatch(
      /^78 S:\/ventoy\/ventoy.json:3: JSON syntax error: .*\(JSON has no comments\)/,
    );
    expect(err('\ufeff{}')).toMatch(/^78 S:\/ventoy\/ventoy.json:1: starts with a UTF-8 byte order mark/);
    expect(err(Buffer.from([0x7b, 0x0a, 0x22, 0xff, 0x22, 0x7d]))).toMatch(/^78 S:\/ventoy\/ventoy.json:2: not UTF-8/);
    expect(err('[1]')).toMatch(/^78 .*must be a JSON object/);
    expect(err('{"auto_install": {}}')).toMatch(/^78 .*"auto_install" must be a list/);
    expect(err('{"theme": {"file": "/x"}}')).toBe('ok');
  });

  const plan = (name: string, image = '/small.iso'): Planned => ({
    name,
    iso: 'small',
    image,
    template: `/ventoy/pim/${name}.preseed.cfg`,
    body: '',
    label: '',
  });

  it("merges pim's entries only, keeps the user's, and selects the profile configured last", () => {
    const o: Record<string, unknown> = {
      theme: { file: '/t' },
      auto_install: [{ image: '/mine.iso', template: '/ventoy/script/mine.cfg' }],
    };
    mergeAutoInstall(o, [plan('a')], 10, 'L');
    mergeAutoInstall(o, [plan('b')], 5, 'L');
    mergeAutoInstall(o, [plan('a')], 5, 'L');
    expect(o).toEqual({
      theme: { file: '/t' },
      auto_install: [
        { image: '/mine.iso', template: '/ventoy/script/mine.cfg' },
        {
          image: '/small.iso',
          template: ['/ventoy/pim/a.preseed.cfg', '/ventoy/pim/b.preseed.cfg'],
          autosel: 1,
          timeout: 5,
        },
      ],
    });
    expect(code(() => mergeAutoInstall(o, [plan('a', '/mine.iso')], 5, 'L'))).toBe(65);
  });
});

describe('names on the stick', () => {
  it("follows exFAT's rules", () => {
    expect(exfatNameProblem('debian-12.iso')).toBeNull();
    expect(exfatNameProblem('a:b')).toMatch(/exFAT does not allow ":"/);
    expect(exfatNameProblem('x'.repeat(256))).toMatch(/255/);
    expect(exfatNameProblem('trailing.')).toMatch(/ends in/);
    expect(checkStickDir('/')).toBe('');
    expect(checkStickDir('/iso/linux/')).toBe('/iso/linux');
    expect(code(() => checkStickDir('iso'))).toBe(64);
    expect(code(() => checkStickDir('/ventoy'))).toBe(64);
    expect(code(() => checkStickDir('/a|b'))).toBe(64);
  });
});

describe('reading a stick without mounting it', () => {
  it('VENTOY_VERSION from grub.cfg', () => {
    expect(ventoyVersion('if x; then\n  set VENTOY_VERSION="1.1.17"\nfi\n')).toBe('1.1.17');
    expect(ventoyVersion('set VENTOY_VERSION=1.0.99\n')).toBe('1.0.99');
    expect(ventoyVersion('set OTHER="1"\n')).toBeNull();
  });

  it('a layout is Ventoy only with partition 1 at 2048 and partition 2 of 65536 sectors', () => {
    const p = (start: number, sectors: number, index: number) => ({
      index,
      start,
      sectors,
      type: '07',
      bootable: false,
    });
    expect(layoutProblem({ style: 'mbr', parts: [p(2048, 1000, 1), p(3048, 65536, 2)] })).toBeNull();
    expect(layoutProblem({ style: 'mbr', parts: [p(4096, 1000, 1), p(5096, 65536, 2)] })).toMatch(
      /starts at sector 4096/,
    );
    expect(layoutProblem({ style: 'gpt', parts: [p(2048, 1000, 1), p(3048, 65535, 2)] })).toMatch(/65535 sectors/);
    expect(layoutProblem(null)).toMatch(/no partition table/);
  });

  const tools = ['sfdisk', 'mkfs.exfat', 'mkfs.vfat', 'mmd', 'mcopy'].every((t) => {
    try {
      execFileSync('sh', ['-c', `command -v ${t}`], {
        stdio: 'ignore',
        env: { PATH: `/usr/sbin:/usr/bin:/sbin:/bin` },
      });
      return true;
    } catch {
      return false;
    }
  });

  it.skipIf(!tools)(
    "reads the stand-in stick's tables, FAT16 label and version, exFAT free space (MBR and GPT)",
    () => {
      const dir = fs.mkdtempSync(join(os.tmpdir(), 'pimvu.'));
      try {
        for (const style of ['mbr', 'gpt']) {
          const img = join(dir, `${style}.img`);
          execFileSync('bash', [join(__dirname, '../testbed/ventoy-stick.sh'), img, '64', style], {
            env: { ...process.env, PATH: `/usr/sbin:/usr/bin:/sbin:/bin` },
          });
          const fd = fs.openSync(img, 'r');
          try {
            const t = readTable(fd)!;
            expect(t.style).toBe(style);
            expect(t.parts[0]!.start).toBe(2048);
            expect(t.parts[1]!.sectors).toBe(65536);
            const fat = openFat16(fd, t.parts[1]!.start * SECTOR)!;
            expect(fat.label).toBe('VTOYEFI');
            expect(fat.read('/grub/grub.cfg')!.toString()).toBe('set VENTOY_VERSION="1.1.17"\n');
            expect(fat.read('/grub/missing.cfg')).toBeNull();
            const ex = openExfat(fd, t.parts[0]!.start * SECTOR)!;
            expect(ex.label).toBe('Ventoy');
            expect(ex.free).toBeGreaterThan(25 << 20);
            expect(ex.free).toBeLessThanOrEqual(ex.size);
            expect(ex.files()).toEqual([]);
            expect(openExfat(fd, t.parts[1]!.start * SECTOR)).toBeNull();
            expect(openFat16(fd, t.parts[0]!.start * SECTOR)).toBeNull();
          } finally {
            fs.closeSync(fd);
          }
          const s = probe(img, 'image');
          expect('problem' in s ? s.problem : s.version).toBe('1.1.17');
        }
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});

describe('install: a disk in use', () => {
  it('names what sysfs says holds the disk or one of its partitions (device-mapper by its name)', async () => {
    const { holdersOf } = await import('../../lib/ventoy/install.ts');
    const root = fs.mkdtempSync(join(os.tmpdir(), 'pim-sys-'));
    try {
      const mk = (p: string, text?: string) => {
        fs.mkdirSync(join(root, text === undefined ? p : join(p, '..')), { recursive: true });
        if (text !== undefined) fs.writeFileSync(join(root, p), text);
      };
      mk('block/sdz/holders');
      mk('block/sdz/sdz1/partition', '1\n');
      mk('block/sdz/sdz1/holders');
      mk('block/sdz/sdz2/partition', '2\n');
      mk('block/sdz/sdz2/holders/dm-3');
      mk('block/sdz/sdz2/holders/md0');
      mk('block/dm-3/dm/name', 'vg-root\n');
      const dev = join(root, 'sdz');
      fs.writeFileSync(dev, '');
      expect(holdersOf(dev, root)).toEqual(['/dev/sdz2 by /dev/dm-3 (vg-root)', '/dev/sdz2 by /dev/md0']);
      fs.rmSync(join(root, 'block/sdz/sdz2/holders'), { recursive: true });
      expect(holdersOf(dev, root)).toEqual([]);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
  it('reads /proc/swaps, octal escapes and all; a disk without swap has none', async () => {
    const { swapsOf } = await import('../../lib/ventoy/install.ts');
    const dir = fs.mkdtempSync(join(os.tmpdir(), 'pim-swaps-'));
    try {
      const swaps = join(dir, 'swaps');
      fs.writeFileSync(
        swaps,
        'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/nonexistent/a\\040b\tfile\t\t1024\t\t0\t\t-2\n',
      );
      expect(swapsOf('/dev/null', swaps)).toEqual([]);
      fs.appendFileSync(swaps, '/dev/nu\\154l\tpartition\t1024\t0\t-3\n');
      expect(swapsOf('/dev/null', swaps)).toEqual(['/dev/null']);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
