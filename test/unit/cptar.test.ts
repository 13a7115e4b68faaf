/**
 * pim-cp's tar fallback reads a guest's tar stream, and the guest is the
 * untrusted side: crafted streams (made here with Python's tarfile, as a
 * hostile guest would send them) must not write outside DEST, nor anything
 * but what was asked for. test/bats/guestssh.bats sends such streams from a
 * real guest over real ssh.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { memberProblem, topName, untarChecked } from '../../lib/guest/copy.ts';
import { PimError } from '../../lib/core/exit.ts';

let w: string;
beforeEach(() => {
  w = fs.mkdtempSync(join(tmpdir(), 'pim-cptar-'));
});
afterEach(() => fs.rmSync(w, { recursive: true, force: true }));

/** A tar stream of `members` (name, type, data or link target), made by Python's tarfile without any check. */
function craft(members: Array<[string, 'file' | 'dir' | 'sym' | 'hard' | 'fifo' | 'chr', string?, number?]>): Buffer {
  const py = `
import io, sys, tarfile, json
out = io.BytesIO()
t = tarfile.open(fileobj=out, mode='w', format=tarfile.GNU_FORMAT)
for name, kind, data, mode in json.loads(sys.argv[1]):
    i = tarfile.TarInfo(name)
    i.mode = mode if mode is not None else (0o755 if kind == 'dir' else 0o644)
    if kind == 'file':
        b = (data or '').encode(); i.size = len(b); t.addfile(i, io.BytesIO(b)); continue
    i.type = {'dir': tarfile.DIRTYPE, 'sym': tarfile.SYMTYPE, 'hard': tarfile.LNKTYPE, 'fifo': tarfile.FIFOTYPE, 'chr': tarfile.CHRTYPE}[kind]
    if kind in ('sym', 'hard'): i.linkname = data
    t.addfile(i)
t.close()
sys.stdout.buffer.write(out.getvalue())
`;
  return execFileSync('python3', [
    '-c',
    py,
    JSON.stringify(members.map(([n, k, d, m]) => [n, k, d ?? null, m ?? null])),
  ]);
}

async function extract(tarBytes: Buffer, top: string, dest: string) {
  let aborted = false;
  const r = await untarChecked(Readable.from([tarBytes]), top, dest, 'dev:/x', () => (aborted = true));
  return { ...r, aborted, code: r.error instanceof PimError ? r.error.code : r.error ? -1 : 0 };
}

/** Every path under `dir` (relative), sorted. */
const tree = (dir: string) => (fs.readdirSync(dir, { recursive: true }) as string[]).sort();

