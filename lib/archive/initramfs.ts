/**
 * Packing a directory into a newc cpio archive (an initramfs) without root,
 * with the system's archiver: GNU cpio (`--owner 0:0 --reproducible`) or,
 * where there is none (macOS), bsdtar (`--format newc --uid 0 --gid 0`).
 * Every file is owned by root in the archive; modes are the tree's own. (A
 * tree can hold device nodes, FIFOs and hard links, which the system's
 * archiver knows; small archives made in memory use lib/archive/cpio.ts.)
 *
 * Archives are cached in <cache>/kboot/ under a key made from the tree's
 * listing (relative paths, types, modes, sizes, mtimes, symlink targets) and
 * the packing options, so an unchanged tree is not packed again: a hit costs
 * one walk of the tree (lstat only, no file is read). The cache is private:
 * its directory 0700, its archives 0600 (a tree can hold secrets).
 *
 * The kernel accepts concatenated archives (each 4-byte aligned, each
 * compressed or not): `concatArchives` joins a user's initrd and pim's own.
 */
import * as fs from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { EXIT, PimError } from '../core/exit.ts';
import { createExclusive, ensurePrivateDir } from '../core/fs.ts';
import { cacheDir } from '../core/paths.ts';
import { which } from '../core/which.ts';

export type Compress = 'none' | 'gzip';

/** Bumped when the packing changes, so old cache entries are not reused. */
const PACK_VERSION = 1;

/** The kboot cache (packed trees, pim's base archive, extracted kernels): made private (0700) when missing or loose. */
export const kbootCacheDir = () => ensurePrivateDir(join(cacheDir(), 'kboot'));

/** Is `path` in the cache (a regular file)? One an older pim left readable by others is made 0600 on the way. */
export function cacheHit(path: string): boolean {
  const st = fs.lstatSync(path, { throwIfNoEntry: false });
  if (!st?.isFile()) return false;
  if (st.mode & 0o077) fs.chmodSync(path, 0o600);
  return true;
}

/**
 * The tree's cache key: a hash over every entry's relative path, type, mode,
 * size, mtime (ns) and symlink target, in a stable order. Throws 66 when DIR
 * is missing or not a directory.
 */
export function treeKey(dir: string, opts: { compress: Compress }): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new PimError(EXIT.NOINPUT, `initramfs directory ${dir} does not exist`);
  }
  if (!st.isDirectory())
    throw new PimError(EXIT.NOINPUT, `${dir} is not a directory (--initramfs-from takes a directory to pack)`);
  const h = createHash('sha256');
  h.update(`pim-initramfs ${PACK_VERSION} ${opts.compress}\0`);
  const walk = (rel: string) => {
    const abs = rel ? join(dir, rel) : dir;
    const names = fs.readdirSync(abs).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const s = fs.lstatSync(join(dir, r), { bigint: true });
      h.update(`${r}\0${s.mode}\0${s.size}\0${s.mtimeNs}\0`);
      if (s.isSymbolicLink()) h.update(`${fs.readlinkSync(join(dir, r))}\0`);
      else if (s.isDirectory()) walk(r);
      h.update('\n');
    }
  };
  walk('');
  return h.digest('hex').slice(0, 32);
}

/** Which archiver packs here: GNU cpio first, then bsdtar. */
export function archiver(): { kind: 'cpio' | 'bsdtar'; path: string } {
  const cpio = which('cpio');
  if (cpio) return { kind: 'cpio', path: cpio };
  const bsdtar = which('bsdtar') ?? (process.platform === 'darwin' ? which('tar') : null);
  if (bsdtar) return { kind: 'bsdtar', path: bsdtar };
  throw new PimError(
    EXIT.UNAVAILABLE,
    'packing an initramfs needs cpio or bsdtar; install cpio (apt-get install cpio) or libarchive-tools',
  );
}

/** The relative paths of a tree, parents before children, NUL-separated (what cpio reads). */
function listing(dir: string): Buffer {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const n of fs.readdirSync(rel ? join(dir, rel) : dir).sort()) {
      const r = rel ? `${rel}/${n}` : n;
      out.push(r);
      if (fs.lstatSync(join(dir, r)).isDirectory()) walk(r);
    }
  };
  walk('');
  return Buffer.from(out.map((p) => p + '\0').join(''));
}

