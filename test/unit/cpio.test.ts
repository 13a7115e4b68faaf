import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { gunzipSync } from 'node:zlib';
import { cpioNewc, cpioNewcGzip, type CpioEntry } from '../../lib/archive/cpio.ts';

// GNU cpio is the reference: what it lists and restores is what the archive holds.
const hasCpio = (() => {
  try {
    return /GNU cpio/.test(execFileSync('cpio', ['--version'], { encoding: 'utf8' }));
  } catch {
    return false;
  }
})();

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimc-'));
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const entries: CpioEntry[] = [
  { type: 'dir', path: 'pim' },
  { type: 'dir', path: 'pim/bin', mode: 0o700 },
  { type: 'file', path: 'pim/init', data: '#!/pim/bin/sh\necho hi\n', mode: 0o755, mtime: 1_700_000_000 },
  { type: 'symlink', path: 'pim/bin/sh', target: 'busybox' },
  { type: 'file', path: 'pim/empty', data: '' },
  { type: 'file', path: 'pim/one', data: 'a' },
  { type: 'file', path: 'pim/two', data: 'ab' },
  { type: 'file', path: 'pim/three', data: 'abc' },
  { type: 'file', path: 'pim/bytes', data: allBytes, mode: 0o640 },
  { type: 'dir', path: 'etc', mode: 0o750 },
  { type: 'file', path: 'etc/secret', data: 'key\n', mode: 0o600 },
  { type: 'file', path: 'etc/suid', data: 'x', mode: 0o4755 },
  { type: 'file', path: 'etc/with space ü', data: 'unicode name' },
];

/** Walk our own output: every header at a 4-byte boundary, the fields as written. */
function parse(buf: Buffer): Array<{ name: string; mode: number; uid: number; gid: number; size: number; at: number }> {
  const out = [];
  let p = 0;
  for (;;) {
    expect(p % 4).toBe(0);
    expect(buf.toString('latin1', p, p + 6)).toBe('070701');
    const f = (i: number) => parseInt(buf.toString('latin1', p + 6 + i * 8, p + 14 + i * 8), 16);
    const namesize = f(11);
    const name = buf.toString('utf8', p + 110, p + 110 + namesize - 1);
    const size = f(6);
    out.push({ name, mode: f(1), uid: f(2), gid: f(3), size, at: p });
    let q = p + 110 + namesize;
    q += (4 - (q % 4)) % 4;
    expect(q % 4).toBe(0); // data starts aligned
    q += size;
    q += (4 - (q % 4)) % 4;
    p = q;
    if (name === 'TRAILER!!!') break;
  }
  expect(p).toBe(buf.length);
  return out;
}

describe('newc cpio writer', () => {
  it('aligns every header and every file to 4 bytes, ends with the trailer, owns all by root', () => {
    const recs = parse(cpioNewc(entries));
    expect(recs.map((r) => r.name)).toEqual([...entries.map((e) => e.path), 'TRAILER!!!']);
    expect(recs.every((r) => r.uid === 0 && r.gid === 0)).toBe(true);
    expect(recs.find((r) => r.name === 'pim/bin/sh')!.mode).toBe(0o120777);
    expect(recs.find((r) => r.name === 'pim/bin')!.mode).toBe(0o040700);
    expect(recs.find((r) => r.name === 'etc/secret')!.mode).toBe(0o100600);
  });

  it.skipIf(!hasCpio)('lists as GNU cpio sees it: names in order, root owner, modes', () => {
    fs.writeFileSync(join(tmp, 'a.cpio'), cpioNewc(entries));
    const names = execFileSync('cpio', ['-it', '--quiet', '-F', join(tmp, 'a.cpio')], { encoding: 'utf8' })
      .trimEnd()
      .split('\n');
    expect(names).toEqual(entries.map((e) => e.path));
    const long = execFileSync('cpio', ['-itv', '--quiet', '--numeric-uid-gid', '-F', join(tmp, 'a.cpio')], {
      encoding: 'utf8',
    });
    expect(long).toMatch(/^-rw------- +1 0 +0 +4 .* etc\/secret$/m);
    expect(long).toMatch(/^-rwsr-xr-x +1 0 +0 +1 .* etc\/suid$/m);
    expect(long).toMatch(/^drwx------ +2 0 +0 +0 .* pim\/bin$/m);
    expect(long).toMatch(/^lrwxrwxrwx +1 0 +0 +7 .* pim\/bin\/sh -> busybox$/m);
  });

  it.skipIf(!hasCpio)('restores with GNU cpio to the same paths, modes, contents and link targets', () => {
    const out = join(tmp, 'out');
    fs.mkdirSync(out);
    fs.writeFileSync(join(tmp, 'a.cpio'), cpioNewc(entries));
    execFileSync('cpio', ['-idm', '--quiet', '-F', join(tmp, 'a.cpio')], {
      cwd: out,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    for (const e of entries) {
      const p = join(out, e.path);
      const st = fs.lstatSync(p);
      if (e.type === 'dir') {
        expect(st.isDirectory()).toBe(true);
        expect(st.mode & 0o7777).toBe(e.mode ?? 0o755);
      } else if (e.type === 'file') {
        expect(st.isFile()).toBe(true);
        expect(st.mode & 0o7777).toBe(e.mode ?? 0o644);
        expect(fs.readFileSync(p).equals(Buffer.from(e.data))).toBe(true);
      } else {
        expect(st.isSymbolicLink()).toBe(true);
        expect(fs.readlinkSync(p)).toBe(e.target);
      }
    }
    expect(fs.statSync(join(out, 'pim/init')).mtimeMs).toBe(1_700_000_000_000);
  });

  it.skipIf(!hasCpio)('gzips through node:zlib: gunzip then GNU cpio lists the same', () => {
    const gz = cpioNewcGzip(entries);
    expect([gz[0], gz[1]]).toEqual([0x1f, 0x8b]);
    expect(gunzipSync(gz).equals(cpioNewc(entries))).toBe(true);
    fs.writeFileSync(join(tmp, 'a.cpio.gz'), gz);
    const names = execFileSync('sh', ['-c', 'gzip -dc "$1" | cpio -it --quiet', 'sh', join(tmp, 'a.cpio.gz')], {
      encoding: 'utf8',
    })
      .trimEnd()
      .split('\n');
    expect(names).toEqual(entries.map((e) => e.path));
  });

  it('refuses paths that do not belong in an archive (65)', () => {
    for (const path of ['', '/etc/passwd', '../x', 'a/../b', 'a//b', './a', 'a\0b']) {
      expect(() => cpioNewc([{ type: 'file', path, data: '' }])).toThrow(expect.objectContaining({ code: 65 }));
    }
  });

  it('is the same bytes every time (no times, inodes or owners from the host)', () => {
    expect(cpioNewc(entries).equals(cpioNewc(entries))).toBe(true);
  });
});