// each stream is made by a Python process: a loaded machine takes seconds for one
describe("pim-cp's check of a guest's tar stream", { timeout: 120_000 }, () => {
  it('takes files, directories and hard links inside the tree, modes kept less setuid', async () => {
    const dest = join(w, 'dest');
    fs.mkdirSync(dest);
    const t = craft([
      ['d', 'dir', undefined, 0o750],
      ['d/a', 'file', 'A', 0o4755],
      ['d/sub', 'dir'],
      ['d/sub/b', 'hard', 'd/a'],
    ]);
    const r = await extract(t, 'd', dest);
    expect(r.code).toBe(0);
    expect(tree(dest)).toEqual(['d', 'd/a', 'd/sub', 'd/sub/b']);
    expect(fs.statSync(join(dest, 'd/a')).mode & 0o7777).toBe(0o755);
    expect(fs.statSync(join(dest, 'd')).mode & 0o777).toBe(0o750);
    expect(fs.readFileSync(join(dest, 'd/sub/b'), 'utf8')).toBe('A');
  });

  it.each([
    [
      'a symbolic link out',
      [
        ['d', 'dir'],
        ['d/EVIL', 'sym', '/etc'],
      ],
    ],
    [
      'a relative symbolic link',
      [
        ['d', 'dir'],
        ['d/l', 'sym', 'x'],
      ],
    ],
    [
      'an absolute name',
      [
        ['d', 'dir'],
        ['/tmp/pim-cptar-abs', 'file', 'x'],
      ],
    ],
    [
      'a name with ..',
      [
        ['d', 'dir'],
        ['d/../../escape', 'file', 'x'],
      ],
    ],
    [
      'a member beside the one asked for',
      [
        ['d', 'file', 'asked'],
        ['.ssh/authorized_keys', 'file', 'ssh-ed25519 AAAA evil'],
      ],
    ],
    [
      'a hard link out of the tree',
      [
        ['d', 'dir'],
        ['d/h', 'hard', '/etc/passwd'],
      ],
    ],
    [
      'a hard link with ..',
      [
        ['d', 'dir'],
        ['d/h', 'hard', 'd/../../x'],
      ],
    ],
    [
      'a FIFO',
      [
        ['d', 'dir'],
        ['d/f', 'fifo'],
      ],
    ],
    [
      'a device',
      [
        ['d', 'dir'],
        ['d/c', 'chr'],
      ],
    ],
  ] as const)('refuses %s (65): nothing lands in DEST, the source is stopped', async (_what, members) => {
    const dest = join(w, 'dest');
    fs.mkdirSync(dest);
    fs.writeFileSync(join(dest, 'keep'), 'mine');
    const r = await extract(craft(members as never), 'd', dest);
    expect(r.code).toBe(65);
    expect(r.refused).toBe(true);
    expect(r.aborted).toBe(true);
    expect(tree(dest)).toEqual(['keep']);
    expect(fs.existsSync('/tmp/pim-cptar-abs')).toBe(false);
    expect(fs.existsSync(join(w, 'escape'))).toBe(false);
  });

  it('a second copy never writes through a link already in DEST: the link is replaced', async () => {
    const dest = join(w, 'dest');
    const outside = join(w, 'outside');
    fs.mkdirSync(dest);
    fs.mkdirSync(outside);
    fs.symlinkSync(outside, join(dest, 'd')); // as an old pim-cp left it
    const r = await extract(
      craft([
        ['d', 'dir'],
        ['d/x', 'file', 'X'],
      ]),
      'd',
      dest,
    );
    expect(r.code).toBe(0);
    expect(fs.readdirSync(outside)).toEqual([]);
    expect(fs.lstatSync(join(dest, 'd')).isDirectory()).toBe(true);
    expect(fs.readFileSync(join(dest, 'd/x'), 'utf8')).toBe('X');
    // a file to a name that is a link: the link goes, its target stays
    fs.writeFileSync(join(outside, 'target'), 'host file');
    fs.symlinkSync(join(outside, 'target'), join(w, 'as-link'));
    const r2 = await extract(craft([['f', 'file', 'F']]), 'f', join(w, 'as-link'));
    expect(r2.code).toBe(0);
    expect(fs.readFileSync(join(outside, 'target'), 'utf8')).toBe('host file');
    expect(fs.lstatSync(join(w, 'as-link')).isFile()).toBe(true);
  });

  it('merges a tree into the one in DEST, as tar x and scp -r do', async () => {
    const dest = join(w, 'dest');
    fs.mkdirSync(join(dest, 'd'), { recursive: true });
    fs.writeFileSync(join(dest, 'd/old'), 'old');
    const r = await extract(
      craft([
        ['d', 'dir', undefined, 0o700],
        ['d/new', 'file', 'N'],
      ]),
      'd',
      dest,
    );
    expect(r.code).toBe(0);
    expect(tree(dest)).toEqual(['d', 'd/new', 'd/old']);
    expect(fs.statSync(join(dest, 'd')).mode & 0o777).toBe(0o700);
  });

  it('an empty or damaged stream is 65 (not a refusal: the source says why first)', async () => {
    const r = await extract(Buffer.alloc(0), 'd', w);
    expect(r.code).toBe(65);
    expect(r.refused).toBe(false);
    expect(tree(w)).toEqual([]);
  });

  it('the names it checks, and the name asked for', () => {
    expect(memberProblem('d/a', 'File', undefined, 'd')).toBeNull();
    expect(memberProblem('d/', 'Directory', undefined, 'd')).toBeNull();
    expect(memberProblem('dd/a', 'File', undefined, 'd')).toMatch(/outside d/);
    expect(memberProblem('d/./a', 'File', undefined, 'd')).toMatch(/"\." part/);
    expect(memberProblem('d/l', 'SymbolicLink', 'inside', 'd')).toMatch(/symbolic link/);
    // without -r: the one file asked for, no directory
    expect(memberProblem('d', 'File', undefined, 'd', false)).toBeNull();
    expect(memberProblem('d/', 'Directory', undefined, 'd', false)).toMatch(/-r was not given/);
    expect(memberProblem('d/a', 'File', undefined, 'd', false)).toMatch(/-r was not given/);
    expect(topName('dev', '/tmp/x/')).toBe('x');
    expect(() => topName('dev', '.')).toThrow(/names no file/);
    expect(() => topName('dev', '/')).toThrow(/names no file/);
  });
});