/**
 * Pack DIR into OUT (a newc cpio, root-owned entries, 0600), compressed as
 * asked, through a temp file renamed into place.
 *
 * The archiver runs through node:child_process, not lib/core/run.ts: its
 * output is streamed (through gzip) into the file as it comes, since a tree
 * can be far larger than what should be held in memory.
 */
export async function packTree(dir: string, out: string, compress: Compress): Promise<void> {
  const a = archiver();
  const args =
    a.kind === 'cpio'
      ? ['--quiet', '-o', '-0', '-H', 'newc', '--owner', '0:0', '--reproducible']
      : ['-c', '-f', '-', '--format', 'newc', '--uid', '0', '--gid', '0', '--null', '-n', '-T', '-'];
  const tmp = `${out}.${process.pid}.tmp`;
  fs.rmSync(tmp, { force: true });
  const fd = createExclusive(tmp, 0o600);
  try {
    const { spawn } = await import('node:child_process');
    const child = spawn(a.path, args, { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const { pipeline } = await import('node:stream/promises');
    const sink = fs.createWriteStream('', { fd, autoClose: false });
    const chain =
      compress === 'gzip'
        ? pipeline(child.stdout!, (await import('node:zlib')).createGzip({ level: 6 }), sink)
        : pipeline(child.stdout!, sink);
    child.stdin!.end(listing(dir));
    const status = await new Promise<number>((res, rej) => {
      child.once('error', rej);
      child.once('close', (c) => res(c ?? 1));
    });
    await chain;
    if (status !== 0)
      throw new PimError(EXIT.SOFTWARE, `${a.kind} failed packing ${dir}: ${err.trim() || `exit status ${status}`}`);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, out);
}

/** Pack DIR through the cache: returns the archive's path and whether it was a hit. */
export async function cachedPack(
  dir: string,
  compress: Compress = 'none',
): Promise<{ path: string; hit: boolean; key: string }> {
  const key = treeKey(dir, { compress });
  const cdir = kbootCacheDir();
  const path = join(cdir, `initramfs-${key}.cpio${compress === 'gzip' ? '.gz' : ''}`);
  if (cacheHit(path)) return { path, hit: true, key };
  await packTree(dir, path, compress);
  return { path, hit: false, key };
}

/** What the first bytes of an initrd say it is; null when no known archive or compression. */
export function initrdKind(head: Buffer): string | null {
  const s = head.subarray(0, 6).toString('latin1');
  if (s === '070701' || s === '070702') return 'cpio';
  if (head[0] === 0x1f && (head[1] === 0x8b || head[1] === 0x9e)) return 'gzip';
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (head.readUInt32LE(0) === 0x184c2102) return 'lz4';
  if (s.startsWith('BZh')) return 'bzip2';
  if (head[0] === 0x5d && head[1] === 0x00) return 'lzma';
  if (head[0] === 0x89 && s.slice(1, 4) === 'LZO') return 'lzo';
  return null;
}

/** Join archives into OUT, each part padded with zeros to a 4-byte boundary (the kernel wants headers aligned). */
export function concatArchives(parts: Array<string | Buffer>, out: string): void {
  const fd = createExclusive(out, 0o600);
  try {
    let pos = 0;
    for (const p of parts) {
      if (pos % 4) {
        const pad = Buffer.alloc(4 - (pos % 4));
        fs.writeSync(fd, pad);
        pos += pad.length;
      }
      if (Buffer.isBuffer(p)) {
        fs.writeSync(fd, p);
        pos += p.length;
      } else {
        const src = fs.openSync(p, 'r');
        try {
          const buf = Buffer.allocUnsafe(1 << 20);
          let n: number;
          while ((n = fs.readSync(src, buf, 0, buf.length, null)) > 0) {
            fs.writeSync(fd, buf, 0, n);
            pos += n;
          }
        } finally {
          fs.closeSync(src);
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}
