import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { cachedPack, concatArchives, initrdKind, kbootCacheDir, treeKey } from '../../lib/archive/initramfs.ts';

let tmp: string;
const saved = { ...process.env };
beforeEach(() => {
  tmp = fs.mkdtempSync(join(tmpdir(), 'pimi-'));
  process.env.XDG_CACHE_HOME = join(tmp, 'cache');
  fs.mkdirSync(join(tmp, 'tree', 'bin'), { recursive: true });
  fs.writeFileSync(join(tmp, 'tree', 'init'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  fs.writeFileSync(join(tmp, 'tree', 'bin', 'data'), 'x'.repeat(1000), { mode: 0o640 });
  fs.symlinkSync('../init', join(tmp, 'tree', 'bin', 'sh'));
});
afterEach(() => {
  process.env = { ...saved };
  fs.rmSync(tmp, { recursive: true, force: true });
});

const listCpio = (file: string) => execFileSync('cpio', ['-itv', '--quiet', '-F', file], { encoding: 'utf8' });

describe('tree key', () => {
  it('is stable, and changes with content, mode and symlink target', () => {
    const k = treeKey(join(tmp, 'tree'), { compress: 'none' });
    expect(treeKey(join(tmp, 'tree'), { compress: 'none' })).toBe(k);
    expect(treeKey(join(tmp, 'tree'), { compress: 'gzip' })).not.toBe(k);
    fs.chmodSync(join(tmp, 'tree', 'bin', 'data'), 0o644);
    const k2 = treeKey(join(tmp, 'tree'), { compress: 'none' });
    expect(k2).not.toBe(k);
    fs.rmSync(join(tmp, 'tree', 'bin', 'sh'));
    fs.symlinkSync('../other', join(tmp, 'tree', 'bin', 'sh'));
    expect(treeKey(join(tmp, 'tree'), { compress: 'none' })).not.toBe(k2);
  });
  it('refuses a missing directory with 66', () => {
    expect(() => treeKey(join(tmp, 'nope'), { compress: 'none' })).toThrow(expect.objectContaining({ code: 66 }));
  });
});

describe('packing', () => {
  it('packs root-owned newc with the modes kept, and hits the cache the second time', async () => {
    const a = await cachedPack(join(tmp, 'tree'));
    expect(a.hit).toBe(false);
    const buf = fs.readFileSync(a.path);
    expect(buf.subarray(0, 6).toString()).toBe('070701');
    const list = listCpio(a.path);
    expect(list).toMatch(/-rwxr-xr-x\s+1 root\s+root\s+\d+ .* init/);
    expect(list).toMatch(/-rw-r-----\s+1 root\s+root\s+1000 .* bin\/data/);
    expect(list).toMatch(/lrwxrwxrwx .* bin\/sh -> \.\.\/init/);
    const packed = fs.statSync(a.path);
    const b = await cachedPack(join(tmp, 'tree'));
    expect(b).toEqual({ ...a, hit: true });
    expect(fs.statSync(b.path).ino).toBe(packed.ino); // not packed again (that renames a new file into place)
    fs.writeFileSync(join(tmp, 'tree', 'new'), 'n');
    expect((await cachedPack(join(tmp, 'tree'))).hit).toBe(false);
  });
  it('gzips when asked', async () => {
    const a = await cachedPack(join(tmp, 'tree'), 'gzip');
    expect(initrdKind(fs.readFileSync(a.path))).toBe('gzip');
  });
});

describe('a private cache', () => {
  const mode = (p: string) => fs.statSync(p).mode & 0o777;
  it('keeps a 0600 file of the tree in a 0600 archive, in 0700 directories', async () => {
    fs.writeFileSync(join(tmp, 'tree', 'secret'), 'key', { mode: 0o600 });
    const a = await cachedPack(join(tmp, 'tree'));
    expect(mode(a.path)).toBe(0o600);
    expect(mode(join(tmp, 'cache', 'pim', 'kboot'))).toBe(0o700);
    expect(mode(join(tmp, 'cache', 'pim'))).toBe(0o700);
    expect(listCpio(a.path)).toMatch(/-rw-------\s+1 root\s+root\s+3 .* secret/);
    const gz = await cachedPack(join(tmp, 'tree'), 'gzip');
    expect(mode(gz.path)).toBe(0o600);
  });
  it('tightens an archive left 0644 by an older pim when it is hit', async () => {
    const a = await cachedPack(join(tmp, 'tree'));
    fs.chmodSync(a.path, 0o644);
    expect((await cachedPack(join(tmp, 'tree'))).hit).toBe(true);
    expect(mode(a.path)).toBe(0o600);
  });
  it('tightens a cache directory left 0755 by an older pim', () => {
    fs.mkdirSync(join(tmp, 'cache', 'pim', 'kboot'), { recursive: true, mode: 0o755 });
    fs.chmodSync(join(tmp, 'cache', 'pim', 'kboot'), 0o755);
    expect(kbootCacheDir()).toBe(join(tmp, 'cache', 'pim', 'kboot'));
    expect(mode(join(tmp, 'cache', 'pim', 'kboot'))).toBe(0o700);
  });
});

describe('initrd kinds and concatenation', () => {
  it('knows archives and compressions, refuses others', () => {
    expect(initrdKind(Buffer.from('070701xx'))).toBe('cpio');
    expect(initrdKind(Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]))).toBe('gzip');
    expect(initrdKind(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]))).toBe('zstd');
    expect(initrdKind(Buffer.from('hello world'))).toBeNull();
  });
  it('pads each part to 4 bytes', () => {
    fs.writeFileSync(join(tmp, 'a'), 'abcde');
    concatArchives([join(tmp, 'a'), Buffer.from('xyz'), join(tmp, 'a')], join(tmp, 'out'));
    expect(fs.readFileSync(join(tmp, 'out')).toString('latin1')).toBe('abcde\0\0\0xyz\0abcde');
  });
});
