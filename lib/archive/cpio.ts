/**
 * A newc ("070701") cpio writer: the format the kernel unpacks as an
 * initramfs. Entries are directories, regular files and symlinks, all owned
 * by root (uid and gid 0), written in the order given; the archive ends with
 * the TRAILER!!! entry. Every header and every file's data start on a 4-byte
 * boundary, as the kernel wants.
 *
 * For small archives made in memory: kboot's per-boot settings and its base
 * (pim's init and a busybox), and a preseed injected into an installer's
 * initrd (a gzip'd archive appended to the original, like virt-install
 * --initrd-inject). A directory tree on disk is packed by lib/archive/initramfs.ts.
 *
 *   header: "070701" and 13 fields of 8 hex digits: ino, mode, uid, gid,
 *   nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
 *   namesize (with its NUL), check (0); then the name, NUL, padding; then
 *   the data, padding.
 */
import { EXIT, PimError } from '../core/exit.ts';

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number; mtime?: number }
  | { type: 'file'; path: string; data: string | Uint8Array; mode?: number; mtime?: number }
  | { type: 'symlink'; path: string; target: string; mtime?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const MAX_SIZE = 0xffffffff;

const pad4 = (n: number) => (4 - (n % 4)) % 4;
const hex8 = (n: number) => n.toString(16).padStart(8, '0');

/** A path inside the archive: relative, no "." or ".." parts, no NUL, no empty parts. */
export function cpioPathProblem(p: string): string | null {
  if (!p) return 'an empty path';
  if (p.startsWith('/')) return `an absolute path (${p})`;
  if (p.includes('\0')) return 'a path with a NUL byte';
  if (p.split('/').some((part) => part === '' || part === '.' || part === '..'))
    return `a path with an empty, "." or ".." part (${p})`;
  return null;
}

function header(ino: number, mode: number, nlink: number, mtime: number, size: number, name: string): Buffer {
  const nameBytes = Buffer.from(name + '\0');
  const fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, nameBytes.length, 0];
  const head = Buffer.from('070701' + fields.map(hex8).join(''), 'latin1');
  return Buffer.concat([head, nameBytes, Buffer.alloc(pad4(head.length + nameBytes.length))]);
}

/** The archive's bytes. Throws 65 for a path that does not belong in an archive, or a file over 4 GiB. */
export function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 0;
  for (const e of entries) {
    const problem = cpioPathProblem(e.path);
    if (problem) throw new PimError(EXIT.DATAERR, `cannot put ${problem} in a cpio archive`);
    const mtime = Math.max(0, Math.floor(e.mtime ?? 0));
    ino++;
    let data: Buffer;
    let mode: number;
    let nlink = 1;
    if (e.type === 'dir') {
      data = Buffer.alloc(0);
      mode = S_IFDIR | ((e.mode ?? 0o755) & 0o7777);
      nlink = 2;
    } else if (e.type === 'file') {
      data =
        typeof e.data === 'string'
          ? Buffer.from(e.data)
          : Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength);
      mode = S_IFREG | ((e.mode ?? 0o644) & 0o7777);
    } else {
      data = Buffer.from(e.target);
      mode = S_IFLNK | 0o777;
    }
    if (data.length > MAX_SIZE)
      throw new PimError(EXIT.DATAERR, `${e.path} is over 4 GiB, more than a newc cpio entry holds`);
    parts.push(header(ino, mode, nlink, mtime, data.length, e.path), data, Buffer.alloc(pad4(data.length)));
  }
  parts.push(header(0, 0, 1, 0, 0, 'TRAILER!!!'));
  return Buffer.concat(parts);
}

/** The archive, gzip'd (what an installer's initrd.gz can have appended). */
export function cpioNewcGzip(entries: readonly CpioEntry[]): Buffer {
  const { gzipSync } = process.getBuiltinModule('node:zlib') as typeof import('node:zlib');
  return gzipSync(cpioNewc(entries), { level: 9 });
}
